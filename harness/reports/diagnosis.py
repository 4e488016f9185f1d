"""The expert diagnosis in the reports: one line per capability (Markdown), a suite × layer heatmap (HTML)."""

from __future__ import annotations

import math
from html import escape

from harness.diagnosis import Diagnosis
from harness.reports.plots import _color

TOP_COVERAGE = 8


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def diagnosis_markdown(diagnosis: Diagnosis | None) -> list[str]:
    """Markdown lines for report.md (empty when there is no diagnosis section)."""
    if diagnosis is None:
        return []
    lines = ["", "### Expert diagnosis", ""]
    if not diagnosis.available:
        return [*lines, f"_{diagnosis.note}_"]
    n = sum(len(v) for v in diagnosis.changed.values())
    lines.append(f"{n} {diagnosis.words} in {len(diagnosis.changed)} layer(s); shares of the baseline's routing mass.")
    lines.append("")
    lines += [f"- {c.line}" for c in diagnosis.capabilities]
    lines += [f"- _Caveat: {c}_" for c in diagnosis.caveats]
    carriers = [row for row in diagnosis.coverage if row.carries][:TOP_COVERAGE]
    if carriers:
        lines += ["", f"Calibration coverage: {diagnosis.coverage_note}.", ""]
        lines += [f"- layer {r.layer} expert {r.expert} ({r.kind}): {_pct(r.calibration)} of its layer on calibration, "
                  + ", ".join(f"{s} {_pct(r.suites[s])}" for s in r.carries) for r in carriers]  # fmt: skip
    elif diagnosis.coverage_note:
        lines += ["", f"Calibration coverage: {diagnosis.coverage_note}."]
    return lines


def routing_heatmap_svg(diagnosis: Diagnosis, *, width: int = 1040) -> str:
    """Suites (rows) × MoE layers (columns): share of each layer's routing mass that went to changed experts."""
    rows, cols = diagnosis.suites, diagnosis.layers
    if not rows or not cols:
        return '<p class="muted">No routing data.</p>'
    values = [[float("nan") if v is None else float(v) for v in row] for row in diagnosis.heatmap]
    finite = [v for row in values for v in row if math.isfinite(v)]
    vmax = max(finite, default=1.0) or 1.0
    left, top, right = 130, 46, 110
    cell_w = max(6.0, min(48.0, (width - left - right) / len(cols)))
    cell_h = 22.0
    svg_w, height = left + cell_w * len(cols) + right, top + cell_h * len(rows) + 30
    title = f"share of the baseline's routing mass sent to {diagnosis.words}, per suite and layer"
    out = [f'<svg viewBox="0 0 {svg_w:.0f} {height:.0f}" width="100%" style="max-width:{svg_w:.0f}px" role="img" '
           f'aria-label="{escape(title)}" class="heatmap">', f'<text x="{left}" y="18" class="title">{escape(title)}</text>']  # fmt: skip
    step = max(1, math.ceil(len(cols) / 32))
    for j in range(0, len(cols), step):
        out.append(f'<text x="{left + (j + 0.5) * cell_w:.1f}" y="{top - 6}" text-anchor="middle" class="tick">{cols[j]}</text>')
    for i, suite in enumerate(rows):
        y = top + i * cell_h
        out.append(f'<text x="{left - 6}" y="{y + cell_h / 2 + 4:.1f}" text-anchor="end" class="tick">{escape(suite)}</text>')
        for j, v in enumerate(values[i]):
            fill = _color(v / vmax) if math.isfinite(v) else "#d0d7de"
            tip = f"{suite}, layer {cols[j]}: {100 * v:.1f}%" if math.isfinite(v) else f"{suite}, layer {cols[j]}: no routes"
            out.append(f'<rect x="{left + j * cell_w:.1f}" y="{y:.1f}" width="{cell_w:.1f}" height="{cell_h:.1f}" '
                       f'fill="{fill}"><title>{escape(tip)}</title></rect>')  # fmt: skip
    bx = left + cell_w * len(cols) + 20
    out.append(f'<text x="{bx}" y="{top + 10}" class="tick">max {100 * vmax:.1f}%</text>')
    out.append(f'<text x="{bx}" y="{top + cell_h * len(rows):.1f}" class="tick">0%</text>')
    out.append(f'<text x="{left - 6}" y="{top - 6}" text-anchor="end" class="tick">suite\\layer</text>')
    out.append("</svg>")
    return "\n".join(out)


def diagnosis_html(diagnosis: Diagnosis | None) -> list[str]:
    """HTML parts for report.html: the per-capability lines, the heatmap, the calibration carriers."""
    if diagnosis is None:
        return []
    parts = ["<h2>Expert diagnosis</h2>"]
    if not diagnosis.available:
        return [*parts, f'<p class="muted">{escape(diagnosis.note)}</p>']
    parts.append("<ul>" + "".join(f"<li>{escape(c.line)}</li>" for c in diagnosis.capabilities) + "</ul>")
    parts += [f'<p class="small">Caveat: {escape(c)}</p>' for c in diagnosis.caveats]
    parts.append(f'<div class="figure">{routing_heatmap_svg(diagnosis)}</div>')
    carriers = [row for row in diagnosis.coverage if row.carries][:TOP_COVERAGE]
    if diagnosis.coverage_note:
        parts.append(f'<p class="small muted">Calibration coverage: {escape(diagnosis.coverage_note)}.</p>')
    if carriers:
        head = "<tr><th>Layer</th><th>Expert</th><th>Change</th><th>Calibration</th>" + "".join(
            f"<th>{escape(s)}</th>" for s in diagnosis.suites) + "</tr>"  # fmt: skip
        body = "".join(
            f"<tr><td>{r.layer}</td><td>{r.expert}</td><td>{escape(r.kind)}</td><td>{_pct(r.calibration)}</td>"
            + "".join(f"<td>{'<b>' if s in r.carries else ''}{_pct(r.suites.get(s))}{'</b>' if s in r.carries else ''}</td>"
                      for s in diagnosis.suites) + "</tr>" for r in carriers)  # fmt: skip
        parts.append(f"<table>{head}{body}</table>")
    return parts
