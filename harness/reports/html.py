"""report.html: one self-contained page a person reads to understand a verdict.

Inline CSS and inline SVG only: no scripts, no fonts, no links to anything outside the file, so it
can be attached to a CI run, mailed, or opened offline. Every piece of model text is escaped.
"""

from __future__ import annotations

import json
from html import escape
from typing import Any

from harness.gate import CapabilityResult, GateVerdict
from harness.records import SuiteRun
from harness.reports._common import (
    bounds_text,
    change_header,
    change_text,
    fmt,
    item_sections,
    looks_text,
    overall_line,
    sequential_totals,
    suite_summary,
)
from harness.reports.audit import audit_html
from harness.reports.diagnosis import diagnosis_html
from harness.reports.html_template import page
from harness.reports.kld import kld_html
from harness.reports.plots import forest_svg, heatmap_svg
from harness.reports.schema import ModelRun, Report

_EXTRA_JSON_LIMIT = 40_000
_OPEN_AT_MOST = 12
"""A failing capability's item list starts open when it is this short."""


def _e(x: object) -> str:
    return escape("" if x is None else str(x), quote=True)


def _side(run: ModelRun | None) -> str | None:
    if run is None:
        return None
    store = f", records in {run.store}" if run.store else ""
    engine = run.engine or {}
    computed = f"{engine.get('engine')} {engine.get('version') or ''}".rstrip() if engine else run.backend
    return f"{run.model} ({computed}, fingerprint {run.fingerprint[:16]}{store})"


def _header(report: Report, title: str) -> str:
    verdict = report.verdict
    rows = {"gate": report.run.gate, "baseline": _side(report.run.baseline), "candidate": _side(report.run.candidate),
            "created utc": report.created_utc, "moegate version": report.moegate_version}  # fmt: skip
    meta = [f"<dt>{_e(key)}</dt><dd>{_e(value)}</dd>" for key, value in rows.items() if value is not None]
    warned = "".join(f"<li>{_e(w)}</li>" for w in report.run.warnings)
    return (
        f'<header class="top"><div class="badge {verdict.overall}">{verdict.overall}</div>'
        f'<div><h1>{_e(title)}</h1><div class="muted">{_e(overall_line(verdict))}</div>'
        f'<dl class="meta">{"".join(meta)}</dl>{f"<ul class=warnings>{warned}</ul>" if warned else ""}</div></header>'
    )


def _cap_row(cap: CapabilityResult) -> str:
    flips = ""
    if cap.flips:
        flips = f'<div class="small muted">{cap.flips.right_to_wrong} right→wrong · {cap.flips.wrong_to_right} wrong→right</div>'
        if cap.kind != "drop":
            flips = f'<div class="small muted">{cap.flips.right_to_wrong} newly flagged · {cap.flips.wrong_to_right} cleared</div>'
    decide = ""
    if cap.status == "INCONCLUSIVE" and cap.items_to_decide:
        decide = f'<div class="small">≈{cap.items_to_decide} items would decide it (has {cap.n_items})</div>'
    if cap.sequential is not None:
        decide += f'<div class="small muted">{_e(looks_text(cap))}</div>'
    level = f"{100 * (1 - cap.adjusted_alpha):.3g}%" if cap.adjusted_alpha is not None else "exact"
    p = f"{cap.p_value:.2g}" if cap.p_value is not None else "–"
    return (
        f'<tr class="{cap.status}"><td><b>{_e(cap.label)}</b><div class="small muted">{_e(cap.suite)} · '
        f"{_e(cap.metric)} · {_e(cap.kind)}</div></td>"
        f'<td><span class="chip {cap.status}">{cap.status}</span></td>'
        f'<td class="num">{fmt(cap.baseline_value)}</td><td class="num">{fmt(cap.candidate_value)}</td>'
        f'<td class="num">{_e(change_text(cap))}<div class="small muted">{_e(change_header(cap))}</div></td>'
        f'<td class="num">{_e(bounds_text(cap))}<div class="small muted">{level}</div></td>'
        f'<td class="num">{fmt(cap.budget, cap.kind)}</td>'
        f'<td class="num">{cap.n_items}<div class="small muted">p {p}</div></td>'
        f'<td class="reason">{_e(cap.reason)}{flips}{decide}</td></tr>'
    )


