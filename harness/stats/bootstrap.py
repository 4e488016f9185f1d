"""Paired bootstrap: one resample of item (or cluster) indices applied to both models at once.

Resampling the *pairs* keeps the correlation between baseline and candidate on the same item,
which is what makes a paired comparison far tighter than two independent ones. Intervals are
percentile intervals (simple, transformation-respecting for the perplexity ratio); p-values against
a margin are the smoothed share of resamples on the wrong side, ``(k + 1) / (B + 1)``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

Values = Sequence[float] | np.ndarray
"""Per-item (or per-window) numbers: a list or a 1-D array."""

DEFAULT_RESAMPLES = 10_000
_CHUNK_ELEMENTS = 2_000_000


def resampled_means(
    values: np.ndarray,
    *,
    sizes: np.ndarray | None = None,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> np.ndarray:
    """Column means of ``values`` [units, k] under ``n_resamples`` resamples of the units.

    With ``sizes`` (items per unit, ``values`` then holding per-unit *sums*) this is a cluster
    bootstrap: each resample's mean is ``sum(values) / sum(sizes)`` over the drawn clusters.
    Returns [n_resamples, k]. Seeded, vectorized in chunks to bound memory.
    """
    v = np.asarray(values, dtype=float)
    if v.ndim == 1:
        v = v[:, None]
    units, k = v.shape
    if units == 0:
        raise ValueError("cannot bootstrap zero items")
    w = np.ones(units) if sizes is None else np.asarray(sizes, dtype=float)
    if w.shape != (units,):
        raise ValueError(f"sizes has shape {w.shape}, expected ({units},)")
    rng = np.random.default_rng(seed)
    out = np.empty((n_resamples, k))
    chunk = max(1, _CHUNK_ELEMENTS // max(units, 1))
    for start in range(0, n_resamples, chunk):
        stop = min(n_resamples, start + chunk)
        idx = rng.integers(0, units, size=(stop - start, units))
        # Counts per unit per resample, then one matmul: fast and exact.
        rows = stop - start
        flat = (idx + (np.arange(rows) * units)[:, None]).ravel()
        counts = np.bincount(flat, minlength=rows * units).reshape(rows, units).astype(float)
        out[start:stop] = (counts @ v) / (counts @ w)[:, None]
    return out


class BootstrapDistribution:
    """A point estimate and its bootstrap replicates, with bounds and margin p-values."""

    def __init__(self, estimate: float, samples: np.ndarray) -> None:
        self.estimate = float(estimate)
        self.samples = np.asarray(samples, dtype=float)

    def bounds(self, alpha: float) -> tuple[float, float]:
        """One-sided (1 - alpha) percentile lower and upper bounds."""
        lo, hi = np.quantile(self.samples, [alpha, 1 - alpha])
        return float(lo), float(hi)

    def p_within(self, margin: float) -> float:
        """p-value of "true value <= margin" being claimed: share of replicates above the margin."""
        k = int(np.sum(self.samples > margin))
        return (k + 1) / (len(self.samples) + 1)

    def p_beyond(self, margin: float) -> float:
        """p-value of "true value > margin" being claimed: share of replicates at or below it."""
        k = int(np.sum(self.samples <= margin))
        return (k + 1) / (len(self.samples) + 1)


def _units(columns: np.ndarray, groups: Sequence[object] | None) -> tuple[np.ndarray, np.ndarray | None]:
    """Collapse item rows into per-cluster sums when groups are given."""
    if groups is None:
        return columns, None
    _, inverse = np.unique(np.asarray([str(g) for g in groups]), return_inverse=True)
    g = int(inverse.max()) + 1
    sums = np.zeros((g, columns.shape[1]))
    np.add.at(sums, inverse, columns)
    return sums, np.bincount(inverse, minlength=g).astype(float)


def paired_statistic(
    columns: np.ndarray,
    statistic: Callable[[np.ndarray], np.ndarray],
    *,
    groups: Sequence[object] | None = None,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> BootstrapDistribution:
    """Bootstrap any statistic that is a function of the column means.

    ``columns`` is [items, k] (both models' per-item values side by side, so one resample of rows
    moves both); ``statistic`` maps means [..., k] to a value per row (vectorized).
    """
    cols = np.asarray(columns, dtype=float)
    if cols.ndim == 1:
        cols = cols[:, None]
    estimate = float(statistic(cols.mean(axis=0)[None, :])[0])
    units, sizes = _units(cols, groups)
    means = resampled_means(units, sizes=sizes, n_resamples=n_resamples, seed=seed)
    return BootstrapDistribution(estimate, statistic(means))


def mean_difference(
    baseline: Values,
    candidate: Values,
    *,
    scale: float = 1.0,
    groups: Sequence[object] | None = None,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> BootstrapDistribution:
    """Paired bootstrap of ``scale * (mean(baseline) - mean(candidate))`` (positive = candidate lower)."""
    cols = np.column_stack([np.asarray(baseline, float), np.asarray(candidate, float)])
    return paired_statistic(
        cols, lambda m: scale * (m[:, 0] - m[:, 1]), groups=groups, n_resamples=n_resamples, seed=seed
    )


def ratio_of_means(
    numerator: Values,
    denominator: Values,
    *,
    groups: Sequence[object] | None = None,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> BootstrapDistribution:
    """Paired bootstrap of ``mean(numerator) / mean(denominator)`` (a ratio budget on a mean metric)."""
    cols = np.column_stack([np.asarray(numerator, float), np.asarray(denominator, float)])
    return paired_statistic(cols, lambda m: m[:, 0] / m[:, 1], groups=groups, n_resamples=n_resamples, seed=seed)


def _windows(*columns: Values) -> np.ndarray:
    cols = np.column_stack([np.asarray(x, float) for x in columns])
    if np.any(cols[:, [1, 3]] <= 0):
        raise ValueError("every window needs a positive token count")
    return cols


def perplexity_ratio(
    nll_base: Values,
    tok_base: Values,
    nll_cand: Values,
    tok_cand: Values,
    *,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> BootstrapDistribution:
    """Paired bootstrap over windows of ``exp(sum nll_c / sum tok_c - sum nll_b / sum tok_b)``."""
    cols = _windows(nll_base, tok_base, nll_cand, tok_cand)
    return paired_statistic(
        cols, lambda m: np.exp(m[:, 2] / m[:, 3] - m[:, 0] / m[:, 1]), n_resamples=n_resamples, seed=seed
    )


def perplexity_difference(
    nll_base: Values,
    tok_base: Values,
    nll_cand: Values,
    tok_cand: Values,
    *,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> BootstrapDistribution:
    """Paired bootstrap over windows of the perplexity difference, candidate minus baseline."""
    cols = _windows(nll_base, tok_base, nll_cand, tok_cand)
    return paired_statistic(
        cols, lambda m: np.exp(m[:, 2] / m[:, 3]) - np.exp(m[:, 0] / m[:, 1]), n_resamples=n_resamples, seed=seed
    )


def mean_of(
    values: Values,
    *,
    groups: Sequence[object] | None = None,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> BootstrapDistribution:
    """Bootstrap of one model's mean score (e.g. per-item KL to the baseline)."""
    return paired_statistic(
        np.asarray(values, float)[:, None],
        lambda m: m[:, 0],
        groups=groups,
        n_resamples=n_resamples,
        seed=seed,
    )
