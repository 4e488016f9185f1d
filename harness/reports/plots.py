"""Inline SVG drawings for the HTML report: a forest plot of changes against budgets, and the
per-layer expert heatmap. Hand-written SVG keeps the report one self-contained file with no
external assets, no scripts and no font files; the browser does the text layout.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape

from harness.gate import CapabilityResult

STATUS_COLORS = {"PASS": "#1a7f37", "FAIL": "#cf222e", "INCONCLUSIVE": "#bf8700"}
_VIRIDIS = [(68, 1, 84), (59, 82, 139), (33, 145, 140), (94, 201, 98), (253, 231, 37)]


def _reference(cap: CapabilityResult) -> float:
    """The 'no change' point on the budget's scale."""
    return 1.0 if cap.kind == "ratio" else 0.0


def _fmt(x: float | None, kind: str = "") -> str:
    if x is None or not math.isfinite(x):
        return "–"
    if kind == "ratio":
        return f"{x:.4f}"
    return f"{x:.3g}" if abs(x) < 0.01 or abs(x) >= 1000 else f"{x:.2f}".rstrip("0").rstrip(".")


def _squash(u: float) -> float:
    """Linear within one budget of 'no change', logarithmic beyond: far-off values stay on the plot."""
    return u if abs(u) <= 1 else math.copysign(1 + math.log(abs(u)), u)


