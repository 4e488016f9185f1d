"""report.md: the verdict in a form that fits a CI step summary or a pull-request comment."""

from __future__ import annotations

from collections.abc import Sequence

from harness.gate import GateVerdict
from harness.records import SuiteRun
from harness.reports._common import (
    bounds_text,
    change_text,
    fmt,
    item_sections,
    looks_text,
    overall_line,
    sequential_totals,
)
from harness.reports.kld import kld_markdown_line

_ICON = {"PASS": "✅", "FAIL": "❌", "INCONCLUSIVE": "⚠️"}
TOP_ITEMS = 10


def _cell(text: object, limit: int = 160) -> str:
    """One table cell: single line, pipes and HTML neutralised, shortened."""
    s = " ".join(str(text).split())
    if len(s) > limit:
        s = s[: limit - 1] + "…"
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("|", "\\|")


def render_markdown(
    verdict: GateVerdict,
    baseline_runs: dict[str, SuiteRun],
    candidate_runs: dict[str, SuiteRun],
    *,
    title: str = "moegate gate",
    warnings: Sequence[str] = (),
) -> str:
    """Compact Markdown: the overall line, the run's warnings, the capability table, the top flipped or flagged items."""
    lines = [
        f"## {_ICON[verdict.overall]} {_cell(title)}: **{verdict.overall}**",
        "",
        overall_line(verdict),
        "",
        *[f"> ⚠️ {_cell(w, 400)}" for w in warnings],
        *([""] if warnings else []),
        "| Capability | Status | Baseline | Candidate | Change | Bounds | Budget | Reason |",
        "|---|---|--:|--:|--:|--:|--:|---|",
    ]
    for cap in verdict.capabilities:
        lines.append(
            f"| {_cell(cap.label)} | {_ICON[cap.status]} {cap.status} | {fmt(cap.baseline_value)} | "
            f"{fmt(cap.candidate_value)} | {change_text(cap)} | {bounds_text(cap)} | "
            f"{fmt(cap.budget, cap.kind)} | {_cell(cap.reason, 300)} |"
        )
    totals = sequential_totals(verdict, candidate_runs)
    if totals:
        lines += ["", f"Sequential stopping: {totals['items_saved']} of {totals['items_total']} items saved "
                  f"({len(totals['suites'])} suite(s)). "
                  + "; ".join(f"{_cell(c.label)}: {looks_text(c)}" for c in verdict.capabilities if c.sequential)
                  + f". _{totals['note']}._"]  # fmt: skip
    kld = kld_markdown_line(candidate_runs, baseline_runs)
    if kld:
        lines += ["", kld]
    undecided = [c for c in verdict.capabilities if c.status == "INCONCLUSIVE" and c.items_to_decide]
    if undecided:
        lines += ["", "To decide the inconclusive capabilities: " + "; ".join(
            f"{_cell(c.label)} needs about {c.items_to_decide} items (has {c.n_items})" for c in undecided
        )]  # fmt: skip
    rows = []
    for sec in item_sections(verdict, baseline_runs, candidate_runs, limit=TOP_ITEMS):
        if sec["kind"] != "changed":
            continue
        for it in sec["items"]:
            b, c = it["baseline"] or {}, it["candidate"] or {}
            rows.append(
                f"| {_cell(sec['label'])} | `{_cell(it['item_id'], 60)}` | {_cell(it['note'], 40)} | "
                f"{_cell(b.get('output') or '', 90)} | {_cell(c.get('output') or '', 90)} |"
            )
    if rows:
        lines += [
            "",
            f"<details><summary>Flipped or newly flagged items (up to {TOP_ITEMS} per capability)</summary>",
            "",
            "| Capability | Item | Change | Baseline output | Candidate output |",
            "|---|---|---|---|---|",
            *rows,
            "",
            "</details>",
        ]
    lines += ["", "_Full details: report.html (self-contained) and report.json._", ""]
    return "\n".join(lines)
