"""``script_mixing``: letters of a Unicode script the expected output language does not use.

The failure this catches is tiny and real: one Chinese character inside a Spanish translation. So one
character is enough to fire, and the rules for what is *legitimate* carry the precision: Latin is
tolerated in every language (names, terms, code), Common/Inherited characters (digits, punctuation,
emoji, math operators, combining marks) are always fine, short Greek runs are math symbols, code spans
are skipped, a quoted or parenthesized gloss ("Tokio (東京)", "la palabra «猫»") is fine, and so is the
script of a language the prompt asks about ("how do you say thanks in Japanese?") unless the prompt
itself is written in it (then it is a translation source, and copying it is the failure).
"""

from __future__ import annotations

import functools
from typing import Any

import regex

# Scripts each language writes natively, beyond Latin + Common + Inherited (always allowed).
ALLOWED_SCRIPTS: dict[str, tuple[str, ...]] = {
    **{lang: () for lang in (
        "en", "es", "fr", "de", "it", "pt", "nl", "pl", "cs", "sk", "sl", "hr", "bs", "sv", "da", "no",
        "fi", "et", "lv", "lt", "hu", "ro", "tr", "az", "id", "ms", "vi", "tl", "sw", "ca", "gl", "eu",
        "af", "sq", "is", "ga", "cy", "mt", "uz", "ha", "yo", "zu", "xh", "eo", "la",
    )},
    **{lang: ("Cyrillic",) for lang in ("ru", "uk", "bg", "be", "mk", "kk", "ky", "mn", "tg", "sr")},
    "zh": ("Han", "Bopomofo"),
    "ja": ("Han", "Hiragana", "Katakana"),
    "ko": ("Hangul", "Han"),
    **{lang: ("Arabic",) for lang in ("ar", "fa", "ur", "ps", "ug", "sd", "ku")},
    "he": ("Hebrew",),
    "yi": ("Hebrew",),
    "el": ("Greek",),
    **{lang: ("Devanagari",) for lang in ("hi", "mr", "ne", "sa")},
    "bn": ("Bengali",),
    "as": ("Bengali",),
    "pa": ("Gurmukhi",),
    "gu": ("Gujarati",),
    "or": ("Oriya",),
    "ta": ("Tamil",),
    "te": ("Telugu",),
    "kn": ("Kannada",),
    "ml": ("Malayalam",),
    "si": ("Sinhala",),
    "th": ("Thai",),
    "lo": ("Lao",),
    "my": ("Myanmar",),
    "km": ("Khmer",),
    "ka": ("Georgian",),
    "hy": ("Armenian",),
    "am": ("Ethiopic",),
    "ti": ("Ethiopic",),
    "bo": ("Tibetan",),
    "dv": ("Thaana",),
}  # fmt: skip

# Scripts named in evidence (first match wins); anything else is reported as "Other".
_NAMED_SCRIPTS = (
    "Han", "Hiragana", "Katakana", "Hangul", "Bopomofo", "Cyrillic", "Greek", "Arabic", "Hebrew",
    "Devanagari", "Bengali", "Gurmukhi", "Gujarati", "Oriya", "Tamil", "Telugu", "Kannada", "Malayalam",
    "Sinhala", "Thai", "Lao", "Myanmar", "Khmer", "Georgian", "Armenian", "Ethiopic", "Tibetan",
    "Thaana", "Syriac", "Mongolian", "Yi", "Cherokee", "Latin",
)  # fmt: skip
_SCRIPT_RE = {name: regex.compile(rf"\p{{Script={name}}}") for name in _NAMED_SCRIPTS}

# Fenced code, inline code and URLs: their characters are not prose in any language.
_CODE = regex.compile(r"```.*?(?:```|\Z)|~~~.*?(?:~~~|\Z)|`[^`\n]+`|https?://\S+", regex.S)
_OPENERS = "\"'“‘«‹「『【〈《(（[［"
_CLOSERS = "\"'”’»›」』】〉》)）]］"


def script_share(text: str, scripts: tuple[str, ...], cjk_weight: int = 3) -> float:
    """Share of the letters of ``text`` written in ``scripts`` (a CJK character weighs ``cjk_weight``)."""
    total = inside = 0
    for ch in regex.findall(r"\p{L}", text):
        script = script_of(ch)
        weight = cjk_weight if script in ("Han", "Hiragana", "Katakana", "Hangul") else 1
        total += weight
        inside += weight if script in scripts else 0
    return inside / total if total else 1.0


def native_scripts(lang: str) -> tuple[str, ...]:
    """The scripts a language is written in (Latin for languages with nothing else in the table)."""
    return ALLOWED_SCRIPTS.get(lang) or ("Latin",)


def script_of(char: str) -> str:
    """Unicode script name of one character, among the scripts this module knows."""
    return next((name for name, pat in _SCRIPT_RE.items() if pat.match(char)), "Other")


def strip_code(text: str) -> str:
    """Text with fenced/inline code and URLs blanked out by spaces (offsets stay those of ``text``)."""
    return _CODE.sub(lambda m: " " * len(m.group(0)), text)