def forest_svg(capabilities: Sequence[CapabilityResult], *, width: int = 1040) -> str:
    """One row per capability: its change and bounds against its budget.

    Capabilities have different units, so each row is normalised by its budget (u = change / budget
    on the 'no change'-to-budget scale): 'no change' and the budget line up across rows. Beyond one
    budget the axis is logarithmic, so a 30x regression is still drawn rather than clipped.
    """
    row_h, top, label_w, right_w = 34, 40, 250, 190
    plot_l, plot_r = label_w + 10, width - right_w
    u_min, u_max = -2.0, 1 + math.log(40.0)
    s_min, s_max = _squash(u_min), u_max

    def x_of(u: float) -> float:
        f = min(max(_squash(u), s_min), s_max)
        return plot_l + (f - s_min) / (s_max - s_min) * (plot_r - plot_l)

    zero_x, budget_x = x_of(0.0), x_of(1.0)
    height = top + row_h * max(len(capabilities), 1) + 24
    out = [
        f'<svg viewBox="0 0 {width} {height}" width="100%" '
        f'role="img" aria-label="forest plot of each capability\'s change against its budget" class="forest">',
    ]
    out += [
        f'<rect x="0" y="{top + row_h * k:.1f}" width="{width}" height="{row_h}" class="band"/>'
        for k in range(0, len(capabilities), 2)
    ]
    out += [
        f'<text x="{plot_l:.1f}" y="16" text-anchor="start" class="axis">← better</text>',
        f'<text x="{zero_x:.1f}" y="16" text-anchor="middle" class="axis">no change</text>',
        f'<text x="{budget_x:.1f}" y="16" text-anchor="middle" class="axis">budget</text>',
        f'<line x1="{zero_x:.1f}" y1="24" x2="{zero_x:.1f}" y2="{height - 20}" class="zero"/>',
        f'<line x1="{budget_x:.1f}" y1="24" x2="{budget_x:.1f}" y2="{height - 20}" class="budget"/>',
    ]
    for mult in (3, 10, 30):
        gx = x_of(float(mult))
        out.append(f'<text x="{gx:.1f}" y="16" text-anchor="middle" class="axis">{mult}× budget</text>')
        out.append(f'<line x1="{gx:.1f}" y1="24" x2="{gx:.1f}" y2="{height - 20}" class="grid"/>')
    for k, cap in enumerate(capabilities):
        y = top + row_h * k + row_h / 2
        color = STATUS_COLORS.get(cap.status, "#57606a")
        out.append(
            f'<text x="{label_w}" y="{y + 4:.1f}" text-anchor="end" class="label">{escape(cap.label)}</text>'
        )
        ref = _reference(cap)
        span = cap.budget - ref
        if span <= 0:  # a zero budget (e.g. no new flagged items): one unit of the metric per step
            values = [
                abs(v - ref)
                for v in (cap.change, cap.ci_low, cap.ci_high)
                if v is not None and math.isfinite(v)
            ]
            span = 1.0 if cap.kind == "new_flags_count" else max([*values, 1e-9])

        def u_of(v: float, ref: float = ref, span: float = span) -> float:
            return (v - ref) / span

        bx = x_of(u_of(cap.budget))
        out.append(
            f'<line x1="{bx:.1f}" y1="{y - 11:.1f}" x2="{bx:.1f}" y2="{y + 11:.1f}" class="budget-tick"/>'
        )
        lo = cap.ci_low if cap.ci_low is not None else cap.change
        hi = cap.ci_high if cap.ci_high is not None else cap.change
        if lo is not None and hi is not None and math.isfinite(lo) and math.isfinite(hi):
            x1, x2 = x_of(u_of(lo)), x_of(u_of(hi))
            out.append(
                f'<line x1="{x1:.1f}" y1="{y:.1f}" x2="{x2:.1f}" y2="{y:.1f}" stroke="{color}" class="ci"/>'
            )
            for v, x in ((lo, x1), (hi, x2)):
                u = u_of(v)
                if u < u_min or _squash(u) > s_max:  # off the scale: an arrow head
                    d = -1 if u < u_min else 1
                    out.append(
                        f'<path d="M{x + 6 * d:.1f},{y:.1f} l{-8 * d},-6 l0,12 z" fill="{color}"><title>'
                        f"bound {_fmt(v, cap.kind)} is off the scale</title></path>"
                    )
                else:
                    out.append(f'<line x1="{x:.1f}" y1="{y - 6:.1f}" x2="{x:.1f}" y2="{y + 6:.1f}" '
                               f'stroke="{color}" class="cap"/>')  # fmt: skip
        if cap.change is not None and math.isfinite(cap.change):
            cx = x_of(u_of(cap.change))
            out.append(
                f'<circle cx="{cx:.1f}" cy="{y:.1f}" r="5.5" fill="{color}" stroke="#fff" stroke-width="1.5">'
                f"<title>{escape(cap.reason)}</title></circle>"
            )
        elif cap.status == "FAIL":
            out.append(f'<text x="{zero_x + 8:.1f}" y="{y + 4:.1f}" class="axis">not compared</text>')
        summary = f"{_fmt(cap.change, cap.kind)}  (budget {_fmt(cap.budget, cap.kind)})"
        out.append(
            f'<text x="{plot_r + 14}" y="{y + 4:.1f}" class="value" fill="{color}">{escape(summary)}</text>'
        )
    out.append("</svg>")
    return "\n".join(out)


def _color(t: float) -> str:
    t = min(1.0, max(0.0, t)) * (len(_VIRIDIS) - 1)
    i = min(int(t), len(_VIRIDIS) - 2)
    f = t - i
    r, g, b = (round(a + (c - a) * f) for a, c in zip(_VIRIDIS[i], _VIRIDIS[i + 1], strict=True))
    return f"#{r:02x}{g:02x}{b:02x}"


