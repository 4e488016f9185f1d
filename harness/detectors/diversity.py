"""``low_diversity``: the output's n-gram diversity is far below the baseline's for the same item.

Merged experts keep multiple-choice accuracy yet generate flatter text. REAP measures it as distinct-n
(unique n-grams / n-grams, n = 2, 3, 4); a candidate is flagged when its mean distinct-n falls below a
ratio of the baseline's. Distinct-n of a few tokens is noise, so both texts must be long enough.
"""

from __future__ import annotations

from typing import Any

from harness.detectors.text import tokens

NGRAM_ORDERS = (2, 3, 4)


def distinct_n(toks: list[str], n: int) -> float:
    """Unique ``n``-grams over all ``n``-grams, in [0, 1]; 1.0 when there are no ``n``-grams."""
    total = len(toks) - n + 1
    if total <= 0:
        return 1.0
    return len({tuple(toks[i : i + n]) for i in range(total)}) / total


def diversity(text: str, orders: tuple[int, ...] = NGRAM_ORDERS) -> dict[int, float]:
    """Distinct-n of ``text`` for each order."""
    toks = tokens(text)
    return {n: distinct_n(toks, n) for n in orders}


def low_diversity(
    candidate: str, baseline: str, *, ratio: float = 0.75, min_tokens: int = 30
) -> dict[str, Any] | None:
    """Evidence that ``candidate``'s mean distinct-n is below ``ratio`` x the baseline's, or ``None``.

    Skipped when either text has fewer than ``min_tokens`` tokens.
    """
    cand_toks, base_toks = tokens(candidate), tokens(baseline)
    if len(cand_toks) < min_tokens or len(base_toks) < min_tokens:
        return None
    cand = {n: distinct_n(cand_toks, n) for n in NGRAM_ORDERS}
    base = {n: distinct_n(base_toks, n) for n in NGRAM_ORDERS}
    cand_mean = sum(cand.values()) / len(cand)
    base_mean = sum(base.values()) / len(base)
    if base_mean <= 0 or cand_mean >= ratio * base_mean:
        return None
    return {
        "candidate_distinct": {str(n): round(v, 4) for n, v in cand.items()},
        "baseline_distinct": {str(n): round(v, 4) for n, v in base.items()},
        "ratio": round(cand_mean / base_mean, 4),
        "threshold": ratio,
    }
