"""How many items would decide an INCONCLUSIVE capability.

Keeping the observed effect and per-item variance, an interval's half-width shrinks like
``sqrt(n / n')``. The answer is the smallest ``n'`` at which the bound clears the budget on the side
the estimate lies: below the budget -> the upper bound drops under it (PASS); above -> the lower
bound rises over it (FAIL). An estimate on (or absurdly close to) the budget can never be decided:
``None``.
"""

from __future__ import annotations

import math

from harness.stats.mcnemar import tango_bounds

_MAX_ITEMS = 10**12
"""Beyond this, more items will not decide it in practice: ``None``."""


def items_to_decide(
    estimate: float,
    lower: float,
    upper: float,
    margin: float,
    n: int,
    *,
    log_scale: bool = False,
) -> int | None:
    """Items needed (same effect, same variance) for the bound to clear ``margin`` either way.

    Args:
        estimate: the observed regression.
        lower, upper: its one-sided bounds at the level used for the decision.
        margin: the budget.
        n: items (or windows) behind the current bounds.
        log_scale: compare on the log scale (ratios such as perplexity).
    """
    if n <= 0:
        return None
    if log_scale:
        if min(estimate, lower, upper, margin) <= 0:
            return None
        estimate, lower, upper, margin = (math.log(x) for x in (estimate, lower, upper, margin))
    values = (estimate, lower, upper, margin)
    if not all(math.isfinite(x) for x in values):
        return None
    if estimate < margin:
        half, gap = upper - estimate, margin - estimate
    elif estimate > margin:
        half, gap = estimate - lower, estimate - margin
    else:
        return None
    if half <= 0:
        return n
    if half / gap > math.sqrt(_MAX_ITEMS / n):
        return None
    need = n * (half / gap) ** 2
    return max(n, math.ceil(need))


def paired_items_to_pass(right_to_wrong: int, wrong_to_right: int, margin: float, alpha: float) -> int | None:
    """Fewest paired items at which these flip *counts* (the rest unchanged) give a Tango upper bound
    of the regression ``(b - c) / n`` within ``margin`` (a share, not points); ``None`` beyond
    ``10**9`` items or for a margin of 0 or less.

    The question a budget on a small suite raises: how many items before one noisy flip (``1, 0``) —
    or none at all (``0, 0``) — can PASS?
    """
    if margin <= 0:
        return None
    low, high = max(1, right_to_wrong + wrong_to_right), 10**9

    def passes(n: int) -> bool:
        return tango_bounds(right_to_wrong, wrong_to_right, n, alpha)[1] <= margin

    if not passes(high):
        return None
    while low < high:  # the upper bound falls as unchanged items are added
        mid = (low + high) // 2
        low, high = (low, mid) if passes(mid) else (mid + 1, high)
    return low
