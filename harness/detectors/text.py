"""Text-only detectors: ``empty``, ``too_short``, ``repetition``; plus the tokenizer other detectors share.

A looping model repeats itself in four visible ways, each cheap to measure without a model: a unit of
tokens repeated back to back ("the the the", a sentence over and over), the same long n-gram coming
back again and again with other text in between, text so redundant that zlib squeezes it to a
fraction of its size, and a degenerate run of one character or a short pattern (``!!!!``, ``? ? ?``;
:mod:`.runs`). Each signal has a floor on length so short, legitimately repetitive answers
("yes, yes", "!!!", a Markdown rule) never fire.
"""

from __future__ import annotations

import zlib
from collections import Counter
from typing import Any

import regex

from harness.detectors.runs import degenerate_run

# One token per CJK character (no spaces to split on), one per word elsewhere, one per symbol.
# A run of one symbol ("-----", "!!!", "😂😂😂") is one token, so rules and emphasis are not loops
# (degenerate runs are :mod:`.runs`' job). Underscores separate words: ``monad_def_def`` is three.
_TOKEN = regex.compile(r"[\p{Han}\p{Hiragana}\p{Katakana}\p{Thai}]|[[\w\p{M}]--_]+|([^\w\s])\1*", regex.V1)
_LETTER = regex.compile(r"\p{L}")
_DIGITS = regex.compile(r"\d+")


def tokens(text: str) -> list[str]:
    """Language-agnostic word tokens (lowercased); CJK characters count one token each."""
    return [m.group(0).casefold() for m in _TOKEN.finditer(text)]


def is_empty(text: str | None) -> bool:
    """True for ``None``, empty or whitespace-only output (including invisible format characters)."""
    return text is None or not regex.sub(r"[\s\p{Cf}]+", "", text)


def visible_length(text: str) -> int:
    """Characters that are not whitespace: the unit of ``min_len``."""
    return len(regex.sub(r"\s+", "", text))


def too_short(text: str, min_len: int | None) -> dict[str, Any] | None:
    """Evidence when ``text`` has fewer visible characters than ``min_len``; ``None`` otherwise."""
    if min_len is None:
        return None
    n = visible_length(text)
    return {"chars": n, "min_len": min_len} if n < min_len else None


def periodic_run(toks: list[str], max_period: int) -> tuple[int, int, int]:
    """Longest stretch where a unit of ``p`` tokens repeats back to back.

    Returns ``(period, repeats, start)`` of the stretch covering the most tokens (``repeats`` counts the
    first occurrence too); ``(0, 1, 0)`` when nothing repeats.
    """
    best = (0, 1, 0)
    best_cover = 0
    n = len(toks)
    for p in range(1, min(max_period, n // 2) + 1):
        run = 0
        for i in range(n - p):
            if toks[i] == toks[i + p]:
                run += 1
                # a run of matches of length >= p means the unit toks[i-run+1 : ...] repeated
                cover = run + p
                if cover > best_cover and run >= p:
                    best_cover = cover
                    best = (p, cover // p, i - run + 1)
            else:
                run = 0
    return best


def top_ngram(toks: list[str], n: int) -> tuple[tuple[str, ...], int]:
    """The most frequent ``n``-gram and its count (``((), 0)`` for texts shorter than ``n``)."""
    if len(toks) < n:
        return (), 0
    counts = Counter(tuple(toks[i : i + n]) for i in range(len(toks) - n + 1))
    gram, count = counts.most_common(1)[0]
    return gram, count


def compression_ratio(text: str) -> float:
    """zlib-compressed size over raw UTF-8 size: ~0.4-0.6 for prose, far lower for loops."""
    raw = text.encode("utf-8", "surrogatepass")
    return len(zlib.compress(raw, 9)) / max(len(raw), 1)


def repetition(
    text: str,
    *,
    min_repeats: int = 3,
    min_cover: int = 24,
    max_period: int = 64,
    any_repeats: int = 8,
    ngram_n: int = 12,
    ngram_max: int = 5,
    compress_min_bytes: int = 400,
    compress_below: float = 0.2,
    symbol_run: int = 12,
    structural_run: int = 100,
    letter_run_chars: int = 24,
) -> dict[str, Any] | None:
    """Evidence of looping output, or ``None``.

    Fires when (a) a unit of tokens repeats back to back ``min_repeats`` times covering at least
    ``min_cover`` tokens, or ``any_repeats`` times whatever its size (units without letters need
    three times the cover; units that differ only in their numbers count at ``any_repeats``); (b) one ``ngram_n``-gram occurs
    ``ngram_max`` times or more; (c) texts of ``compress_min_bytes`` or more compress below
    ``compress_below`` of their size; or (d) a degenerate character run (:func:`.runs.degenerate_run`
    with ``symbol_run``, ``structural_run`` and ``letter_run_chars``).
    """
    toks = tokens(text)
    reasons: dict[str, Any] = {}
    period, repeats, start = periodic_run(toks, max_period)
    numbered = [_DIGITS.sub("0", t) for t in toks]
    n_period, n_repeats, n_start = periodic_run(numbered, max_period)
    if n_repeats >= any_repeats and n_repeats > repeats:
        # the same item under a changing counter ("1. apple 2. apple 3. apple ...")
        period, repeats, start = n_period, n_repeats, n_start
        toks = numbered
    unit = " ".join(toks[start : start + period])
    # a unit without letters (",0" in a zero array, "| ---" in a table) loops only when it is long
    wordy = bool(_LETTER.search(unit)) or period * repeats >= 3 * min_cover
    if (
        period
        and wordy
        and repeats >= min_repeats
        and (period * repeats >= min_cover or repeats >= any_repeats)
    ):
        reasons["loop"] = {"unit": unit[:120], "period_tokens": period, "repeats": repeats}
    gram, count = top_ngram(toks, ngram_n)
    if count >= ngram_max and _LETTER.search(" ".join(gram)):
        reasons["ngram"] = {"ngram": " ".join(gram)[:120], "count": count}
    size = len(text.encode("utf-8", "surrogatepass"))
    if size >= compress_min_bytes:
        ratio = compression_ratio(text)
        if ratio < compress_below:
            reasons["compression"] = {"ratio": round(ratio, 4), "bytes": size}
    run = degenerate_run(text, symbol_run=symbol_run, structural_run=structural_run, letter_chars=letter_run_chars)
    if run is not None:
        reasons["run"] = {"unit": run.unit[:20], "repeats": run.repeats, "kind": run.kind}
    return reasons or None
