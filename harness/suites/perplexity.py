"""Perplexity suites: WikiText-2 raw test (the published protocol) and a C4 sample.

Protocol (the GPTQ / HF-guide one): documents joined with ``"\\n\\n"``, cut by the model's tokenizer into
non-overlapping windows of ``seq_len`` tokens, every token scored once. Each window is one item record
(``item_id`` ``w<index>``) carrying ``nll`` (minus the summed log-probability) and ``tokens``, so the
gate can bootstrap the perplexity ratio over windows.

With ``limit`` set, the items are the **first** ``limit`` windows (not a random draw: windows are defined
in tokens, and drawing them at random would need the whole corpus scored). Only a prefix of the text is
sent, long enough for ``limit + 1`` windows; the windows before the last are exactly those of the whole
text. ``shuffle`` (C4) permutes the documents with ``seed`` before joining, so the first windows are a
seeded sample of documents.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Sequence
from typing import ClassVar

from pydantic import Field

from harness.backends.base import Backend, RollingRequest, WindowScore
from harness.errors import UserError
from harness.records import ItemRecord, MetricSpec, SuiteRun
from harness.suites._common import finish_run, load_rows
from harness.suites.base import SuiteSettings, as_settings

WIKITEXT2_FILE = "wikitext2_raw_test.jsonl"
WIKITEXT2_SHA256 = "a26bd387e6f1d19e45ddbd7fe6fd5aef3f97f457863f0973e3327e68ac6daee8"
C4_FILE = "c4_validation_sample_2k.jsonl.gz"
C4_SHA256 = "0f43caedb1f59f28918212a511027a950a0a082d2d3d820be7048db0779ba3b2"

CHARS_PER_TOKEN_GUESS = 5.0
"""Generous chars-per-token for English BPE; a too-short prefix is simply grown and re-sent."""

PPL_METRIC = MetricSpec(
    name="ppl",
    kind="perplexity",
    higher_is_better=False,
    description="exp(sum nll / sum tokens) over non-overlapping token windows",
)


class CorpusSettings(SuiteSettings):
    data_file: str
    data_sha256: str
    text_field: str = "text"
    joiner: str = "\n\n"
    seq_len: int = Field(2048, ge=8)
    """Tokens per window."""
    limit: int | None = Field(None, ge=1)
    """Number of windows (the first ones); None: every window of the corpus."""
    seed: int = 42
    documents: int | None = Field(None, ge=1)
    """Use only this many documents (after shuffling, if on); None: all."""
    shuffle: bool = False
    """Permute documents with ``seed`` before joining (C4); WikiText-2 keeps file order."""


class WikiText2Settings(CorpusSettings):
    data_file: str = WIKITEXT2_FILE
    data_sha256: str = WIKITEXT2_SHA256


class C4Settings(CorpusSettings):
    data_file: str = C4_FILE
    data_sha256: str = C4_SHA256
    shuffle: bool = True


def corpus_text(rows: Sequence[dict[str, object]], settings: CorpusSettings, path: object) -> str:
    """The joined corpus the windows are cut from (a pure function of rows and settings)."""
    texts = []
    for number, row in enumerate(rows, start=1):
        value = row.get(settings.text_field)
        if not isinstance(value, str):
            raise UserError(
                f"{path}: row {number} has no string field '{settings.text_field}'",
                "restore the original file",
            )
        texts.append(value)
    if settings.shuffle:
        random.Random(settings.seed).shuffle(texts)
    if settings.documents is not None:
        texts = texts[: settings.documents]
    return settings.joiner.join(texts)


def score_windows(
    backend: Backend, text: str, seq_len: int, limit: int | None, *, like: SuiteRun | None = None
) -> tuple[list[WindowScore], int]:
    """The first ``limit`` windows of ``text`` (all when None) and how many characters were sent.

    The requests are the kld suite's top-k requests over the same windows, so the request cache answers
    either from the other: recording, a prefix grown until it holds ``limit + 1`` windows (the last one,
    perhaps cut short by the prefix's end, is dropped); ``like`` (the baseline's run), the baseline's prefix
    and its number of windows, when this backend cuts that many from it.
    """
    def windows_of(prefix: str, count: int | None) -> list[WindowScore]:
        request = RollingRequest(text=prefix, window=seq_len, windows=count)
        return list(backend.loglikelihood_rolling([request])[0].windows)

    stored = like.records if like is not None else []
    if stored and isinstance(sent := stored[0].meta.get("chars_sent"), int) and sent <= len(text):
        windows = windows_of(text[:sent], len(stored))
        if len(windows) == len(stored):
            return windows, sent
    if limit is None:
        return windows_of(text, None), len(text)
    chars = int((limit + 1) * seq_len * CHARS_PER_TOKEN_GUESS)
    while True:
        prefix = text if chars >= len(text) else text[:chars]
        windows = windows_of(prefix, limit + 1)
        if len(windows) > limit or prefix is text:
            return windows[:limit], len(prefix)
        chars = int(chars * 1.6)


def perplexity(records: Sequence[ItemRecord]) -> float:
    """Corpus perplexity of window records: exp(sum nll / sum tokens)."""
    tokens = sum(r.scores["tokens"] for r in records)
    if tokens <= 0:
        return float("nan")
    return math.exp(sum(r.scores["nll"] for r in records) / tokens)


class _CorpusSuite:
    name: ClassVar[str]
    request_kinds: ClassVar[frozenset[str]] = frozenset({"loglikelihood_rolling"})
    corpus_label: ClassVar[str]
    Settings: ClassVar[type[CorpusSettings]]
    metrics: ClassVar[tuple[MetricSpec, ...]] = (PPL_METRIC,)

    def run(self, backend: Backend, settings: SuiteSettings, *, baseline: SuiteRun | None = None) -> SuiteRun:
        started = time.monotonic()
        settings = as_settings(settings, self.Settings)
        rows, path = load_rows(settings.data_file, settings.data_sha256)
        text = corpus_text(rows, settings, path)
        windows, sent = score_windows(backend, text, settings.seq_len, settings.limit, like=baseline)
        records = []
        for index, window in enumerate(windows):
            if window.tokens <= 0:
                continue
            nll = -window.logprob
            records.append(
                ItemRecord(
                    suite=self.name,
                    item_id=f"w{index}",
                    prompt=f"{self.corpus_label} window {index} of {settings.seq_len} tokens",
                    scores={"nll": nll, "tokens": float(window.tokens), "ppl": math.exp(nll / window.tokens)},
                    meta={"seq_len": settings.seq_len, "chars_sent": sent, "corpus_chars": len(text)},
                )
            )
        return finish_run(
            self.name, settings, {settings.data_file: settings.data_sha256}, self.metrics, records, started
        )


class WikiText2Suite(_CorpusSuite):
    """WikiText-2 raw test perplexity, published protocol by default."""

    name: ClassVar[str] = "wikitext2"
    corpus_label: ClassVar[str] = "WikiText-2 raw test"
    Settings: ClassVar[type[CorpusSettings]] = WikiText2Settings


class C4Suite(_CorpusSuite):
    """Perplexity on a C4 (en) validation sample: a second corpus, different domain from Wikipedia."""

    name: ClassVar[str] = "c4"
    corpus_label: ClassVar[str] = "C4 validation sample"
    Settings: ClassVar[type[CorpusSettings]] = C4Settings
