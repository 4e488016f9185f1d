"""FLORES-200 devtest translation, scored with chrF++ (sacrebleu ``CHRF(word_order=2)``).

English into Spanish, French, German, Chinese, Arabic, Russian and Japanese, and each back into English.
One item per (sentence, direction): ``item_id`` ``"<flores id>:<src>-<tgt>"``, ``group`` the direction,
``lang`` the expected output language (ISO 639-1, for the contamination detector).

Scores per item: ``chrf`` (sentence chrF++, 0-100) and ``chrf_<src>-<tgt>`` (the same number under the
direction's own key). Metric ``chrf`` is the mean over every item; ``chrf_eng-spa`` and friends are the
mean over that direction's items only (a per-direction metric covers the records that carry its key),
so a gate can budget each language. Corpus chrF++ per direction: :func:`corpus_chrf`.
"""

from __future__ import annotations

import functools
import re
import time
from collections.abc import Sequence
from typing import ClassVar

from pydantic import Field, field_validator

from harness.backends.base import Backend, GenerateRequest
from harness.errors import UserError
from harness.records import ItemRecord, MetricSpec, SuiteRun
from harness.suites._common import choose, finish_run, load_rows
from harness.suites.base import SuiteSettings, as_settings

FLORES_FILE = "flores200_devtest.jsonl"
FLORES_SHA256 = "c4453a3cfe1a85a9a4ad9357939ca04d8a73cf4c064e6c450401cb754f2db244"

LANGUAGES: dict[str, tuple[str, str, str]] = {
    # code: (FLORES column, English name, ISO 639-1)
    "eng": ("eng_Latn", "English", "en"),
    "spa": ("spa_Latn", "Spanish", "es"),
    "fra": ("fra_Latn", "French", "fr"),
    "deu": ("deu_Latn", "German", "de"),
    "zho": ("zho_Hans", "Chinese (Simplified)", "zh"),
    "arb": ("arb_Arab", "Arabic", "ar"),
    "rus": ("rus_Cyrl", "Russian", "ru"),
    "jpn": ("jpn_Jpan", "Japanese", "ja"),
}
ALL_DIRECTIONS: tuple[str, ...] = tuple(f"eng-{c}" for c in LANGUAGES if c != "eng") + tuple(
    f"{c}-eng" for c in LANGUAGES if c != "eng"
)
DEFAULT_PROMPT = (
    "Translate the following {source} text into {target}. "
    "Reply with the {target} translation only, on one line, nothing else.\n\n{text}"
)

CHRF_METRIC = MetricSpec(
    name="chrf", kind="continuous", higher_is_better=True, description="sentence chrF++ (word_order=2), mean"
)
DIRECTION_METRICS: dict[str, MetricSpec] = {
    d: MetricSpec(
        name=f"chrf_{d}",
        kind="continuous",
        higher_is_better=True,
        description=f"sentence chrF++ mean, {d} only",
    )
    for d in ALL_DIRECTIONS
}


class FloresSettings(SuiteSettings):
    data_file: str = FLORES_FILE
    data_sha256: str = FLORES_SHA256
    directions: list[str] = Field(default_factory=lambda: list(ALL_DIRECTIONS))
    limit: int | None = Field(None, ge=1)
    """Sentences per direction (the same sentence ids in every direction), drawn with ``seed``."""
    seed: int = 42
    max_tokens: int = Field(256, ge=1)
    chat: bool = True
    stop: list[str] = Field(default_factory=lambda: ["\n"])
    prompt: str = DEFAULT_PROMPT
    """Placeholders: ``{source}``, ``{target}`` (English language names) and ``{text}``."""

    def planned_items(self) -> int | None:
        """``limit`` sentences in each direction."""
        return self.limit * len(self.directions) if self.limit is not None else None

    @field_validator("directions")
    @classmethod
    def _known_directions(cls, value: list[str]) -> list[str]:
        unknown = [d for d in value if d not in ALL_DIRECTIONS]
        if unknown:
            raise ValueError(f"unknown direction(s) {unknown}; known: {', '.join(ALL_DIRECTIONS)}")
        if not value:
            raise ValueError("at least one direction is needed")
        return value


_LABEL = re.compile(
    r"^\s*(?:\*\*)?(?:here(?:'s| is) (?:the |my )?(?:\w+ )?translation|(?:\w+ )?translation|translated text|"
    + "|".join(re.escape(name) for _, name, _ in LANGUAGES.values())
    + r")(?: translation)?\s*(?:\(.*?\))?\s*[:：]\s*(?:\*\*)?\s*",
    re.IGNORECASE,
)
_QUOTES = {'"': '"', "“": "”", "«": "»", "「": "」", "„": "“", "'": "'"}


