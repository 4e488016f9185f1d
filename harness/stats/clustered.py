"""Cluster-robust standard error of a mean paired difference.

Items that share a cluster (MMLU-Pro subjects, one source document) are not independent; treating
them as if they were makes intervals too narrow. The CR1-style estimator sums residuals within each
cluster first; with one item per cluster it is exactly the ordinary standard error ``s / sqrt(n)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import stats


def clustered_se(diffs: Sequence[float] | np.ndarray, groups: Sequence[object]) -> tuple[float, int]:
    """Cluster-robust SE of ``mean(diffs)`` and the number of clusters.

    ``Var = G/(G-1) * sum_g (sum_{i in g} (d_i - mean))^2 / n^2``.
    """
    d = np.asarray(diffs, dtype=float)
    if d.ndim != 1 or len(d) != len(groups):
        raise ValueError(f"diffs has shape {d.shape} but there are {len(groups)} group labels")
    n = len(d)
    if n < 2:
        return float("inf"), n
    _, inverse = np.unique(np.asarray([str(g) for g in groups]), return_inverse=True)
    g = int(inverse.max()) + 1
    if g < 2:
        return float("inf"), g
    resid = d - d.mean()
    sums = np.bincount(inverse, weights=resid, minlength=g)
    var = g / (g - 1) * float(np.sum(sums**2)) / n**2
    return float(np.sqrt(var)), g


def ordinary_se(diffs: Sequence[float] | np.ndarray) -> float:
    """Plain standard error ``s / sqrt(n)`` (sample variance with n - 1)."""
    d = np.asarray(diffs, dtype=float)
    if len(d) < 2:
        return float("inf")
    return float(np.std(d, ddof=1) / np.sqrt(len(d)))


class TInterval:
    """Mean with a standard error and Student-t reference (df = clusters - 1)."""

    def __init__(self, estimate: float, se: float, df: int) -> None:
        self.estimate, self.se, self.df = float(estimate), float(se), max(int(df), 1)

    def bounds(self, alpha: float) -> tuple[float, float]:
        """One-sided (1 - alpha) lower and upper bounds."""
        if not np.isfinite(self.se):
            return -np.inf, np.inf
        q = float(stats.t.isf(alpha, self.df))
        return self.estimate - q * self.se, self.estimate + q * self.se

    def p_within(self, margin: float) -> float:
        """p-value of "true mean < margin"."""
        if not np.isfinite(self.se):
            return 1.0
        if self.se == 0:
            return 0.0 if self.estimate <= margin else 1.0
        return float(stats.t.cdf((self.estimate - margin) / self.se, self.df))

    def p_beyond(self, margin: float) -> float:
        """p-value of "true mean > margin"."""
        if not np.isfinite(self.se):
            return 1.0
        if self.se == 0:
            return 0.0 if self.estimate > margin else 1.0
        return float(stats.t.sf((self.estimate - margin) / self.se, self.df))