def _table(verdict: GateVerdict) -> str:
    head = "".join(
        f"<th>{h}</th>"
        for h in (
            "Capability",
            "Status",
            "Baseline",
            "Candidate",
            "Change",
            "Bounds",
            "Budget",
            "Items",
            "Reason",
        )
    )
    rows = "".join(_cap_row(c) for c in verdict.capabilities)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"


def _text_block(title: str, text: str | None, cls: str) -> str:
    body = _e(text) if text else '<span class="muted">(no text)</span>'
    return f'<div class="side {cls}"><div class="h">{_e(title)}</div><pre>{body}</pre></div>'


def _side_meta(side: dict[str, Any] | None) -> str:
    if side is None:
        return '<span class="muted">missing</span>'
    tags = "".join(f'<span class="tag">{_e(f)}</span>' for f in side["flags"])
    scores = ", ".join(f"{_e(k)}={fmt(v)}" for k, v in side["scores"].items())
    return f'{tags}<span class="small muted">{scores}</span>'


def _items(sections: list[dict[str, Any]]) -> str:
    if not sections:
        return '<p class="muted">No item flipped or was newly flagged.</p>'
    out = []
    for sec in sections:
        what = "flipped or newly flagged" if sec["kind"] == "changed" else "largest regressions"
        more = sec["total"] - len(sec["items"])
        blocks = []
        for it in sec["items"]:
            b, c = it["baseline"], it["candidate"]
            ref = (
                f'<div class="small"><b>Reference:</b> {_e(it["reference"])}</div>' if it["reference"] else ""
            )
            prompt = (
                f'<details><summary class="small">Prompt</summary><div class="body"><pre>{_e(it["prompt"])}</pre>'
                "</div></details>"
                if it["prompt"]
                else ""
            )
            head = (
                f'<div class="item"><span class="id">{_e(it["item_id"])}</span> '
                f'<span class="small muted">{_e(it["note"])}</span>{prompt}{ref}'
            )
            if (b or {}).get("output") is None and (c or {}).get("output") is None:
                blocks.append(  # scored text, no generation: the numbers are the story
                    f'{head}<div class="pair"><div><span class="small">Baseline </span>{_side_meta(b)}</div>'
                    f'<div><span class="small">Candidate </span>{_side_meta(c)}</div></div></div>'
                )
                continue
            blocks.append(
                f'{head}<div class="pair">{_text_block("Baseline", (b or {}).get("output"), "base")}'
                f"{_text_block('Candidate', (c or {}).get('output'), 'cand')}</div>"
                f'<div class="pair"><div>{_side_meta(b)}</div><div>{_side_meta(c)}</div></div></div>'
            )
        tail = f'<p class="small muted">… and {more} more (all ids in report.json).</p>' if more > 0 else ""
        opened = (
            " open"
            if sec["status"] == "FAIL" and sec["kind"] == "changed" and sec["total"] <= _OPEN_AT_MOST
            else ""
        )
        out.append(
            f'<details{opened}><summary><span class="chip {sec["status"]}">{sec["status"]}</span> {_e(sec["label"])} — '
            f'{sec["total"]} {what}</summary><div class="body">{"".join(blocks)}{tail}</div></details>'
        )
    return "".join(out)