def heatmap_svg(
    matrix: Sequence[Sequence[float]],
    *,
    marked: Sequence[Sequence[int]] | None = None,
    title: str = "",
    layer_labels: Sequence[object] | None = None,
    colorbar_label: str = "",
    width: int = 1040,
) -> str:
    """Layers (rows) x experts (columns), viridis colours, marked (pruned/masked) cells outlined in red."""
    rows = [[float(v) for v in row] for row in matrix]
    n_rows = len(rows)
    n_cols = max((len(r) for r in rows), default=0)
    if n_rows == 0 or n_cols == 0:
        return '<p class="muted">No expert heatmap data.</p>'
    finite = [v for r in rows for v in r if math.isfinite(v)]
    vmin, vmax = (min(finite), max(finite)) if finite else (0.0, 1.0)
    rng = (vmax - vmin) or 1.0
    left, top, right = 70, 46 if title else 26, 120
    cell_w = max(3.0, min(64.0, (width - left - right) / n_cols))
    cell_h = max(12.0, min(22.0, cell_w * 0.75))
    grid_w, grid_h = cell_w * n_cols, cell_h * n_rows
    height = top + grid_h + 40
    svg_w = left + grid_w + right
    labels = list(layer_labels) if layer_labels is not None else list(range(n_rows))
    out = [
        f'<svg viewBox="0 0 {svg_w:.0f} {height:.0f}" '
        f'width="100%" style="max-width:{svg_w:.0f}px" role="img" aria-label="{escape(title or "expert heatmap")}" class="heatmap">'
    ]
    if title:
        out.append(f'<text x="{left}" y="18" class="title">{escape(title)}</text>')
    step = max(1, math.ceil(n_cols / 32))
    for j in range(0, n_cols, step):
        x = left + (j + 0.5) * cell_w
        out.append(f'<text x="{x:.1f}" y="{top - 6}" text-anchor="middle" class="tick">{j}</text>')
    rstep = max(1, math.ceil(n_rows / 40))
    for i, row in enumerate(rows):
        y = top + i * cell_h
        if i % rstep == 0:
            lab = escape(str(labels[i] if i < len(labels) else i))
            out.append(
                f'<text x="{left - 6}" y="{y + cell_h / 2 + 4:.1f}" text-anchor="end" class="tick">{lab}</text>'
            )
        for j, v in enumerate(row):
            fill = _color((v - vmin) / rng) if math.isfinite(v) else "#d0d7de"
            out.append(
                f'<rect x="{left + j * cell_w:.1f}" y="{y:.1f}" width="{cell_w:.1f}" height="{cell_h:.1f}" '
                f'fill="{fill}"><title>layer {escape(str(labels[i] if i < len(labels) else i))}, '
                f"expert {j}: {v:.4g}</title></rect>"
            )
    for cell in marked or []:
        i, j = int(cell[0]), int(cell[1])
        if 0 <= i < n_rows and 0 <= j < n_cols:
            out.append(
                f'<rect x="{left + j * cell_w + 1:.1f}" y="{top + i * cell_h + 1:.1f}" width="{cell_w - 2:.1f}" '
                f'height="{cell_h - 2:.1f}" class="marked"/>'
            )
    out.append(f'<text x="{left - 6}" y="{top - 6}" text-anchor="end" class="tick">layer\\expert</text>')
    # Colour bar.
    bx, by, bh = left + grid_w + 24, top, max(grid_h, 60)
    for k in range(20):
        out.append(f'<rect x="{bx}" y="{by + bh * (19 - k) / 20:.1f}" width="14" height="{bh / 20 + 0.5:.1f}" '
                   f'fill="{_color(k / 19)}"/>')  # fmt: skip
    out.append(f'<text x="{bx + 20}" y="{by + 10}" class="tick">{vmax:.3g}</text>')
    out.append(f'<text x="{bx + 20}" y="{by + bh:.1f}" class="tick">{vmin:.3g}</text>')
    if colorbar_label:
        out.append(f'<text x="{bx}" y="{by + bh + 16:.1f}" class="tick">{escape(colorbar_label)}</text>')
    legend_y = top + grid_h + 26
    out.append(f'<rect x="{left}" y="{legend_y - 10}" width="12" height="12" class="marked"/>')
    out.append(f'<text x="{left + 18}" y="{legend_y}" class="tick">pruned or masked in the candidate '
               f"({len(marked or [])} cells)</text>")  # fmt: skip
    out.append("</svg>")
    return "\n".join(out)
