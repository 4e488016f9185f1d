"""``wrong_language``: the output is written in another language than the expected one.

py3langid (langid.py's model, shipped inside its wheel, offline) identifies the language. Two guards
keep it precise: it only votes among widely used languages (otherwise Spanish comes back as
Extremaduran and Chinese as Wu), and it only runs on enough letters of prose (code, URLs, numbers and
math removed), because language identification on "Paris." or ``x = 3`` is a guess.
"""

from __future__ import annotations

import copy
import functools
from typing import Any

import regex

from harness.detectors.scripts import ALLOWED_SCRIPTS, native_scripts, script_share, strip_code

# Languages the identifier may answer with; the expected language is always added.
CANDIDATE_LANGS = (
    "af", "ar", "bg", "bn", "ca", "cs", "da", "de", "el", "en", "es", "et", "fa", "fi", "fr", "he",
    "hi", "hr", "hu", "id", "it", "ja", "ko", "lt", "lv", "nl", "no", "pl", "pt", "ro", "ru", "sk",
    "sl", "sv", "sw", "ta", "th", "tr", "uk", "ur", "vi", "zh",
)  # fmt: skip

# Languages close enough that confusing them is not a wrong-language answer.
_SAME = [{"no", "da", "nn"}, {"hr", "sr", "bs"}, {"id", "ms"}, {"zh", "wuu", "yue"}]

_LETTER = regex.compile(r"\p{L}")
# one CJK character carries about as much as two or three Latin letters
_CJK = regex.compile(r"[\p{Han}\p{Hiragana}\p{Katakana}\p{Hangul}]")
CJK_WEIGHT = 3
_MATH = regex.compile(r"\$\$.*?\$\$|\$[^$\n]+\$|\\\(.*?\\\)|\\\[.*?\\\]", regex.S)


def _same(a: str, b: str) -> bool:
    return a == b or any(a in group and b in group for group in _SAME)


@functools.cache
def _full_model():  # -> py3langid LanguageIdentifier over all its languages (loaded once, ~1 s)
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    return LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)


@functools.cache
def _identifier(langs: tuple[str, ...]):  # -> LanguageIdentifier restricted to ``langs``
    ident = copy.deepcopy(_full_model())  # set_languages narrows the model in place
    ident.set_languages([lang for lang in langs if lang in ident.nb_classes])
    return ident


def supported(lang: str) -> bool:
    """Whether the identifier knows ``lang`` (otherwise ``wrong_language`` skips the item)."""
    return lang in _full_model().nb_classes


def prose_of(text: str) -> str:
    """The text without code, URLs and LaTeX math: what language identification should see."""
    return _MATH.sub(" ", strip_code(text))


def identify(text: str, expected: str | None = None) -> tuple[str, float, float]:
    """``(language, confidence, probability of expected)`` over the candidate languages (+ ``expected``)."""
    langs = tuple(sorted(set(CANDIDATE_LANGS) | ({expected} if expected else set())))
    ranked = _identifier(langs).rank(text)
    top, conf = ranked[0]
    p_expected = sum(p for lang, p in ranked if expected and _same(lang, expected))
    return top, float(conf), float(p_expected)


def wrong_language(
    text: str, lang: str | None, *, min_letters: int = 30, min_confidence: float = 0.9
) -> dict[str, Any] | None:
    """Evidence that ``text`` is not in ``lang``, or ``None``.

    Skipped (``None``) without an expected language, for languages the model does not know, and when the
    prose has fewer than ``min_letters`` letters (a CJK character counts ``CJK_WEIGHT``). Fires when the identified language differs from
    ``lang`` with confidence >= ``min_confidence``; when the two languages use different scripts, the
    script shares decide instead: it fires when less than half of the (CJK-weighted) letters are in the
    expected language's scripts.
    """
    if lang is None or not supported(lang):
        return None
    prose = prose_of(text)
    letters = len(_LETTER.findall(prose)) + (CJK_WEIGHT - 1) * len(_CJK.findall(prose))
    if letters < min_letters:
        return None
    top, conf, p_expected = identify(prose, lang)
    if _same(top, lang):
        return None
    share = None
    if lang in ALLOWED_SCRIPTS and not set(native_scripts(top)) & set(native_scripts(lang)):
        # different scripts: the script shares decide, not n-grams ("thanks is ありがとう" stays English),
        # and not the confidence either (Russian vs Bulgarian splits it, yet neither is English)
        share = script_share(prose, native_scripts(lang))
        if share >= 0.5:
            return None
    elif conf < min_confidence:
        return None
    return {
        "expected": lang,
        "detected": top,
        "confidence": round(conf, 4),
        "p_expected": round(p_expected, 4),
        "letters": letters,
        **({"expected_script_share": round(share, 4)} if share is not None else {}),
    }