def _suites(baseline_runs: dict[str, SuiteRun], candidate_runs: dict[str, SuiteRun]) -> str:
    rows = []
    for name in sorted(set(baseline_runs) | set(candidate_runs)):
        cells = []
        for runs in (baseline_runs, candidate_runs):
            run = runs.get(name)
            if run is None:
                cells.append('<td class="muted">not run</td>')
                continue
            s = suite_summary(run)
            vals = ", ".join(f"{_e(k)} {fmt(v['value'])}" for k, v in s["metrics"].items())
            err = f'<div class="tag">error: {_e(s["error"])}</div>' if s["error"] else ""
            cells.append(
                f'<td>{s["n_items"]} items · {s["seconds"]:.1f} s<div class="small">{vals}</div>{err}</td>'
            )
        rows.append(f"<tr><td><b>{_e(name)}</b></td>{''.join(cells)}</tr>")
    return (
        "<table><thead><tr><th>Suite</th><th>Baseline</th><th>Candidate</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


def _sequential_note(verdict: GateVerdict, candidate_runs: dict[str, SuiteRun]) -> list[str]:
    totals = sequential_totals(verdict, candidate_runs)
    if not totals:
        return []
    per_suite = "; ".join(
        f"{_e(name)} {s['items_used']}/{s['items_total']} (saved {s['items_saved']})" for name, s in totals["suites"].items()
    )
    return [f'<p class="small"><b>Items saved by sequential stopping: {totals["items_saved"]} of {totals["items_total"]}</b> '
            f"({per_suite}). {_e(totals['note'])}.</p>"]  # fmt: skip


def render_html(
    report: Report,
    baseline_runs: dict[str, SuiteRun],
    candidate_runs: dict[str, SuiteRun],
    *,
    title: str = "moegate gate report",
) -> str:
    """The whole page as a string."""
    verdict = report.verdict
    parts = [
        _header(report, title),
        "<h2>Capabilities</h2>",
        '<p class="small muted">Change is the regression each budget bounds (bigger is worse). Bounds are '
        "one-sided confidence bounds at the level shown (after the multiple-testing correction): PASS when "
        "the upper bound is within the budget, FAIL when the lower bound is beyond it.</p>",
        _table(verdict),
        *_sequential_note(verdict, candidate_runs),
        "<h2>Change against budget</h2>",
        '<p class="small muted">Each row is scaled so that no change and its budget line up; the bar is the '
        "interval, the dot the estimate, the red tick the budget.</p>",
        f'<div class="figure">{forest_svg(verdict.capabilities)}</div>',
    ]
    hm = report.expert_heatmap
    if hm is not None:
        parts += [
            "<h2>Experts</h2>",
            f'<div class="figure">{heatmap_svg(to_matrix(hm.matrix), marked=hm.marked, title=hm.title, layer_labels=hm.layer_labels, colorbar_label=hm.colorbar_label)}</div>',
        ]  # fmt: skip
    parts += kld_html(candidate_runs, baseline_runs)
    parts += audit_html(report.inspect)
    parts += diagnosis_html(report.diagnosis)
    parts += [
        "<h2>Items</h2>",
        '<p class="small muted">Baseline and candidate side by side for every flipped or newly flagged item.</p>',
        _items(item_sections(verdict, baseline_runs, candidate_runs)),
        "<h2>Suites</h2>",
        _suites(baseline_runs, candidate_runs),
    ]
    details = report.model_dump(mode="json", include={"run", "inspect"}, exclude_none=True)
    if details:
        text = json.dumps(details, indent=2, sort_keys=True)
        if len(text) > _EXTRA_JSON_LIMIT:
            text = text[:_EXTRA_JSON_LIMIT] + "\n… (truncated; see report.json)"
        parts.append(
            f'<details><summary>Run details</summary><div class="body"><pre>{_e(text)}</pre></div></details>'
        )
    parts.append(
        f"<footer>Verdict schema v{verdict.schema_version}. Generated by moegate; this file has no external assets.</footer>"
    )
    return page(f"{verdict.overall} — {title}", "\n".join(parts))


def to_matrix(matrix: Any) -> list[list[float]]:
    """Accept nested lists or a numpy array."""
    if hasattr(matrix, "tolist"):
        matrix = matrix.tolist()
    return [[float("nan") if v is None else float(v) for v in row] for row in matrix]
