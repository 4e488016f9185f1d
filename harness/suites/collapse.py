"""The collapse suite: moegate's own prompts, each with checks a silently broken model fails.

A plain collapse test (non-empty, long enough, a keyword, no loop) passed a pruned Qwen3.5-397B 15/15
while it put a Chinese character in a Spanish translation, denied that monads exist and answered a
river-crossing puzzle in a fifth of the baseline's length. So each prompt here (``suites/
collapse_prompts.toml``) carries: minimum length in characters and words, required keywords (all-of and
any-of), forbidden phrases, no denial of a real concept, the expected language and its scripts (one
foreign-script letter fails), and a cap on repeated 3-grams. The script, language, denial and loop
checks reuse :mod:`harness.detectors`.

Per item: ``checks`` {name: passed}, score ``pass`` (1 when every check passed), ``lang``,
``meta["min_len"]`` (for the ``too_short`` detector) and ``meta["failed"]`` with the evidence.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, ClassVar

import regex
from pydantic import BaseModel, ConfigDict, Field, ValidationError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from harness.backends.base import Backend, GenerateRequest
from harness.detectors import DetectorSettings
from harness.detectors.denial import denial_hits
from harness.detectors.diversity import distinct_n
from harness.detectors.language import wrong_language
from harness.detectors.scripts import script_mixing
from harness.detectors.text import repetition, tokens, visible_length
from harness.errors import UserError
from harness.records import ItemRecord, MetricSpec, SuiteRun
from harness.resources import file_sha256, suites_dir
from harness.suites._common import choose, finish_run
from harness.suites.base import ChosenItems, SuiteSettings, as_settings

PROMPTS_FILE = "collapse_prompts.toml"
PASS_METRIC = MetricSpec(
    name="pass",
    kind="binary",
    higher_is_better=True,
    scale=100.0,
    description="share of prompts passing every check",
)
_WORDY = regex.compile(r"[\p{L}\p{N}]")
CHECKS = ("min_len", "min_words", "required_all", "required_any", "forbidden", "no_denial", "script", "language",
          "repetition")
"""Every check ``check_output`` may record."""


class CollapsePrompt(BaseModel):
    """One prompt and its checks (a ``[[prompt]]`` table of the prompts file)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]*$")
    category: str
    prompt: str = Field(min_length=1)
    lang: str = "en"
    """Expected output language (ISO 639-1)."""
    min_chars: int = Field(40, ge=0)
    """Minimum visible (non-whitespace) characters."""
    min_words: int | None = Field(None, ge=1)
    require_all: list[str] = Field(default_factory=list)
    """Every entry must occur (case-insensitive); ``"a|b"`` accepts either."""
    require_any: list[str] = Field(default_factory=list)
    """At least one entry must occur."""
    forbid: list[str] = Field(default_factory=list)
    no_denial: bool = False
    """Fail on any denial phrase ("does not exist", "no such", "I'm not aware of")."""
    check_language: bool = True
    max_repeat: float = Field(0.4, gt=0.0, le=1.0)
    """Highest share of repeated word 3-grams (1 - distinct-3)."""


class CollapseSettings(ChosenItems):
    prompts_file: str = PROMPTS_FILE
    """File in ``suites/`` (or an absolute path) with the ``[[prompt]]`` tables; ``item_ids`` are prompt ids."""
    limit: int | None = Field(None, ge=1)
    seed: int = 42
    max_tokens: int = Field(200, ge=1)
    chat: bool = True
    detectors: DetectorSettings = Field(default_factory=DetectorSettings)
    """Thresholds of the script, language and repetition checks (a gate file's ``[detectors]``)."""


def _prompts_path(name: str) -> Path:
    path = Path(name)
    return path if path.is_absolute() else suites_dir() / name


def _line_of(text: str, index: int, prompt_id: object) -> int:
    """Line number of the ``index``-th ``[[prompt]]`` table (or of its id) for error messages."""
    lines = text.splitlines()
    if isinstance(prompt_id, str):
        for number, line in enumerate(lines, start=1):
            if regex.match(rf'\s*id\s*=\s*"{regex.escape(prompt_id)}"', line):
                return number
    headers = [n for n, line in enumerate(lines, start=1) if line.strip() == "[[prompt]]"]
    return headers[index] if index < len(headers) else 1


def load_prompts(path: Path) -> list[CollapsePrompt]:
    """The prompts of a collapse prompts file; any problem is a ``UserError`` naming file and line."""
    if not path.is_file():
        raise UserError(
            f"collapse prompts file {path} is missing", "restore it or set prompts_file in the settings"
        )
    text = path.read_text(encoding="utf-8")
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"{path}: not valid TOML ({exc})", "fix the file's syntax") from exc
    tables = document.get("prompt")
    if not isinstance(tables, list) or not tables:
        raise UserError(f"{path}: no [[prompt]] tables", "add prompts as [[prompt]] tables")
    prompts: list[CollapsePrompt] = []
    seen: set[str] = set()
    for index, table in enumerate(tables):
        try:
            prompt = CollapsePrompt.model_validate(table)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            line = _line_of(text, index, table.get("id") if isinstance(table, dict) else None)
            raise UserError(
                f"{path}:{line}: prompt #{index + 1} field '{where}': {first['msg']}", "fix the prompt"
            ) from exc
        if prompt.id in seen:
            line = _line_of(text, index, prompt.id)
            raise UserError(
                f"{path}:{line}: duplicate prompt id '{prompt.id}'", "give every prompt a unique id"
            )
        seen.add(prompt.id)
        prompts.append(prompt)
    return prompts


