"""Silent-failure detectors: what a compressed model gets wrong while passing the usual checks.

Each flag is a small pure function in its own module; ``detect`` runs them all on one output (and,
for the comparative flags, the baseline's output for the same item) and returns the flags raised
with their evidence. Flag names are stable: reports, budgets (``new_flags``) and the CLI use them.

- ``empty``, ``too_short``, ``repetition`` (:mod:`.text`): need only the output.
- ``script_mixing`` (:mod:`.scripts`), ``wrong_language`` (:mod:`.language`): need the expected
  language (``lang``), or fall back on the baseline's output.
- ``low_diversity`` (:mod:`.diversity`), ``length_collapse`` (:mod:`.length`), ``denial``
  (:mod:`.denial`): need the baseline's output; without one they are not evaluated.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from harness.detectors.denial import denial
from harness.detectors.diversity import low_diversity
from harness.detectors.langs import normalize_lang
from harness.detectors.language import identify, prose_of, wrong_language
from harness.detectors.length import length_collapse
from harness.detectors.scripts import script_mixing
from harness.detectors.text import is_empty, repetition, too_short, visible_length
from harness.records import ItemRecord

__all__ = [
    "COMPARATIVE_FLAGS",
    "FLAGS",
    "DetectInput",
    "DetectResult",
    "DetectorSettings",
    "detect",
    "input_from_record",
]

FLAGS: tuple[str, ...] = (
    "empty",
    "too_short",
    "repetition",
    "script_mixing",
    "wrong_language",
    "low_diversity",
    "length_collapse",
    "denial",
)
COMPARATIVE_FLAGS: tuple[str, ...] = ("low_diversity", "length_collapse", "denial")
"""Flags that need the baseline's output for the same item."""


class DetectInput(BaseModel):
    """One generated output to check (the shape of a ``moegate detect`` input line)."""

    model_config = ConfigDict(frozen=True)

    id: str
    """Item id: pairs a candidate with its baseline."""
    prompt: str = ""
    response: str
    """The generated text."""
    lang: str | None = None
    """Expected output language, ISO 639-1 (``es``; ``pt-BR`` and ``spa_Latn`` are understood)."""
    min_len: int | None = None
    """Minimum visible (non-whitespace) characters: below it the item is ``too_short``."""
    tokens: int | None = Field(None, ge=0)
    """Model tokens generated (the backend's count); length comparisons use it when both sides have it."""
    finish_reason: Literal["stop", "length"] | None = None
    """``length``: generation stopped at its token limit (a cut output is not a length collapse)."""


class DetectResult(BaseModel):
    """The flags raised on one output and the evidence for each."""

    model_config = ConfigDict(frozen=True)

    id: str
    flags: tuple[str, ...]
    """Raised flags, in ``FLAGS`` order."""
    details: dict[str, Any] = Field(default_factory=dict)
    """flag -> evidence (offending characters, detected language, ratios, phrases)."""


