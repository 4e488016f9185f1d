"""The gate's expert diagnosis and risk ranking: stored routes + the audit's changed experts -> ``harness.diagnosis``.

Reads what the pure diagnosis needs from a gate run (the baseline store's ``route_mass.npz`` artifacts,
the audit, the candidate's compression file) and says in one line why there is no diagnosis when one
of them is missing. Nothing here fails a gate: a missing diagnosis is a note in the report.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from harness.checkpoint.names import classify
from harness.diagnosis import (
    ROUTES_ARTIFACT,
    CalibrationUsage,
    ChangedExperts,
    Diagnosis,
    Risk,
    RouteMass,
    decode_routes,
    diagnose,
    layout_mismatch,
    rank_risk,
    suite_order,
    unavailable,
)
from harness.errors import UserError
from harness.gate import GatePolicy, GateVerdict
from harness.gate.budgets import Budget
from harness.inspect import changed_experts as audit_changed_experts
from harness.records import SuiteRun

NO_ROUTES = ("the baseline store has no route traces (recorded on a backend that cannot trace routes, e.g. openai, "
             "or by an older moegate): record it again with `moegate baseline record --gate <gate file>` on the "
             "transformers or mlx backend to get the expert diagnosis")  # fmt: skip


def changed_experts(findings: Mapping[str, Any]) -> ChangedExperts:
    """{layer: {baseline expert: kind}} from the audit's JSON (``inspect.json``), for the baseline's routes.

    Built on ``harness.inspect.changed_experts``: the map goes through the expert permutation, so a
    renumbered but identical expert is unchanged. An audit written by an older moegate (no
    ``expert_changes``) is read from its masked rows, zeroed experts and changed tensor names instead;
    there a changed stacked ``[E, ...]`` tensor marks every expert of its layer.
    """
    if "expert_changes" in findings:
        return {layer: {b: change.kind for b, change in experts.items()}
                for layer, experts in audit_changed_experts(findings).items()}  # fmt: skip
    out: dict[int, dict[int, str]] = {}

    def mark(layer: int, expert: int, kind: str) -> None:
        out.setdefault(layer, {}).setdefault(expert, kind)

    for key, kind in (("masked_router_rows", "pruned (masked)"), ("zeroed_experts", "pruned (zeroed)")):
        for layer, experts in (findings.get(key) or {}).items():
            for expert in experts:
                mark(int(layer), int(expert), kind)
    fused: set[int] = set()
    for name in findings.get("changed") or []:
        where = classify(name)
        if where.role == "expert" and where.layer is not None and where.expert is not None:
            mark(where.layer, where.expert, "edited")
        elif where.role == "fused_experts" and where.layer is not None:
            fused.add(where.layer)
    experts_per_layer = int((findings.get("layout") or {}).get("routed_experts") or 0)
    for layer in sorted(fused):
        for expert in range(experts_per_layer):
            mark(layer, expert, "edited")
    return {layer: dict(sorted(experts.items())) for layer, experts in sorted(out.items())}


def stored_routes(baseline_runs: Mapping[str, SuiteRun]) -> dict[str, RouteMass]:
    """Each suite's stored baseline routes (suites recorded without them are left out)."""
    routes = {}
    for name, run in baseline_runs.items():
        if ROUTES_ARTIFACT in run.artifacts:
            try:
                routes[name] = decode_routes(run.artifacts[ROUTES_ARTIFACT])
            except ValueError as exc:
                raise UserError(f"the baseline's route traces of suite {name} cannot be read ({exc})",
                                "record the baseline again (moegate baseline record)") from exc
    return routes


def calibration_usage(candidate: Path) -> CalibrationUsage | None:
    """Per-expert calibration usage from ``pruning.json`` (frequency/soft scores), ``merging.json`` or ``quantization.json``."""
    for name in ("pruning.json", "merging.json", "quantization.json"):
        path = candidate / name
        if not path.is_file():
            continue
        try:
            info = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        criterion = info.get("criterion") or info.get("method") or "frequency"
        if name == "pruning.json" and criterion not in ("frequency", "soft"):
            continue  # scores that are not a routing share (reap, ean, random)
        rows = [row for row in info.get("layers") or [] if isinstance(row, dict)]
        key = next((k for k in ("usage", "frequency", "scores") if rows and all(k in row for row in rows)), None)
        if key is None:
            continue
        calib = Path(str(info.get("calib_file") or "?")).name
        return CalibrationUsage(source=f"{name}: {key} on {calib}", layers=tuple(int(row["layer"]) for row in rows),
                                usage=np.array([row[key] for row in rows], dtype=np.float64))  # fmt: skip
    return None


