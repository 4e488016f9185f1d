"""Degenerate character runs: the output turns into one character or a short pattern, over and over.

The best-known output of a broken half-precision or badly quantized model is ``!!!!!!!!…`` (NaN
logits make the first vocabulary entry win every step), ``........``, ``? ? ? ?`` or a word that
never ends (``monad_def_def_def…``). Word tokens cannot see these: a run of one symbol is one token.
So this looks at the characters themselves, with whitespace squeezed out (``? ? ?`` is ``???``), for
a unit of one to four characters repeated back to back. What legitimately makes long runs is kept
apart: closed code blocks and inline code are not read at all (ASCII art, banners, ``'!' * 80``),
except empty blocks, so that a model looping on empty code fences is seen; digits never form a unit
(long numbers, zero arrays); and characters that build structure — Markdown rules, table borders,
comment banners, dot leaders, brackets, box drawing — need a run far longer than any rule or leader,
or one that makes up most of the output.
"""

from __future__ import annotations

from dataclasses import dataclass

import regex

_FENCED = regex.compile(r"^[ \t]*(`{3,}|~{3,})[^\n]*\n(.*?)^[ \t]*\1[ \t]*$", regex.M | regex.S)
_INLINE_CODE = regex.compile(r"`[^`\n]*[^`\s][^`\n]*`")
_INVISIBLE = regex.compile(r"[\s\p{Cf}]+")
_DIGIT = regex.compile(r"\p{N}")
_LETTER = regex.compile(r"\p{L}")
STRUCTURAL = frozenset("-=_*#~+|:;%/\\<>^.()[]{}—–·•") | {chr(c) for c in range(0x2500, 0x25A0)}
"""Characters of rules, tables, banners, leaders, brackets and box drawing: long runs of them are layout."""
MAX_PERIOD = 4


@dataclass(frozen=True)
class Run:
    unit: str
    """The repeated characters (whitespace removed)."""
    repeats: int
    kind: str
    """``symbol`` (punctuation, emoji), ``structural`` (see ``STRUCTURAL``) or ``letter``."""

    @property
    def chars(self) -> int:
        return len(self.unit) * self.repeats


def visible_prose(text: str) -> str:
    """``text`` without closed code blocks (those with something in them), inline code and whitespace:
    what a run is looked for in."""
    text = _FENCED.sub(lambda m: "\n" if m.group(2).strip() else m.group(0), text)
    text = _INLINE_CODE.sub(" ", text)
    return _INVISIBLE.sub("", text)


def _primitive(unit: str) -> bool:
    """False for a unit that is itself a repetition (``!!`` is ``!`` twice)."""
    p = len(unit)
    return not any(p % d == 0 and unit == unit[:d] * (p // d) for d in range(1, p))


def _kind(unit: str) -> str | None:
    if _DIGIT.search(unit):
        return None
    if _LETTER.search(unit):
        return "letter"
    return "structural" if all(ch in STRUCTURAL for ch in unit) else "symbol"


def runs(squeezed: str, max_period: int = MAX_PERIOD) -> list[Run]:
    """Every maximal back-to-back repetition (two or more) of a primitive unit of up to ``max_period``
    characters in ``squeezed``, digits excluded."""
    found: list[Run] = []
    n = len(squeezed)
    for p in range(1, max_period + 1):
        i = 0
        while i + p < n:
            if squeezed[i] != squeezed[i + p]:
                i += 1
                continue
            start = i
            while i + p < n and squeezed[i] == squeezed[i + p]:
                i += 1
            unit = squeezed[start : start + p]
            repeats = (i - start + p) // p
            kind = _kind(unit)
            if repeats >= 2 and kind and _primitive(unit):
                found.append(Run(unit, repeats, kind))
    return found


def degenerate_run(
    text: str, *, symbol_run: int = 12, structural_run: int = 100, letter_chars: int = 24, most: float = 0.75,
    structural_min_chars: int = 24,
) -> Run | None:
    """The longest degenerate run in ``text``, or ``None``.

    Degenerate: a symbol unit (``!``, ``?``, ``。``, ``?!``, an emoji) repeated ``symbol_run`` times; a
    structural unit repeated ``structural_run`` times, or covering at least ``structural_min_chars``
    characters and ``most`` of the visible output; a unit with letters (``a``, ``_def``) covering
    ``letter_chars`` characters.
    """
    squeezed = visible_prose(text)
    best: Run | None = None
    for run in runs(squeezed):
        if run.kind == "symbol":
            hit = run.repeats >= symbol_run
        elif run.kind == "structural":
            hit = run.repeats >= structural_run or (
                run.chars >= structural_min_chars and run.chars >= most * len(squeezed)
            )
        else:
            hit = run.chars >= letter_chars
        if hit and (best is None or run.chars > best.chars):
            best = run
    return best