class DetectorSettings(BaseModel):
    """Thresholds of every detector; defaults measured on tests/data/detectors_labelled.jsonl
    (see benchmarks/detector_quality.py)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    repetition_min_repeats: int = 3
    """A unit repeated back to back this many times..."""
    repetition_min_cover: int = 24
    """...covering at least this many tokens is a loop."""
    repetition_any_repeats: int = 8
    """A unit repeated back to back this many times is a loop whatever its size."""
    repetition_ngram_n: int = 12
    repetition_ngram_max: int = 5
    """One ``repetition_ngram_n``-gram occurring this many times is a loop."""
    repetition_compress_min_bytes: int = 400
    repetition_compress_below: float = 0.2
    """Texts of at least ``repetition_compress_min_bytes`` compressing below this ratio (zlib) loop."""
    repetition_symbol_run: int = 12
    """A punctuation or emoji unit (``!``, ``? ``, ``?!``) repeated this many times is a degenerate run..."""
    repetition_structural_run: int = 100
    """...a unit of rule, table, banner, leader or bracket characters needs this many (or most of the output)..."""
    repetition_letter_run_chars: int = 24
    """...and a unit with letters (``a``, ``_def``) this many characters."""
    greek_max_run: int = 3
    """Greek runs up to this many letters are math symbols, not Greek text."""
    language_min_letters: int = 30
    """Language identification runs only on prose with at least this many letters."""
    language_min_confidence: float = 0.9
    diversity_ratio: float = 0.75
    """``low_diversity`` when the candidate's mean distinct-2/3/4 is below this x the baseline's."""
    diversity_min_tokens: int = 30
    length_ratio: float = 0.5
    """``length_collapse`` when the candidate has fewer than this x the baseline's tokens (model tokens
    when both sides report them, else words)."""
    length_min_baseline_tokens: int = 40


def input_from_record(record: ItemRecord) -> DetectInput:
    """The detector input for one item record: ``meta["min_len"]`` becomes ``min_len``; the generation
    suites' ``meta["tokens"]`` (when positive: 0 is a backend that did not count) and
    ``meta["finish_reason"]`` carry over."""
    min_len, tokens, finish = (record.meta.get(k) for k in ("min_len", "tokens", "finish_reason"))
    return DetectInput(
        id=record.item_id,
        prompt=record.prompt,
        response=record.output or "",
        lang=record.lang,
        min_len=int(min_len) if min_len is not None else None,
        tokens=tokens if isinstance(tokens, int) and tokens > 0 else None,
        finish_reason=finish if finish in ("stop", "length") else None,
    )


def _expected_from_baseline(baseline: str, s: DetectorSettings) -> str | None:
    """The baseline's language when it is confidently identifiable: the candidate should match it."""
    prose = prose_of(baseline)
    if visible_length(prose) < s.language_min_letters:
        return None
    lang, conf, _ = identify(prose)
    return lang if conf >= s.language_min_confidence else None


def detect(
    candidate: DetectInput, baseline: DetectInput | None = None, settings: DetectorSettings | None = None
) -> DetectResult:
    """Run every detector on ``candidate`` (against ``baseline``'s output for the same item when given).

    Flags are independent: an empty output is also ``too_short`` when it has a ``min_len`` and a
    ``length_collapse`` when the baseline is long. Never raises on any text.
    """
    s = settings or DetectorSettings()
    text = candidate.response or ""
    lang = normalize_lang(candidate.lang)
    base_text = baseline.response if baseline is not None and not is_empty(baseline.response) else None
    found: dict[str, dict[str, Any] | None] = {}

    found["empty"] = {"chars": len(text)} if is_empty(text) else None
    found["too_short"] = too_short(text, candidate.min_len)
    if not found["empty"]:
        found["repetition"] = repetition(
            text,
            min_repeats=s.repetition_min_repeats,
            min_cover=s.repetition_min_cover,
            any_repeats=s.repetition_any_repeats,
            ngram_n=s.repetition_ngram_n,
            ngram_max=s.repetition_ngram_max,
            compress_min_bytes=s.repetition_compress_min_bytes,
            compress_below=s.repetition_compress_below,
            symbol_run=s.repetition_symbol_run,
            structural_run=s.repetition_structural_run,
            letter_run_chars=s.repetition_letter_run_chars,
        )
        refs = (base_text, candidate.prompt) if base_text is not None else ()
        found["script_mixing"] = script_mixing(
            text, lang, prompt=candidate.prompt, reference_texts=refs, greek_max_run=s.greek_max_run
        )
        expected, source = lang, "lang"
        if expected is None and base_text is not None:
            expected, source = _expected_from_baseline(base_text, s), "baseline"
        wrong = wrong_language(
            text, expected, min_letters=s.language_min_letters, min_confidence=s.language_min_confidence
        )
        found["wrong_language"] = {**wrong, "expected_from": source} if wrong else None
    if base_text is not None:
        found["low_diversity"] = low_diversity(
            text, base_text, ratio=s.diversity_ratio, min_tokens=s.diversity_min_tokens
        )
        found["length_collapse"] = length_collapse(
            text, base_text, ratio=s.length_ratio, min_baseline_tokens=s.length_min_baseline_tokens,
            candidate_tokens=candidate.tokens, baseline_tokens=baseline.tokens if baseline else None,
            candidate_at_limit=candidate.finish_reason == "length",
        )  # fmt: skip
        found["denial"] = denial(text, base_text, prompt=candidate.prompt)
    flags = tuple(f for f in FLAGS if found.get(f))
    return DetectResult(id=candidate.id, flags=flags, details={f: found[f] for f in flags})