def audit_findings(candidate: str, baseline: str) -> dict[str, Any] | None:
    """The audit of two local safetensors folders (None when either is not one)."""
    from harness.inspect import audit_extra, audit_for_gate

    report = audit_for_gate(candidate, baseline)
    return None if report is None else audit_extra(report)


def gate_diagnosis(
    baseline_backend: str, baseline_runs: Mapping[str, SuiteRun], findings: Mapping[str, Any] | None,
    verdict: GateVerdict, candidate: Path,
) -> Diagnosis:  # fmt: skip
    """The report's diagnosis section, or a one-line note saying why there is none."""
    if baseline_backend == "openai":
        return unavailable("expert diagnosis skipped: the openai backend gives no route traces through its API")
    routes = stored_routes(baseline_runs)
    if not routes:
        return unavailable(NO_ROUTES)
    if findings is None:
        return unavailable("expert diagnosis skipped: no checkpoint audit (both models must be local safetensors folders)")
    diagnosis = diagnose(routes, changed_experts(findings), verdict, calibration_usage(candidate))
    if diagnosis.available:
        diagnosis.caveats = caveats(candidate)
    return diagnosis


def caveats(candidate: Path) -> list[str]:
    """What the baseline's routes cannot show: a router row masked without a bias can attract tokens."""
    path = candidate / "pruning.json"
    try:
        info = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (OSError, ValueError):
        return []
    inexact = [row.get("layer") for row in info.get("layers") or [] if isinstance(row, dict) and row.get("mask_exact") is False]
    if "mask" not in str(info.get("mode", "")) or not inexact:
        return []
    return [f"pruning.json: router rows masked without a router bias in {len(inexact)} layer(s) (mask_exact false): a row "
            "of -1e9 gives a token with a negative sum of hidden features a huge logit, so the candidate can route tokens "
            "TO the masked experts where the baseline did not; the baseline's routes cannot show that, and a small share "
            "of routing to them with a FAIL points there"]  # fmt: skip


def risk_ranking(
    baseline_runs: Mapping[str, SuiteRun], findings: Mapping[str, Any], capabilities: list[tuple[str, str]]
) -> tuple[list[Risk], str | None]:
    """Capabilities ranked by routing mass to changed experts, and why the ranking is empty (or None)."""
    routes = stored_routes(baseline_runs)
    if not routes:
        return [], NO_ROUTES
    changed = changed_experts(findings)
    if not changed:
        return [], "the audit found no changed routed experts: no capability is at risk from them"
    why = layout_mismatch(routes, changed)
    if why:
        return [], f"layout mismatch: {why}; no ranking"
    return rank_risk(routes, changed, capabilities), None


def confirmed_fail(
    baseline_runs: Mapping[str, SuiteRun], done: dict[str, SuiteRun], budgets: list[Budget], policy: GatePolicy,
    detectors: Any = None,
) -> str | None:  # fmt: skip
    """A FAIL among the finished suites' budgets that the full gate cannot overturn, or None.

    A statistical FAIL counts only when its p-value is within alpha / (all the gate's budgets): Holm
    rejects every such claim whatever the suites still to run measure. Counts and errors count as they are.
    """
    from harness.gate import evaluate_gate
    from harness.gate.flags import detector_flags

    finished = [b for b in budgets if b.suite in done]
    base = {k: v for k, v in baseline_runs.items() if k in done}
    if not finished:
        return None
    verdict = evaluate_gate(base, done, finished, policy, flags=detector_flags(base, done, detectors))
    level = policy.alpha / max(len(budgets), 1)
    for cap in verdict.capabilities:
        if cap.status == "FAIL" and (cap.p_value is None or cap.p_value <= level):
            return f"{cap.label} FAILed ({cap.reason})"
    return None


def riskiest_first(
    settings: Mapping[str, Any], budgets: list[Budget], baseline_runs: Mapping[str, SuiteRun],
    findings: Mapping[str, Any] | None, log: Any = None,
) -> dict[str, Any]:  # fmt: skip
    """The gate's suites reordered by risk (``moegate risk``), so a failing gate fails early; unchanged without routes or audit."""
    if findings is None:
        return dict(settings)
    risks, why = risk_ranking(baseline_runs, findings, [(b.display_label, b.suite) for b in budgets])
    if why or not risks:
        return dict(settings)
    order = suite_order(risks, list(settings))
    if log:
        log("riskiest suites first: " + ", ".join(f"{r.suite} {100 * (r.share or 0):.1f}%" for r in risks
                                                  if r.share is not None))  # fmt: skip
    return {name: settings[name] for name in order}
