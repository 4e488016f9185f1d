"""Layer x expert heatmaps and the dead-expert curve as images (matplotlib, no pyplot global state).

Figures are drawn on ``matplotlib.figure.Figure`` with the Agg canvas, so nothing needs a display and
nothing leaks between calls; files are written atomically.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from harness.atomic import atomic_write_bytes
from harness.errors import UserError
from harness.profiler.curve import DeadCurve

__all__ = ["IMAGE_SUFFIXES", "curve_plot", "heatmap", "heatmap_svg"]

IMAGE_SUFFIXES = (".png", ".svg")


def _image_format(out_path: Path) -> str:
    suffix = out_path.suffix.lower()
    if suffix not in IMAGE_SUFFIXES:
        raise UserError(f"cannot write a plot to {out_path}: unsupported suffix", "use a .png or .svg file name")
    return suffix[1:]


def _heatmap_figure(
    matrix: np.ndarray,
    marked: set[tuple[int, int]] | None,
    title: str,
    layer_labels: Sequence[int | str] | None,
    colorbar_label: str,
) -> Figure:
    data = np.asarray(matrix, dtype=np.float64)
    if data.ndim != 2 or data.size == 0:
        raise ValueError(f"heatmap needs a non-empty 2-D [layers, experts] matrix, got shape {data.shape}")
    n_layers, n_experts = data.shape
    if layer_labels is not None and len(layer_labels) != n_layers:
        raise ValueError(f"{len(layer_labels)} layer labels for {n_layers} rows")
    width = min(4.0 + 0.18 * n_experts, 24.0)
    height = min(2.0 + 0.28 * n_layers, 18.0)
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    image = ax.imshow(data, aspect="auto", interpolation="nearest", cmap="viridis")
    fig.colorbar(image, ax=ax, label=colorbar_label)
    ax.set_xlabel("expert")
    ax.set_ylabel("MoE layer")
    if title:
        ax.set_title(title)
    xstep = max(1, n_experts // 32)
    ax.set_xticks(range(0, n_experts, xstep))
    step = max(1, n_layers // 16)
    ax.set_yticks(range(0, n_layers, step))
    labels = layer_labels if layer_labels is not None else range(n_layers)
    ax.set_yticklabels([str(labels[i]) for i in range(0, n_layers, step)])
    for row, col in sorted(marked or ()):
        if not (0 <= row < n_layers and 0 <= col < n_experts):
            raise ValueError(f"marked cell ({row}, {col}) is outside the {n_layers}x{n_experts} matrix")
        ax.add_patch(Rectangle((col - 0.5, row - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=1.5))
    return fig


def _render(fig: Figure, fmt: str) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format=fmt, dpi=120, metadata={"Date": None} if fmt == "svg" else None)
    return buf.getvalue()


def heatmap(
    matrix: np.ndarray,
    out_path: Path,
    *,
    marked: set[tuple[int, int]] | None = None,
    title: str = "",
    layer_labels: Sequence[int | str] | None = None,
    colorbar_label: str = "",
) -> Path:
    """Write a layer x expert heatmap (.png or .svg, by suffix); ``marked`` cells get a red outline.

    ``marked`` holds (row, expert) positions in ``matrix`` (row = MoE layer position, not necessarily the
    model's layer index; pass ``layer_labels`` to label rows with real layer indices).
    """
    out_path = Path(out_path)
    fmt = _image_format(out_path)
    fig = _heatmap_figure(matrix, marked, title, layer_labels, colorbar_label)
    atomic_write_bytes(out_path, _render(fig, fmt))
    return out_path


def heatmap_svg(
    matrix: np.ndarray,
    *,
    marked: set[tuple[int, int]] | None = None,
    title: str = "",
    layer_labels: Sequence[int | str] | None = None,
    colorbar_label: str = "",
) -> str:
    """The same heatmap as an SVG string (no XML prolog) to embed in an HTML report."""
    svg = _render(_heatmap_figure(matrix, marked, title, layer_labels, colorbar_label), "svg").decode("utf-8")
    start = svg.find("<svg")
    return svg[start:] if start >= 0 else svg


def curve_plot(curve: DeadCurve, out_path: Path, *, title: str = "") -> Path:
    """Write the dead-experts-vs-prompts curve (mean +- std over shuffles) as .png or .svg."""
    out_path = Path(out_path)
    fmt = _image_format(out_path)
    fig = Figure(figsize=(6.0, 4.0), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    x = np.asarray(curve.sizes)
    y = 100 * np.asarray(curve.dead_fraction)
    err = 100 * np.asarray(curve.dead_fraction_std)
    ax.plot(x, y, marker="o")
    ax.fill_between(x, np.maximum(y - err, 0), y + err, alpha=0.25)
    ax.set_xscale("log")
    ax.set_xticks(x, [str(v) for v in x])
    ax.minorticks_off()
    ax.set_ylim(0, max(1.0, float((y + err).max()) * 1.1))
    ax.set_xlabel("calibration prompts")
    ax.set_ylabel("experts that look dead (%)")
    ax.set_title(title or f"Dead experts vs prompts (mean of {curve.shuffles} shuffles)")
    ax.grid(True, which="both", alpha=0.3)
    atomic_write_bytes(out_path, _render(fig, fmt))
    return out_path