@functools.cache
def _foreign_pattern(allowed: tuple[str, ...]) -> regex.Pattern[str]:
    keep = "".join(rf"\p{{Script={s}}}" for s in ("Common", "Inherited", "Unknown", "Latin", *allowed))
    # a run of letters/marks of one foreign script, e.g. a whole Han word
    return regex.compile(rf"[^{keep}\s]+")


def _runs_by_script(chunk: str) -> list[tuple[str, str]]:
    """Split a run of foreign characters into (script, run) pieces."""
    pieces: list[tuple[str, str]] = []
    for ch in chunk:
        script = script_of(ch)
        if pieces and pieces[-1][0] == script:
            pieces[-1] = (script, pieces[-1][1] + ch)
        else:
            pieces.append((script, ch))
    return pieces


_LATIN_LETTER = regex.compile(r"\p{Script=Latin}")

# Language names (en/es/fr/de) -> the scripts that language writes: a prompt that asks *about* Japanese
# may get Japanese words in an English answer.
LANGUAGE_NAMES: dict[str, tuple[str, ...]] = {
    **dict.fromkeys(("japanese", "japonés", "japonais", "japanisch"), ("Han", "Hiragana", "Katakana")),
    **dict.fromkeys(("chinese", "mandarin", "cantonese", "chino", "chinois", "chinesisch"), ("Han", "Bopomofo")),
    **dict.fromkeys(("korean", "coreano", "coréen", "koreanisch"), ("Hangul", "Han")),
    **dict.fromkeys(("russian", "ruso", "russe", "russisch", "ukrainian", "bulgarian", "serbian"), ("Cyrillic",)),
    **dict.fromkeys(("arabic", "árabe", "arabe", "arabisch", "persian", "farsi", "urdu"), ("Arabic",)),
    **dict.fromkeys(("greek", "griego", "grec", "griechisch"), ("Greek",)),
    **dict.fromkeys(("hebrew", "hebreo", "hébreu", "hebräisch"), ("Hebrew",)),
    **dict.fromkeys(("hindi", "sanskrit", "marathi", "nepali"), ("Devanagari",)),
    **dict.fromkeys(("thai", "tailandés", "thaï"), ("Thai",)),
}  # fmt: skip
_WORDS = regex.compile(r"\p{L}+")


def _quoted(text: str, start: int, end: int, max_span: int = 40) -> bool:
    """Whether ``text[start:end]`` sits inside quotes or parentheses holding no Latin letters (a gloss)."""
    left = start - 1
    while left >= 0 and start - left <= max_span and text[left] not in _OPENERS + _CLOSERS + "\n":
        left -= 1
    right = end
    while right < len(text) and right - end <= max_span and text[right] not in _OPENERS + _CLOSERS + "\n":
        right += 1
    if left < 0 or right >= len(text) or text[left] not in _OPENERS or text[right] not in _CLOSERS:
        return False
    return not _LATIN_LETTER.search(text[left + 1 : right])


def prompt_language_scripts(prompt: str) -> set[str]:
    """Scripts of the languages the prompt names but does not itself write in ("say thanks in Japanese")."""
    named = {script for word in _WORDS.findall(prompt.casefold()) for script in LANGUAGE_NAMES.get(word, ())}
    present = {script_of(c) for c in prompt}
    # a prompt already holding the script is a translation source: its script in the answer is a failure
    return named if not (named & present) else set()


def script_mixing(
    text: str,
    lang: str | None,
    *,
    prompt: str = "",
    reference_texts: tuple[str, ...] = (),
    greek_max_run: int = 3,
) -> dict[str, Any] | None:
    """Evidence of letters from a script that ``lang`` does not use, or ``None``.

    Args:
        text: the model's output.
        lang: expected output language (ISO 639-1). ``None``: the allowed scripts are those the
            ``reference_texts`` (the baseline's output, the prompt) use; with no references, no check.
        prompt: the prompt; scripts of languages it names (and does not itself contain) are tolerated.
        reference_texts: texts whose scripts are allowed when ``lang`` is ``None``.
        greek_max_run: Greek runs up to this many letters are math symbols (α, Δx, μm).
    """
    if lang is None:
        if not reference_texts:
            return None
        allowed = tuple(
            sorted({script_of(c) for ref in reference_texts for c in strip_code(ref)} - {"Other"})
        )
        basis = "reference"
    elif lang in ALLOWED_SCRIPTS:
        allowed, basis = ALLOWED_SCRIPTS[lang], "lang"
    else:
        return None  # a language we have no table for: better silent than wrong
    prose = strip_code(text)
    asked_about = prompt_language_scripts(prompt)
    found: list[dict[str, Any]] = []
    for match in _foreign_pattern(allowed).finditer(prose):
        offset = match.start()
        for script, run in _runs_by_script(match.group(0)):
            start, end = offset, offset + len(run)
            offset = end
            if script == "Greek" and "Greek" not in allowed and len(run) <= greek_max_run:
                continue
            if script in asked_about or _quoted(prose, start, end):
                continue
            found.append({"chars": run, "script": script, "at": start})
    if not found:
        return None
    scripts = sorted({f["script"] for f in found})
    return {
        "expected_lang": lang,
        "allowed": ["Latin", *allowed] if basis == "lang" else list(allowed),
        "scripts": scripts,
        "offending": found[:20],
        "count": sum(len(f["chars"]) for f in found),
    }
