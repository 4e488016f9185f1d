"""Sequential early stopping for a non-inferiority budget: look at the items in chunks, stop when decided.

Why not just look after every chunk at the usual 95% level: repeated looks inflate the error (five
naive looks at alpha=0.05 give ~14%). Here each look k spends alpha_k = f(t_k) - f(t_{k-1}) of an
alpha-spending function f (Lan-DeMets O'Brien-Fleming-type by default: almost nothing early, nearly all
of alpha at the end; or Pocock-type: even), on *each* side. By the union bound, the probability of a
wrong PASS (regression truly >= budget) over all looks is <= sum alpha_k = alpha, and likewise for a
wrong FAIL, whatever the correlation between looks: the bound holds exactly as long as each look's test
is valid at its own level. Paired 0/1 items use Tango's score test (``harness.stats.mcnemar``), valid
with few discordant pairs; continuous per-item differences use a z-test with a variance floor.

Items must be looked at in an order fixed before the run (e.g. a seeded shuffle), never chosen by
their outcomes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from scipy import stats

from harness.stats.interval import Status
from harness.stats.mcnemar import tango_bounds, tango_p_beyond, tango_p_within

Spending = Literal["obf", "pocock"]


def spent_alpha(t: float, alpha: float, kind: Spending = "obf") -> float:
    """Cumulative one-sided alpha spent at information fraction ``t`` in [0, 1] (Lan-DeMets functions)."""
    t = min(max(t, 0.0), 1.0)
    if t == 0:
        return 0.0
    if kind == "obf":
        z = float(stats.norm.isf(alpha / 2))
        return float(2 * stats.norm.sf(z / math.sqrt(t)))
    if kind == "pocock":
        return alpha * math.log(1 + (math.e - 1) * t)
    raise ValueError(f"unknown spending function {kind!r} (obf, pocock)")


@dataclass(frozen=True)
class Look:
    n: int
    """Items seen at this look."""
    estimate: float
    """Mean regression so far (positive: the candidate is worse)."""
    alpha: float
    """One-sided alpha spent at this look, on each side."""
    p_within: float
    """p-value of "regression < budget"."""
    p_beyond: float
    """p-value of "regression > budget"."""


@dataclass(frozen=True)
class SequentialResult:
    decision: Status
    items_used: int
    items_total: int
    looks: tuple[Look, ...] = field(default=())

    @property
    def items_saved(self) -> int:
        return self.items_total - self.items_used

    @property
    def fraction_used(self) -> float:
        return self.items_used / self.items_total if self.items_total else 1.0


def _mean_and_se(diffs: Sequence[float]) -> tuple[float, float]:
    n = len(diffs)
    mean = sum(diffs) / n
    var = sum((d - mean) ** 2 for d in diffs) / max(1, n - 1)
    # floor: one pseudo-pair at +-1 scale of the data, so an all-equal start cannot claim certainty
    scale = max((abs(d) for d in diffs), default=0.0) or 1.0
    return mean, math.sqrt(max(var, scale * scale / n) / n)


def _discordant(diffs: Sequence[float]) -> tuple[int, int]:
    """Paired 0/1 items: (right->wrong, wrong->right) counts."""
    return sum(1 for d in diffs if d > 0), sum(1 for d in diffs if d < 0)


def _p_values(diffs: Sequence[float], margin: float, binary: bool) -> tuple[float, float, float]:
    n = len(diffs)
    if binary:
        b, c = _discordant(diffs)
        return (b - c) / n, tango_p_within(b, c, n, margin), tango_p_beyond(b, c, n, margin)
    mean, se = _mean_and_se(diffs)
    z = (mean - margin) / se
    return mean, float(stats.norm.cdf(z)), float(stats.norm.sf(z))


def look_bounds(diffs: Sequence[float], alpha: float, binary: bool) -> tuple[float, float]:
    """One-sided (1 - alpha) lower and upper bounds of the mean regression, by the same test a look uses.

    At a look that spent ``alpha``, PASS means the upper bound is within the margin, FAIL that the
    lower bound is beyond it (up to the root finding of Tango's bounds).
    """
    if binary:
        b, c = _discordant(diffs)
        return tango_bounds(b, c, len(diffs), alpha)
    mean, se = _mean_and_se(diffs)
    z = float(stats.norm.isf(alpha))
    return mean - z * se, mean + z * se


def look_points(total: int, looks: int, min_items: int = 20) -> list[int]:
    """Items seen at each planned look: equally spaced up to ``total``, none before ``min_items``."""
    return sorted({max(min(total, min_items), math.ceil(total * k / looks)) for k in range(1, looks + 1)})


def sequential_noninferiority(
    diffs: Sequence[float],
    margin: float,
    *,
    alpha: float = 0.05,
    looks: int = 5,
    spending: Spending = "obf",
    binary: bool | None = None,
    min_items: int = 20,
    items_total: int | None = None,
) -> SequentialResult:
    """Decide "regression < margin" (PASS) or "> margin" (FAIL) with up to ``looks`` equally spaced looks.

    Args:
        diffs: per-item regression in the pre-fixed order (baseline minus candidate for a
            higher-is-better score; for 0/1 items each is -1, 0 or 1).
        margin: the budget, in the same units (0.05 = 5 points of accuracy).
        alpha: bound on each error (wrong PASS, wrong FAIL) over all looks together.
        looks: number of planned looks (the last one at all items).
        spending: ``obf`` (O'Brien-Fleming-type) or ``pocock``-type alpha spending.
        binary: paired 0/1 outcomes (Tango); default: every diff is -1, 0 or 1.
        min_items: no look before this many items (asymptotic tests need some).
        items_total: the planned item count when ``diffs`` holds only the first items seen (a run
            stopped early): looks are planned on ``items_total``, and only those within ``diffs`` are
            made; undecided by then is INCONCLUSIVE with ``items_used = len(diffs)``.
    """
    total = len(diffs) if items_total is None else items_total
    if total == 0:
        return SequentialResult("INCONCLUSIVE", 0, 0)
    if len(diffs) > total:
        raise ValueError(f"{len(diffs)} diffs for {total} planned items")
    if not 0 < alpha < 0.5 or looks < 1:
        raise ValueError(f"need 0 < alpha < 0.5 and looks >= 1, got alpha={alpha}, looks={looks}")
    if binary is None:
        binary = all(d in (-1, 0, 1) for d in diffs)
    spent, done = 0.0, list[Look]()
    for n in look_points(total, looks, min_items):
        if n > len(diffs):
            return SequentialResult("INCONCLUSIVE", len(diffs), total, tuple(done))
        cumulative = spent_alpha(n / total, alpha, spending)
        step, spent = cumulative - spent, cumulative
        estimate, p_within, p_beyond = _p_values(diffs[:n], margin, binary)
        done.append(Look(n, estimate, step, p_within, p_beyond))
        if p_within <= step:
            return SequentialResult("PASS", n, total, tuple(done))
        if p_beyond <= step:
            return SequentialResult("FAIL", n, total, tuple(done))
    return SequentialResult("INCONCLUSIVE", total, total, tuple(done))