def _contains(folded: str, entry: str) -> bool:
    return any(alt.casefold() in folded for alt in entry.split("|") if alt)


def words(text: str) -> int:
    """Word count (CJK characters count one each), the unit of ``min_words``."""
    return sum(1 for tok in tokens(text) if _WORDY.search(tok))


def repeated_ngram_ratio(text: str, n: int = 3) -> float:
    """Share of word ``n``-grams that repeat an earlier one (0 for texts under 20 words)."""
    toks = [t for t in tokens(text) if _WORDY.search(t)]
    if len(toks) < 20:
        return 0.0
    return 1.0 - distinct_n(toks, n)


def check_output(
    prompt: CollapsePrompt, output: str, detectors: DetectorSettings | None = None
) -> tuple[dict[str, bool], dict[str, Any]]:
    """Run every check of ``prompt`` on ``output``: ``({check: passed}, {failed check: evidence})``."""
    d = detectors or DetectorSettings()
    folded = output.casefold()
    checks: dict[str, bool] = {}
    evidence: dict[str, Any] = {}

    def record(name: str, passed: bool, detail: Any = None) -> None:
        checks[name] = passed
        if not passed:
            evidence[name] = detail

    chars = visible_length(output)
    record("min_len", chars >= prompt.min_chars, {"chars": chars, "min_chars": prompt.min_chars})
    if prompt.min_words is not None:
        count = words(output)
        record("min_words", count >= prompt.min_words, {"words": count, "min_words": prompt.min_words})
    if prompt.require_all:
        missing = [e for e in prompt.require_all if not _contains(folded, e)]
        record("required_all", not missing, {"missing": missing})
    if prompt.require_any:
        record(
            "required_any",
            any(_contains(folded, e) for e in prompt.require_any),
            {"any_of": prompt.require_any},
        )
    if prompt.forbid:
        present = [p for p in prompt.forbid if p.casefold() in folded]
        record("forbidden", not present, {"present": present})
    if prompt.no_denial:
        hits = denial_hits(output)
        record("no_denial", not hits, {"phrases": [h.phrase for h in hits][:5]})
    mixed = script_mixing(output, prompt.lang, prompt=prompt.prompt, greek_max_run=d.greek_max_run)
    record("script", mixed is None, mixed)
    if prompt.check_language:
        wrong = wrong_language(output, prompt.lang, min_letters=d.language_min_letters,
                               min_confidence=d.language_min_confidence)
        record("language", wrong is None, wrong)
    loop = repetition(
        output, min_repeats=d.repetition_min_repeats, min_cover=d.repetition_min_cover,
        any_repeats=d.repetition_any_repeats, ngram_n=d.repetition_ngram_n, ngram_max=d.repetition_ngram_max,
        compress_min_bytes=d.repetition_compress_min_bytes, compress_below=d.repetition_compress_below,
    )
    ratio = repeated_ngram_ratio(output)
    record(
        "repetition",
        loop is None and ratio <= prompt.max_repeat,
        {"loop": loop, "repeated_3gram_ratio": round(ratio, 4), "max": prompt.max_repeat},
    )
    return checks, evidence


class CollapseSuite:
    """Collapse prompts across coding, math, puzzles, knowledge, writing, instructions and translation."""

    name: ClassVar[str] = "collapse"
    request_kinds: ClassVar[frozenset[str]] = frozenset({"generate"})
    Settings: ClassVar[type[CollapseSettings]] = CollapseSettings
    metrics: ClassVar[tuple[MetricSpec, ...]] = (PASS_METRIC,)
    checks: ClassVar[tuple[str, ...]] = CHECKS

    def run(self, backend: Backend, settings: SuiteSettings, *, baseline: SuiteRun | None = None) -> SuiteRun:
        started = time.monotonic()
        settings = as_settings(settings, CollapseSettings)
        path = _prompts_path(settings.prompts_file)
        prompts = load_prompts(path)
        if settings.item_ids is not None:
            by_id = {p.id: p for p in prompts}
            unknown = [i for i in settings.item_ids if i not in by_id]
            if unknown:
                raise UserError(
                    f"unknown collapse prompt id(s) {', '.join(unknown)} in settings", f"use ids from {path}"
                )
            prompts = [by_id[i] for i in settings.item_ids]
        else:
            prompts = choose(prompts, settings.limit, settings.seed)
        requests = [
            GenerateRequest(
                prompt=p.prompt, max_tokens=settings.max_tokens, chat=settings.chat, seed=settings.seed
            )
            for p in prompts
        ]
        generations = backend.generate(requests)
        records = []
        for prompt, generation in zip(prompts, generations, strict=True):
            checks, evidence = check_output(prompt, generation.text, settings.detectors)
            records.append(
                ItemRecord(
                    suite=self.name,
                    item_id=prompt.id,
                    prompt=prompt.prompt,
                    output=generation.text,
                    scores={"pass": float(all(checks.values()))},
                    group=prompt.category,
                    lang=prompt.lang,
                    checks=checks,
                    meta={
                        "min_len": prompt.min_chars,
                        "min_words": prompt.min_words,
                        "failed": evidence,
                        "finish_reason": generation.finish_reason,
                        "tokens": generation.tokens,
                    },
                )
            )
        return finish_run(self.name, settings, {path.name: file_sha256(path)}, self.metrics, records, started)
