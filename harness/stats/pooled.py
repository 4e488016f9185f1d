"""Bootstraps of statistics of per-token values pooled over items (windows or generations), resampling items.

Tokens of one window are not independent (one damaged expert hurts a run of them), so the unit of every
resample is the item: a replicate draws items with replacement and recomputes the statistic over all the
tokens of the items drawn. Means pool through per-item sums and token counts (one matrix product per
chunk of replicates, as ``resampled_means``); quantiles through per-item counts of tokens at or below a grid
of thresholds, so a replicate never builds its pooled array.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from harness.stats.bootstrap import DEFAULT_RESAMPLES, BootstrapDistribution, resampled_means

QUANTILE_GRID = 4096
"""Thresholds a quantile replicate is read on: the pooled values' own quantiles around the level."""
_CHUNK_ELEMENTS = 4_000_000


def pooled_mean(values: Sequence[float] | np.ndarray, tokens: Sequence[float] | np.ndarray, *, rms: bool = False,
                scale: float = 1.0, n_resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> BootstrapDistribution:
    """Token-weighted mean (or RMS) of per-item ``values`` (each item's own mean / RMS over its ``tokens``)."""
    v, n = _checked(values, tokens)
    sums = v * v * n if rms else v * n
    estimate = float(sums.sum() / n.sum())
    samples = resampled_means(sums, sizes=n, n_resamples=n_resamples, seed=seed)[:, 0]
    if rms:
        estimate, samples = float(np.sqrt(estimate)), np.sqrt(samples)
    return BootstrapDistribution(scale * estimate, scale * samples)


def pooled_mean_difference(baseline: Sequence[float] | np.ndarray, candidate: Sequence[float] | np.ndarray,
                           tokens: Sequence[float] | np.ndarray, *, scale: float = 1.0,
                           n_resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> BootstrapDistribution:
    """Paired bootstrap of ``scale · (pooled mean(baseline) − pooled mean(candidate))`` over items scored on the
    same tokens (``tokens`` per item, both sides)."""
    b, n = _checked(baseline, tokens)
    c, _ = _checked(candidate, tokens)
    columns = np.column_stack([b * n, c * n])
    estimate = scale * float((columns[:, 0].sum() - columns[:, 1].sum()) / n.sum())
    means = resampled_means(columns, sizes=n, n_resamples=n_resamples, seed=seed)
    return BootstrapDistribution(estimate, scale * (means[:, 0] - means[:, 1]))


def pooled_quantile(units: Sequence[Sequence[float] | np.ndarray], level: float, *, scale: float = 1.0,
                    n_resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> BootstrapDistribution:
    """Bootstrap over items of the ``level`` quantile of their per-token values pooled.

    The point estimate is the pooled quantile by linear interpolation (numpy's, llama.cpp's); a replicate's
    is the smallest grid threshold with at least ``level`` of the replicate's tokens at or below it, the grid
    being the pooled values between their ``level − 0.25`` and ``level + 0.25`` quantiles (at most
    ``QUANTILE_GRID`` of them) and the smallest value (a replicate beyond reads the grid's nearest end). ``level`` 1 is the maximum.
    """
    if not 0.0 <= level <= 1.0:
        raise ValueError(f"a quantile level is in [0, 1], got {level}")
    arrays = [np.sort(np.asarray(u, np.float64)) for u in units]
    arrays = [a for a in arrays if a.size]
    if not arrays:
        raise ValueError("no per-token values to take a quantile of")
    pooled = np.concatenate(arrays)
    estimate = float(np.quantile(pooled, level))
    ordered = np.unique(pooled)  # thresholds are data values: a replicate's quantile is one of its own values
    lo, hi = np.searchsorted(ordered, np.quantile(pooled, [max(0.0, level - 0.25), min(1.0, level + 0.25)]))
    window = ordered[max(int(lo) - 1, 0): int(hi) + 1]
    picks = np.unique(np.linspace(0, window.size - 1, min(window.size, QUANTILE_GRID)).round().astype(int))
    grid = np.unique(np.concatenate([ordered[:1], window[picks]]))
    below = np.stack([np.searchsorted(a, grid, side="right") for a in arrays]).astype(np.float64)  # [units, grid]
    sizes = np.asarray([a.size for a in arrays], np.float64)
    rng = np.random.default_rng(seed)
    units_n = len(arrays)
    samples = np.empty(n_resamples)
    chunk = max(1, _CHUNK_ELEMENTS // max(units_n, grid.size))
    for start in range(0, n_resamples, chunk):
        rows = min(n_resamples, start + chunk) - start
        idx = rng.integers(0, units_n, size=(rows, units_n))
        flat = (idx + (np.arange(rows) * units_n)[:, None]).ravel()
        counts = np.bincount(flat, minlength=rows * units_n).reshape(rows, units_n).astype(np.float64)
        cumulative = counts @ below  # [rows, grid]: tokens at or below each threshold
        need = level * (counts @ sizes)
        reached = cumulative >= need[:, None] - 1e-9
        first = np.where(reached.any(axis=1), reached.argmax(axis=1), grid.size - 1)
        samples[start:start + rows] = grid[first]
    return BootstrapDistribution(scale * estimate, scale * samples)


def _checked(values: Sequence[float] | np.ndarray, tokens: Sequence[float] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    v, n = np.asarray(values, np.float64), np.asarray(tokens, np.float64)
    if v.shape != n.shape or v.ndim != 1 or v.size == 0:
        raise ValueError(f"per-item values {v.shape} and token counts {n.shape} must be the same non-empty 1-D shape")
    if np.any(n <= 0):
        raise ValueError("every item needs a positive token count")
    return v, n
