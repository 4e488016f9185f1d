"""``length_collapse``: the output is a fraction of the baseline's length for the same item.

A pruned model answered a river-crossing puzzle in a fifth of the baseline's length and still passed a
min-length check: truncated reasoning looks fine in isolation. Lengths are the model tokens each side
generated when the backend reported them (both sides), else word tokens (one per CJK character), so
the ratio means the same in every language and a loop inside one "word" (``monad_def_def…``) is not
counted short. A candidate that ran to the token limit was cut, not collapsed (both sides at the
limit included): whatever it wrote, it is as long as it was allowed to be. A short baseline (a
one-line answer) is not long enough for a ratio to mean anything.
"""

from __future__ import annotations

from typing import Any

from harness.detectors.text import tokens


def length_collapse(
    candidate: str,
    baseline: str,
    *,
    ratio: float = 0.5,
    min_baseline_tokens: int = 40,
    candidate_tokens: int | None = None,
    baseline_tokens: int | None = None,
    candidate_at_limit: bool = False,
) -> dict[str, Any] | None:
    """Evidence that ``candidate`` has fewer than ``ratio`` x the baseline's tokens, or ``None``.

    ``candidate_tokens``/``baseline_tokens``: generated model tokens (used when both are given);
    ``candidate_at_limit``: the candidate stopped at ``max_tokens``.
    """
    if candidate_at_limit:
        return None
    if candidate_tokens is not None and baseline_tokens is not None:
        cand, base, unit = candidate_tokens, baseline_tokens, "model tokens"
    else:
        cand, base, unit = len(tokens(candidate)), len(tokens(baseline)), "words"
    if base < min_baseline_tokens or cand >= ratio * base:
        return None
    return {
        "candidate_tokens": cand,
        "baseline_tokens": base,
        "unit": unit,
        "ratio": round(cand / base, 4),
        "threshold": ratio,
    }
