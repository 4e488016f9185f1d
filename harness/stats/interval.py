"""Estimators on a budget's scale: one interface for the gate's single decision rule.

Every estimator exposes its point ``estimate``, one-sided ``bounds(alpha)``, and the p-values of
"within" and "beyond" a margin, so PASS/FAIL/Holm treat McNemar-type, bootstrap and clustered
comparisons alike (``BootstrapDistribution`` and ``TInterval`` follow the same protocol).
"""

from __future__ import annotations

from typing import Literal, Protocol

from harness.stats.mcnemar import tango_bounds, tango_p_beyond, tango_p_within

Status = Literal["PASS", "FAIL", "INCONCLUSIVE"]
"""A non-inferiority decision: PASS (confidently within the margin), FAIL (confidently beyond), or neither."""


class Estimator(Protocol):
    estimate: float

    def bounds(self, alpha: float) -> tuple[float, float]: ...
    def p_within(self, margin: float) -> float: ...
    def p_beyond(self, margin: float) -> float: ...


class TangoEstimator:
    """Paired 0/1 regression ``scale * (b - c) / n`` with Tango score bounds."""

    def __init__(self, b: int, c: int, n: int, scale: float) -> None:
        self.b, self.c, self.n, self.scale = b, c, n, scale
        self.estimate = scale * (b - c) / n

    def bounds(self, alpha: float) -> tuple[float, float]:
        lo, hi = tango_bounds(self.b, self.c, self.n, alpha)
        return lo * self.scale, hi * self.scale

    def p_within(self, margin: float) -> float:
        return tango_p_within(self.b, self.c, self.n, margin / self.scale)

    def p_beyond(self, margin: float) -> float:
        return tango_p_beyond(self.b, self.c, self.n, margin / self.scale)


class Envelope:
    """The more conservative of two estimators: widest bounds, largest p-values."""

    def __init__(self, first: Estimator, second: Estimator) -> None:
        self.parts = (first, second)
        self.estimate = first.estimate

    def bounds(self, alpha: float) -> tuple[float, float]:
        (a_lo, a_hi), (b_lo, b_hi) = (p.bounds(alpha) for p in self.parts)
        return min(a_lo, b_lo), max(a_hi, b_hi)

    def p_within(self, margin: float) -> float:
        return max(p.p_within(margin) for p in self.parts)

    def p_beyond(self, margin: float) -> float:
        return max(p.p_beyond(margin) for p in self.parts)
