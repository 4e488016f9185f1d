"""``length_collapse``: the output is a fraction of the baseline's length for the same item.

A pruned model answered a river-crossing puzzle in a fifth of the baseline's length and still passed a
min-length check: truncated reasoning looks fine in isolation. Lengths are counted in word tokens (one
per CJK character) so the ratio means the same in every language; a short baseline (a one-line
answer) is not long enough for a ratio to mean anything.
"""

from __future__ import annotations

from typing import Any

from harness.detectors.text import tokens


def length_collapse(
    candidate: str, baseline: str, *, ratio: float = 0.5, min_baseline_tokens: int = 40
) -> dict[str, Any] | None:
    """Evidence that ``candidate`` has fewer than ``ratio`` x the baseline's tokens, or ``None``."""
    base = len(tokens(baseline))
    if base < min_baseline_tokens:
        return None
    cand = len(tokens(candidate))
    if cand >= ratio * base:
        return None
    return {
        "candidate_tokens": cand,
        "baseline_tokens": base,
        "ratio": round(cand / base, 4),
        "threshold": ratio,
    }
