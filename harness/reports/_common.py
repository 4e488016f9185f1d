"""What the three report writers share: number formatting, suite summaries, the items to show."""

from __future__ import annotations

import math
from typing import Any

from harness.gate import CapabilityResult, GateVerdict, item_flags
from harness.records import ItemRecord, SuiteRun, display_output, metric_value

MAX_ITEMS_PER_CAPABILITY = 200
"""Items shown per capability in the HTML and JSON item lists (all ids stay in the verdict)."""


def fmt(x: float | None, kind: str = "") -> str:
    """Short human number: 4 decimals for ratios, 2 otherwise, 3 significant digits at the extremes."""
    if x is None or not math.isfinite(x):
        return "–"
    if kind == "ratio":
        return f"{x:.4f}"
    if x == 0:
        return "0"
    return f"{x:.3g}" if abs(x) < 0.01 or abs(x) >= 10000 else f"{x:.2f}".rstrip("0").rstrip(".")


def bounds_text(cap: CapabilityResult) -> str:
    if cap.ci_low is None or cap.ci_high is None or cap.kind == "new_flags_count":
        return "–"
    return f"{fmt(cap.ci_low, cap.kind)} – {fmt(cap.ci_high, cap.kind)}"


def change_text(cap: CapabilityResult) -> str:
    """The change, and beside it the baseline's own churn where the baseline was calibrated."""
    churn = f" (baseline's own: {cap.baseline_churn})" if cap.baseline_churn else ""
    if cap.change is None:
        return "–" + churn
    if cap.kind == "ratio":
        return f"×{cap.change:.4f}{churn}"
    if cap.kind in ("drop", "new_flags", "rate_increase"):
        return (f"{cap.change:+.2f}".rstrip("0").rstrip(".") if cap.change else "0") + churn
    return fmt(cap.change, cap.kind) + churn


def change_header(cap: CapabilityResult) -> str:
    return {
        "drop": "drop",
        "ratio": "ratio",
        "new_flags": "net new-flag rate (points)",
        "rate_increase": "rate increase (points)",
        "new_flags_count": "new flagged items",
        "max_mean": "mean",
    }[cap.kind]


def overall_line(verdict: GateVerdict) -> str:
    counts = {s: sum(c.status == s for c in verdict.capabilities) for s in ("PASS", "FAIL", "INCONCLUSIVE")}
    n = len(verdict.capabilities)
    parts = [f"{counts['FAIL']} failed"] if counts["FAIL"] else []
    if counts["INCONCLUSIVE"]:
        parts.append(f"{counts['INCONCLUSIVE']} inconclusive")
    parts.append(f"{counts['PASS']} passed")
    pol = verdict.policy
    return (
        f"{n} capabilities: "
        + ", ".join(parts)
        + f" (confidence {pol.confidence:.0%}, correction {pol.correction}, "
        f"inconclusive counts as {pol.inconclusive})"
    )


def suite_summary(run: SuiteRun) -> dict[str, Any]:
    """Aggregates of one run: item count, metric values in display units, flag counts, error."""
    metrics: dict[str, Any] = {}
    for spec in run.metrics:
        value = metric_value(run.records, spec)
        metrics[spec.name] = {**spec.model_dump(), "value": value}
    flags: dict[str, int] = {}
    for r in run.records:
        for f in item_flags(r):
            flags[f] = flags.get(f, 0) + 1
    return {
        "suite": run.suite,
        "n_items": len(run.records),
        "error": run.error,
        "seconds": run.seconds,
        "settings": run.settings,
        "data_sha256": run.data_sha256,
        "metrics": metrics,
        "flag_counts": dict(sorted(flags.items())),
    }


def _side(rec: ItemRecord | None) -> dict[str, Any] | None:
    if rec is None:
        return None
    return {
        "output": display_output(rec),
        "scores": rec.scores,
        "flags": sorted(item_flags(rec)),
    }


def item_sections(
    verdict: GateVerdict,
    baseline_runs: dict[str, SuiteRun],
    candidate_runs: dict[str, SuiteRun],
    *,
    limit: int = MAX_ITEMS_PER_CAPABILITY,
) -> list[dict[str, Any]]:
    """Per capability: every flipped or newly flagged item (else its worst items), both sides' text."""
    sections = []
    for cap in verdict.capabilities:
        ids = cap.changed_items or [w.item_id for w in cap.worst_items]
        if not ids:
            continue
        notes = {w.item_id: w.note for w in cap.worst_items}
        default_note = "right → wrong" if cap.flips and cap.kind == "drop" else "newly flagged"
        tables = [
            {r.item_id: r for r in run.records} if (run := runs.get(cap.suite)) else {}
            for runs in (baseline_runs, candidate_runs)
        ]
        items = []
        for item_id in ids[:limit]:
            b, c = tables[0].get(item_id), tables[1].get(item_id)
            some = c or b
            reference = (b.reference if b and b.reference else None) or (c.reference if c else None)
            items.append(
                {
                    "item_id": item_id,
                    "note": notes.get(item_id, default_note if cap.changed_items else ""),
                    "prompt": some.prompt if some else "",
                    "reference": reference,
                    "baseline": _side(b),
                    "candidate": _side(c),
                }
            )
        sections.append(
            {
                "label": cap.label,
                "suite": cap.suite,
                "status": cap.status,
                "kind": "changed" if cap.changed_items else "worst",
                "total": len(ids),
                "items": items,
            }
        )
    return sections


def sequential_totals(verdict: GateVerdict, candidate_runs: dict[str, SuiteRun]) -> dict[str, Any] | None:
    """Items used and saved by sequential stopping, per suite and in total (None: no suite ran in chunks)."""
    suites = {
        name: {"items_used": info.items_used, "items_total": info.items_total,
               "items_saved": info.items_total - info.items_used, "looks": info.looks, "spending": info.spending}
        for name, run in sorted(candidate_runs.items()) if (info := run.sequential) is not None
    }  # fmt: skip
    if not suites:
        return None
    alphas = sorted({c.sequential.alpha for c in verdict.capabilities if c.sequential is not None})
    saved = sum(s["items_saved"] for s in suites.values())
    total = sum(s["items_total"] for s in suites.values())
    level = ", ".join(f"{a:.3g}" for a in alphas) or "n/a"
    note = (
        f"each sequential capability is tested at one-sided alpha {level} over all its looks (the gate's "
        "alpha / m: Bonferroni); the other capabilities by Holm on the rest of alpha"
    )
    return {"items_saved": saved, "items_total": total, "suites": suites, "note": note}


def looks_text(cap: CapabilityResult) -> str:
    """``items 80/200 (saved 120); looks at 40, 80 of 5`` for a sequentially decided capability, else ''."""
    seq = cap.sequential
    if seq is None:
        return ""
    looks = ", ".join(str(look.n) for look in seq.looks) or "none"
    return (
        f"items used {seq.items_used}/{seq.items_total} (saved {seq.items_saved}); "
        f"looks at {looks} of {seq.looks_planned} planned ({seq.spending} spending)"
    )
