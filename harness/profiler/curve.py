"""Dead experts versus number of calibration prompts.

An expert "dead" on 5 prompts is often alive on 100: measured on Qwen3.5-35B-A3B, 30% of experts
look dead at 5 prompts and 0.6% at 100. This curve shows how much a calibration set of a given size
overstates redundancy. For each shuffle the prompts are taken in a random order and the curve is
evaluated on growing prefixes (nested subsets), so every shuffle's curve -- and their mean -- is
monotone non-increasing in the number of prompts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from harness.profiler.profile import ExpertProfile

__all__ = ["DEFAULT_SIZES", "DeadCurve", "curve_sizes", "dead_curve_from_presence", "dead_expert_curve"]

DEFAULT_SIZES: tuple[int, ...] = (5, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000)


@dataclass(frozen=True)
class DeadCurve:
    """Mean (and std) fraction of dead experts, over all MoE layers, at each number of prompts.

    Attributes:
        sizes: numbers of prompts evaluated, increasing.
        dead_fraction: mean over shuffles of (dead experts / all experts) at each size.
        dead_fraction_std: standard deviation over shuffles.
        dead_count: mean number of dead (layer, expert) pairs at each size.
        per_layer: mean dead fraction per layer, shape [len(sizes), n_layers].
    """

    sizes: tuple[int, ...]
    dead_fraction: tuple[float, ...]
    dead_fraction_std: tuple[float, ...]
    dead_count: tuple[float, ...]
    per_layer: np.ndarray
    shuffles: int
    seed: int
    n_experts_total: int

    def to_json(self) -> dict[str, Any]:
        return {
            "sizes": list(self.sizes),
            "dead_fraction": list(self.dead_fraction),
            "dead_fraction_std": list(self.dead_fraction_std),
            "dead_count": list(self.dead_count),
            "per_layer_dead_fraction": self.per_layer.round(6).tolist(),
            "shuffles": self.shuffles,
            "seed": self.seed,
            "n_experts_total": self.n_experts_total,
        }


def curve_sizes(n_prompts: int, sizes: Sequence[int] = DEFAULT_SIZES) -> tuple[int, ...]:
    """The requested sizes that fit in ``n_prompts``, plus ``n_prompts`` itself as the last point."""
    if n_prompts < 1:
        raise ValueError("need at least one prompt")
    if any(s < 1 for s in sizes):
        raise ValueError("curve sizes must be >= 1")
    kept = sorted({int(s) for s in sizes if s <= n_prompts} | {n_prompts})
    return tuple(kept)


def dead_curve_from_presence(
    presence: np.ndarray, sizes: Sequence[int] = DEFAULT_SIZES, *, shuffles: int = 10, seed: int = 0
) -> DeadCurve:
    """The dead-expert curve from a per-prompt presence array ``[n_prompts, n_layers, n_experts]``.

    ``presence[p, l, e]`` is true when prompt ``p`` routed at least one token to expert ``e`` of layer ``l``.
    """
    pres = np.asarray(presence, dtype=bool)
    if pres.ndim != 3:
        raise ValueError(f"presence must be [n_prompts, n_layers, n_experts], got shape {pres.shape}")
    if shuffles < 1:
        raise ValueError("shuffles must be >= 1")
    n_prompts, n_layers, n_experts = pres.shape
    points = curve_sizes(n_prompts, sizes)
    idx = np.asarray(points) - 1
    rng = np.random.default_rng(seed)
    per_shuffle = np.empty((shuffles, len(points), n_layers), dtype=np.float64)
    for s in range(shuffles):
        order = rng.permutation(n_prompts)
        seen = np.logical_or.accumulate(pres[order], axis=0)[idx]  # [n_points, L, E]
        per_shuffle[s] = 1.0 - seen.mean(axis=-1)
    overall = per_shuffle.mean(axis=-1)  # [shuffles, n_points]
    return DeadCurve(
        sizes=points,
        dead_fraction=tuple(float(v) for v in overall.mean(axis=0)),
        dead_fraction_std=tuple(float(v) for v in overall.std(axis=0)),
        dead_count=tuple(float(v) * n_layers * n_experts for v in overall.mean(axis=0)),
        per_layer=per_shuffle.mean(axis=0),
        shuffles=shuffles,
        seed=seed,
        n_experts_total=n_layers * n_experts,
    )


def dead_expert_curve(
    profile: ExpertProfile, sizes: Sequence[int] = DEFAULT_SIZES, shuffles: int = 10, seed: int = 0
) -> DeadCurve:
    """The dead-expert curve of a profile (uses its per-prompt counts)."""
    return dead_curve_from_presence(profile.presence(), sizes, shuffles=shuffles, seed=seed)
