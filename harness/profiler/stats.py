"""Pure statistics over expert count arrays (no torch, no model): imbalance, entropy, dead experts.

All functions take a 1-D array of non-negative per-expert counts (or masses) for one layer.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["dead_experts", "entropy_ratio", "gini", "layer_stats", "top_n_share", "top_share_of_experts"]


def _as_counts(counts: np.ndarray) -> np.ndarray:
    arr = np.asarray(counts, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"expected a 1-D per-expert array, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError("expected at least one expert")
    if np.any(arr < 0) or not np.all(np.isfinite(arr)):
        raise ValueError("per-expert counts must be finite and non-negative")
    return arr


def gini(counts: np.ndarray) -> float:
    """Gini coefficient of expert usage: 0 when every expert is used equally, (E-1)/E when one takes all.

    Zero total usage counts as perfectly even (0.0): nothing is concentrated.
    """
    arr = np.sort(_as_counts(counts))
    total = arr.sum()
    n = arr.size
    if total <= 0 or n == 1:
        return 0.0
    ranks = np.arange(1, n + 1, dtype=np.float64)
    value = float((2.0 * np.dot(ranks, arr)) / (n * total) - (n + 1.0) / n)
    return min(max(value, 0.0), 1.0)


def entropy_ratio(counts: np.ndarray) -> float:
    """Shannon entropy of the usage distribution divided by log E: 1 for uniform usage, 0 for one expert.

    A single expert is trivially uniform (1.0); zero total usage has no distribution (0.0).
    """
    arr = _as_counts(counts)
    n = arr.size
    total = arr.sum()
    if total <= 0:
        return 0.0
    if n == 1:
        return 1.0
    p = arr[arr > 0] / total
    value = float(-(p * np.log(p)).sum() / math.log(n))
    return min(max(value, 0.0), 1.0)


def top_n_share(counts: np.ndarray, n: int = 10) -> float:
    """Share of all usage taken by the ``n`` most used experts (1.0 when there are at most ``n``)."""
    arr = _as_counts(counts)
    if n < 1:
        raise ValueError("n must be >= 1")
    total = arr.sum()
    if total <= 0:
        return 0.0
    return float(np.sort(arr)[::-1][:n].sum() / total)


def top_share_of_experts(counts: np.ndarray, fraction: float = 0.1) -> float:
    """Share of usage taken by the top ``fraction`` of experts (at least one expert)."""
    arr = _as_counts(counts)
    if not 0 < fraction <= 1:
        raise ValueError("fraction must be in (0, 1]")
    return top_n_share(arr, max(1, math.ceil(fraction * arr.size)))


def dead_experts(counts: np.ndarray) -> list[int]:
    """Ids of experts never selected."""
    arr = _as_counts(counts)
    return [int(i) for i in np.flatnonzero(arr == 0)]


def layer_stats(counts: np.ndarray) -> dict[str, float | int | list[int]]:
    """The per-layer summary the reports print: gini, entropy ratio, top-10 shares, dead experts."""
    arr = _as_counts(counts)
    dead = dead_experts(arr)
    return {
        "selections": int(arr.sum()),
        "gini": gini(arr),
        "entropy_ratio": entropy_ratio(arr),
        "top10_share": top_n_share(arr, 10),
        "top10pct_share": top_share_of_experts(arr, 0.1),
        "dead": len(dead),
        "dead_fraction": len(dead) / arr.size,
        "dead_experts": dead,
    }
