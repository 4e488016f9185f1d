"""Paired 0/1 outcomes: exact one-sided McNemar and Tango's score interval for the difference.

Notation used across moegate: ``b`` = items right on the baseline and wrong on the candidate
(right->wrong flips), ``c`` = wrong->right flips, ``n`` = all paired items. The *regression* is
``(b - c) / n``: the baseline's accuracy minus the candidate's, positive when the candidate is worse.

Why Tango (1998) and not Wald or Newcombe: the score interval keeps its coverage when the
discordant cells are small or zero (Wald collapses to width 0, Newcombe's hybrid is liberal when
``b = c = 0``), and it inverts into a one-sided test against any margin, which is what a
non-inferiority budget needs.
"""

from __future__ import annotations

import math

from scipy import optimize, stats


def mcnemar_exact_p(b: int, c: int) -> float:
    """One-sided exact McNemar p-value for "the candidate is worse" (H0: P(right->wrong) <= P(wrong->right)).

    Conditional on the ``b + c`` discordant pairs, ``b`` is Binomial(b + c, 1/2) under H0.
    """
    if b < 0 or c < 0:
        raise ValueError(f"flip counts must be >= 0, got b={b}, c={c}")
    n = b + c
    if n == 0:
        return 1.0
    return float(stats.binomtest(b, n, 0.5, alternative="greater").pvalue)


def _constrained_p21(b: int, c: int, n: int, delta: float) -> float:
    """MLE of P(wrong->right) under the constraint P(right->wrong) - P(wrong->right) = delta."""
    m = n - b - c
    big_b = b * (1 - delta) + c * (1 - 3 * delta) - 2 * m * delta
    big_c = c * delta * (1 - delta)
    disc = max(big_b * big_b + 8 * n * big_c, 0.0)
    x = (big_b + math.sqrt(disc)) / (4 * n)
    return min(max(x, max(0.0, -delta)), (1 - delta) / 2)


def tango_statistic(b: int, c: int, n: int, delta: float) -> float:
    """Tango's score statistic for H0: regression == delta (decreasing in delta)."""
    if n <= 0:
        raise ValueError("need at least one paired item")
    p21 = _constrained_p21(b, c, n, delta)
    var = n * (2 * p21 + delta * (1 - delta))
    num = b - c - n * delta
    if var <= 0:
        return 0.0 if num == 0 else math.copysign(math.inf, num)
    return num / math.sqrt(var)


def tango_p_within(b: int, c: int, n: int, margin: float) -> float:
    """p-value of "regression < margin" (H0: regression >= margin); small means confidently within."""
    if margin >= 1:
        return 0.0
    if margin <= -1:
        return 1.0
    return float(stats.norm.cdf(tango_statistic(b, c, n, margin)))


def tango_p_beyond(b: int, c: int, n: int, margin: float) -> float:
    """p-value of "regression > margin" (H0: regression <= margin); small means confidently beyond."""
    if margin >= 1:
        return 1.0
    if margin <= -1:
        return 0.0
    return float(stats.norm.sf(tango_statistic(b, c, n, margin)))


def tango_bounds(b: int, c: int, n: int, alpha: float) -> tuple[float, float]:
    """One-sided (1 - alpha) lower and upper bounds of the regression ``(b - c) / n``.

    Each end is a one-sided bound at level 1 - alpha; together they form a 1 - 2*alpha interval.
    """
    if not 0 < alpha < 0.5:
        raise ValueError(f"alpha must be in (0, 0.5), got {alpha}")
    z = float(stats.norm.isf(alpha))
    eps = 1e-12
    lo_end, hi_end = -1 + eps, 1 - eps

    def solve(target: float, default: float) -> float:
        def f(d: float) -> float:
            return tango_statistic(b, c, n, d) - target

        f_lo, f_hi = f(lo_end), f(hi_end)
        if f_lo < 0:
            return lo_end if default < 0 else default
        if f_hi > 0:
            return hi_end if default > 0 else default
        return float(optimize.brentq(f, lo_end, hi_end, xtol=1e-12))

    upper = solve(-z, 1.0)
    lower = solve(z, -1.0)
    return max(-1.0, lower), min(1.0, upper)