def clean_translation(raw: str, source: str) -> str:
    """Strip what chat models wrap a translation in: a label like ``Translation:`` and enclosing quotes
    (only when the source itself is not quoted)."""
    text = raw.strip()
    for _ in range(2):
        text = _LABEL.sub("", text, count=1).strip()
    if len(text) >= 2 and _QUOTES.get(text[0]) == text[-1] and source.strip()[:1] not in _QUOTES:
        text = text[1:-1].strip()
    return text


@functools.lru_cache(maxsize=1)
def _chrf():  # sacrebleu imports are slowish; one scorer per process
    from sacrebleu.metrics import CHRF

    return CHRF(word_order=2)


def sentence_chrf(hypothesis: str, reference: str) -> float:
    return float(_chrf().sentence_score(hypothesis, [reference]).score)


def corpus_chrf(records: Sequence[ItemRecord], direction: str | None = None) -> float:
    """Corpus-level chrF++ over ``records`` (optionally one direction), from the stored outputs."""
    chosen = [r for r in records if direction is None or r.group == direction]
    if not chosen:
        raise ValueError(f"no records for direction {direction!r}")
    hyps = [r.output or "" for r in chosen]
    refs = [r.reference or "" for r in chosen]
    return float(_chrf().corpus_score(hyps, [refs]).score)


class FloresSuite:
    """FLORES-200 devtest chrF++ in 14 directions (English <-> 7 languages, 4 scripts beyond Latin)."""

    name: ClassVar[str] = "flores"
    request_kinds: ClassVar[frozenset[str]] = frozenset({"generate"})
    Settings: ClassVar[type[FloresSettings]] = FloresSettings
    metrics: ClassVar[tuple[MetricSpec, ...]] = (CHRF_METRIC, *DIRECTION_METRICS.values())

    def run(self, backend: Backend, settings: SuiteSettings, *, baseline: SuiteRun | None = None) -> SuiteRun:
        started = time.monotonic()
        settings = as_settings(settings, FloresSettings)
        columns = ["id"] + [column for column, _, _ in LANGUAGES.values()]
        rows, path = load_rows(settings.data_file, settings.data_sha256, required=columns)
        sentences = choose(rows, settings.limit, settings.seed)
        jobs: list[tuple[dict[str, object], str, str]] = []
        requests: list[GenerateRequest] = []
        for row in sentences:
            for direction in settings.directions:
                src, tgt = direction.split("-")
                text = row[LANGUAGES[src][0]]
                if not isinstance(text, str) or not text.strip():
                    raise UserError(
                        f"{path}: sentence id {row['id']} has an empty {LANGUAGES[src][0]}",
                        "restore the file",
                    )
                prompt = settings.prompt.format(
                    source=LANGUAGES[src][1], target=LANGUAGES[tgt][1], text=text.strip()
                )
                jobs.append((row, direction, prompt))
                requests.append(
                    GenerateRequest(
                        prompt=prompt,
                        max_tokens=settings.max_tokens,
                        stop=tuple(settings.stop),
                        chat=settings.chat,
                        temperature=0.0,
                        seed=settings.seed,
                    )
                )
        generations = backend.generate(requests)
        records = []
        for (row, direction, prompt), generation in zip(jobs, generations, strict=True):
            src, tgt = direction.split("-")
            source = str(row[LANGUAGES[src][0]])
            reference = str(row[LANGUAGES[tgt][0]]).strip()
            output = clean_translation(generation.text, source)
            score = sentence_chrf(output, reference)
            records.append(
                ItemRecord(
                    suite=self.name,
                    item_id=f"{row['id']}:{direction}",
                    prompt=prompt,
                    output=output,
                    reference=reference,
                    scores={"chrf": score, f"chrf_{direction}": score},
                    group=direction,
                    lang=LANGUAGES[tgt][2],
                    meta={
                        "sentence_id": row["id"],
                        "direction": direction,
                        "raw_output": generation.text,
                        "finish_reason": generation.finish_reason,
                        "tokens": generation.tokens,
                    },
                )
            )
        metrics = [CHRF_METRIC] + [DIRECTION_METRICS[d] for d in settings.directions]
        return finish_run(
            self.name, settings, {settings.data_file: settings.data_sha256}, metrics, records, started
        )
