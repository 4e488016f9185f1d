"""Holm's step-down correction across capabilities.

A gate asks several questions at once (one per capability); without a correction, ten capabilities
at 95% each would wrongly fail a benign candidate about 40% of the time. Holm controls the
family-wise error at ``alpha`` and is uniformly more powerful than Bonferroni.
"""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import BaseModel


class HolmResult(BaseModel):
    """Per hypothesis, in the input order."""

    reject: list[bool]
    """Whether the hypothesis is rejected at family-wise level ``alpha``."""
    thresholds: list[float]
    """The level its p-value is compared with: ``alpha / (m - rank)`` (rank 0 = smallest p)."""
    adjusted: list[float]
    """Holm-adjusted p-values: reject exactly when ``adjusted <= alpha``."""


def holm(pvalues: Sequence[float], alpha: float) -> HolmResult:
    """Holm step-down: sort p ascending, reject while ``p_(i) <= alpha / (m - i)``, stop at the first miss."""
    m = len(pvalues)
    order = sorted(range(m), key=lambda i: (pvalues[i], i))
    reject = [False] * m
    thresholds = [alpha] * m
    adjusted = [1.0] * m
    running_max = 0.0
    stopped = False
    for rank, i in enumerate(order):
        thresholds[i] = alpha / (m - rank)
        running_max = max(running_max, min(1.0, (m - rank) * pvalues[i]))
        adjusted[i] = running_max
        if not stopped and pvalues[i] <= thresholds[i]:
            reject[i] = True
        else:
            stopped = True
    return HolmResult(reject=reject, thresholds=thresholds, adjusted=adjusted)
