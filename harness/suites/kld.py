"""The ``kld`` suite: teacher-forced logit divergence of the candidate from the stored baseline.

Recording the baseline, it stores the baseline's per-position top-k next-token tables (``harness.divergence``'s
binary form) as artifacts of its run, one per corpus, hashed in the manifest like the records:

- ``text.topk``: WikiText-2 windows, cut exactly as the ``wikitext2`` suite cuts them (same ``seq_len``, the
  first ``limit`` windows of the same text prefix);
- ``c4.topk`` (corpus ``c4``, opt-in): the ``c4`` suite's windows of its C4 sample (its seeded document
  shuffle, ``seq_len``, the first ``c4_windows`` windows): a second domain, where calibration-set overfitting shows;
- ``generations.topk``: the baseline's own greedy generations for the collapse prompts (the generated text is
  each record's ``output``, its tokens the table's targets): where merged experts drift.

Gating a candidate, it scores the candidate on the same tokens (one ``next_token_topk`` request per text,
probed at the baseline's top-k ids where the backend can) and computes KL(P_base ‖ P_cand) per token with
``harness.divergence.compare``: tail-bucket estimate for a local candidate, both-sides-top-k for a served one.

Per item (a window ``text-w<i>``, ``c4-w<i>`` or a generation ``gen-<prompt id>``): ``scores`` ``tokens``, ``kl_mean``,
``kl_median``, ``kl_p90``, ``kl_p99``, ``kl_p999``, ``kl_max``, ``same_top``, ``dp_rms``, ``nll`` and
``ppl_ratio``; ``per_token["kl"]``; ``meta["worst"]``, the item's worst tokens in context with both models'
top tokens. The baseline's own records compare it with itself (KL 0, same top 1), so ``drop`` budgets pair.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import Field

from harness.backends.base import Backend, GenerateRequest, TopKRequest
from harness.divergence import DEFAULT_TOP_K, TokenDivergence, TokenIds, TopKTable, compare, concat_tables
from harness.divergence.topk import decode_topk, encode_topk
from harness.errors import UserError
from harness.records import Artifacts, ItemRecord, MetricSpec, SuiteRun
from harness.resources import file_sha256
from harness.suites._common import finish_run, load_rows
from harness.suites.base import SuiteSettings, as_settings
from harness.suites.collapse import PROMPTS_FILE, _prompts_path, load_prompts
from harness.suites.perplexity import (
    C4_FILE,
    CHARS_PER_TOKEN_GUESS,
    WIKITEXT2_FILE,
    WIKITEXT2_SHA256,
    C4Settings,
    CorpusSettings,
    corpus_text,
)

CANDIDATE_K = 8
"""The probed candidate's own top-k width (its top token and the report's top 5 need no more)."""
TEXT_ARTIFACT = "text.topk"
GEN_ARTIFACT = "generations.topk"
RE_RECORD = "re-record the baseline with this gate file (moegate baseline record)"
Item = tuple[str, str, str | None, ItemRecord | None]
"""item_id, prompt, output (a generation), and the baseline's record of it (None while recording the baseline)."""


def _token(name: str, description: str, statistic: Literal["mean", "rms"] | float = "mean",
           higher_is_better: bool = False, scale: float = 1.0) -> MetricSpec:
    return MetricSpec(name=name, kind="token", higher_is_better=higher_is_better, scale=scale, description=description,
                      statistic=statistic, values=None if isinstance(statistic, str) else "kl")


METRICS = (
    _token("kl_mean", "mean KL(P_base || P_cand) per token, nats (llama.cpp's Mean KLD)"),
    _token("kl_median", "median per-token KL", 0.5),
    _token("kl_p90", "90th percentile of per-token KL", 0.90),
    _token("kl_p99", "99th percentile of per-token KL", 0.99),
    _token("kl_p999", "99.9th percentile of per-token KL", 0.999),
    _token("kl_max", "largest per-token KL", 1.0),
    _token("same_top", "share of tokens whose most likely next token is the baseline's, in points", higher_is_better=True,
           scale=100.0),
    _token("dp_rms", "RMS of the change in the actual next token's probability", "rms"),
    MetricSpec(name="ppl_ratio", kind="perplexity", higher_is_better=False,
               description="perplexity on the kld tokens; a ratio budget bounds candidate/baseline (llama.cpp's PPL ratio)"),
)


class KldSettings(CorpusSettings):
    """The wikitext2 suite's window settings (``limit``: the first windows) plus the generation corpus."""

    data_file: str = WIKITEXT2_FILE
    data_sha256: str = WIKITEXT2_SHA256
    top_k: int = Field(DEFAULT_TOP_K, ge=1, le=4096)
    """Width of the baseline's stored top-k (``harness.divergence.DEFAULT_TOP_K``: the measured default)."""
    corpora: list[Literal["text", "c4", "generations"]] = Field(default_factory=lambda: ["text", "generations"],
                                                                 min_length=1)
    """``text``: ``data_file``'s windows (WikiText-2 by default); ``c4``: the c4 suite's; ``generations``: the
    baseline's own greedy generations for ``prompts_file``."""
    c4_windows: int | None = Field(None, ge=1)
    """Windows of the c4 corpus (the first ones, ``seq_len`` tokens each); None: as many as ``limit``."""
    prompts_file: str = PROMPTS_FILE
    """Collapse prompts the baseline generates for (the generation corpus)."""
    generation_ids: list[str] | None = None
    """Prompt ids of the generation corpus, in order; None: every prompt."""
    max_tokens: int = Field(200, ge=1)
    chat: bool = True
    worst_tokens: int = Field(5, ge=0, le=50)
    """Worst tokens per item kept with their context and both models' top tokens (for the report)."""

    def planned_items(self) -> int | None:
        """Unknown from the settings alone: an empty generation is no item."""
        return None


class KldSuite:
    """KL divergence of next-token distributions from the stored baseline, on text and on its own generations."""

    name: ClassVar[str] = "kld"
    request_kinds: ClassVar[frozenset[str]] = frozenset({"generate", "next_token_topk"})
    Settings: ClassVar[type[KldSettings]] = KldSettings
    metrics: ClassVar[tuple[MetricSpec, ...]] = METRICS

    def run(self, backend: Backend, settings: SuiteSettings, *, baseline: SuiteRun | None = None) -> SuiteRun:
        started = time.monotonic()
        settings = as_settings(settings, KldSettings)
        topk = getattr(backend, "next_token_topk", None)
        if topk is None:
            raise UserError(f"the {backend.name} backend cannot return next-token top-k tables (suite kld)",
                            "run the kld suite with the transformers, mlx or openai (vLLM) backend")
        decode = _decoder(backend)
        records: list[ItemRecord] = []
        artifacts: dict[str, bytes] = {}
        data: dict[str, str] = {}
        for group, corpus, label in _text_corpora(settings):
            rows, path = load_rows(corpus.data_file, corpus.data_sha256)
            text = corpus_text(rows, corpus, path)
            data[corpus.data_file] = corpus.data_sha256
            artifact = f"{group}.topk"
            if baseline is None:
                table, chars = _baseline_windows(topk, text, corpus, settings.top_k)
                artifacts[artifact] = encode_topk(table)
                items = [(f"{group}-w{i}", f"{label} window {i} of {corpus.seq_len} tokens", None, None)
                         for i in range(len(table.window_sizes))]
                records += _records(self.name, items, table, table, settings, decode, {"chars_sent": chars}, group)
            else:
                base = _stored(baseline, artifact, settings)
                stored = _text_records(baseline, group)
                chars = int(stored[0].meta["chars_sent"])
                probe = TokenIds(base.top_ids) if base.positions else None
                (cand,) = topk([TopKRequest(text[:chars], k=_own_k(backend, settings), window=corpus.seq_len,
                                            windows=len(base.window_sizes), probe=probe)])
                items = [(r.item_id, r.prompt, None, r) for r in stored]
                records += _records(self.name, items, base, cand, settings, decode, {"chars_sent": chars}, group)
        if "generations" in settings.corpora:
            path = _prompts_path(settings.prompts_file)
            data[path.name] = file_sha256(path)
            if baseline is None:
                table, items = _baseline_generations(backend, topk, path, settings)
                if items:
                    artifacts[GEN_ARTIFACT] = encode_topk(table)
                    records += _records(self.name, items, table, table, settings, decode, {}, "generation")
            else:
                base_items = [r for r in baseline.records if r.group == "generation"]
                if base_items:
                    base = _stored(baseline, GEN_ARTIFACT, settings)
                    if len(base.window_sizes) != len(base_items):
                        raise UserError(f"the baseline's {GEN_ARTIFACT} holds {len(base.window_sizes)} generations, its "
                                        f"records {len(base_items)}", RE_RECORD)
                    requests = [TopKRequest(r.output or "", k=_own_k(backend, settings), prompt=r.prompt, chat=settings.chat,
                                            probe=TokenIds(part.top_ids))
                                for r, part in zip(base_items, _windows(base), strict=True)]
                    cand = concat_tables(list(topk(requests)))
                    items = [(r.item_id, r.prompt, r.output, r) for r in base_items]
                    records += _records(self.name, items, base, cand, settings, decode, {}, "generation")
        run = finish_run(self.name, settings, data, self.metrics, records, started)
        run.artifacts = Artifacts(artifacts)
        return run


def _text_corpora(settings: KldSettings) -> list[tuple[str, CorpusSettings, str]]:
    """(group, window settings, label) of each text corpus asked for, cut as its perplexity suite cuts it."""
    out: list[tuple[str, CorpusSettings, str]] = []
    if "text" in settings.corpora:
        label = "WikiText-2 raw test" if settings.data_file == WIKITEXT2_FILE else settings.data_file
        out.append(("text", settings, label))
    if "c4" in settings.corpora:
        c4 = C4Settings(seq_len=settings.seq_len, limit=settings.c4_windows or settings.limit, seed=settings.seed)
        out.append(("c4", c4, "C4 validation sample" if c4.data_file == C4_FILE else c4.data_file))
    return out


def _own_k(backend: Backend, settings: KldSettings) -> int:
    """The candidate's own top-k width: a backend that returns log-probs at the baseline's ids (``topk_probe``,
    the local ones) needs only its top few (same-top, the report's top 5); a served one needs the full k."""
    return min(CANDIDATE_K, settings.top_k) if getattr(backend, "topk_probe", True) else settings.top_k


def _decoder(backend: Backend) -> Callable[[int], str] | None:
    """Token id -> text through the backend's tokenizer, when it has one (local backends)."""
    tokenizer = getattr(backend, "tokenizer", None)
    decode = getattr(tokenizer, "decode", None)
    return None if decode is None else (lambda i: str(decode([int(i)])))


def _baseline_windows(topk: Callable[[Sequence[TopKRequest]], list[TopKTable]], text: str,
                      settings: CorpusSettings, k: int) -> tuple[TopKTable, int]:
    """The baseline's table over the perplexity suite's windows and the characters of text sent.

    As ``perplexity.score_windows``: a prefix long enough for ``limit + 1`` windows (grown until it is), so
    the first ``limit`` windows are exactly those of the whole text; the extra one is dropped.
    """
    limit = settings.limit
    if limit is None:
        (table,) = topk([TopKRequest(text, k=k, window=settings.seq_len)])
        return table, len(text)
    chars = int((limit + 1) * settings.seq_len * CHARS_PER_TOKEN_GUESS)
    while True:
        prefix = text if chars >= len(text) else text[:chars]
        (table,) = topk([TopKRequest(prefix, k=k, window=settings.seq_len, windows=limit + 1)])
        if len(table.window_sizes) > limit or prefix is text:
            return table.select_windows(0, limit), len(prefix)
        chars = int(chars * 1.6)


def _baseline_generations(backend: Backend, topk: Callable[[Sequence[TopKRequest]], list[TopKTable]], path: Any,
                          settings: KldSettings) -> tuple[TopKTable, list[Item]]:
    """The baseline's greedy generations for the prompts (as the collapse suite asks for them) and its table on them."""
    prompts = load_prompts(path)
    if settings.generation_ids is not None:
        by_id = {p.id: p for p in prompts}
        unknown = [i for i in settings.generation_ids if i not in by_id]
        if unknown:
            raise UserError(f"unknown collapse prompt id(s) {', '.join(unknown)} in kld generation_ids", f"use ids from {path}")
        prompts = [by_id[i] for i in settings.generation_ids]
    outs = backend.generate([GenerateRequest(p.prompt, max_tokens=settings.max_tokens, chat=settings.chat, seed=settings.seed)
                             for p in prompts])
    kept = [(p, g) for p, g in zip(prompts, outs, strict=True) if g.text]
    if not kept:
        return TopKTable(vocab=1, window_sizes=(), targets=[], target_logprobs=[], top_ids=np.zeros((0, 1)),
                         top_logprobs=np.zeros((0, 1)), rest_mass=[]), []
    tables = topk([TopKRequest(g.text, k=settings.top_k, prompt=p.prompt, chat=settings.chat) for p, g in kept])
    empty = [p.id for (p, _), t in zip(kept, tables, strict=True) if t.positions == 0]
    if empty:
        raise UserError(f"the baseline's generation for {empty[0]} encodes to no tokens", "drop it from generation_ids")
    items: list[Item] = [(f"gen-{p.id}", p.prompt, g.text, None) for p, g in kept]
    return concat_tables(list(tables)), items


def _text_records(baseline: SuiteRun, group: str) -> list[ItemRecord]:
    found = [r for r in baseline.records if r.group == group]
    if not found or "chars_sent" not in found[0].meta:
        raise UserError(f"the baseline's kld run has no {group} windows", RE_RECORD)
    return found


def _stored(baseline: SuiteRun, name: str, settings: KldSettings) -> TopKTable:
    """A stored table, checked against the suite's settings."""
    if name not in baseline.artifacts:
        raise UserError(f"the baseline's kld run has no stored top-k tables ({name})", RE_RECORD)
    try:
        table = decode_topk(baseline.artifacts[name])
    except ValueError as exc:
        raise UserError(f"the baseline's kld artifact {name} cannot be read ({exc})", RE_RECORD) from None
    if table.k != settings.top_k:
        raise UserError(f"the baseline's stored top-k is {table.k} wide, the kld suite's settings ask for top_k = "
                        f"{settings.top_k}", f"set top_k = {table.k} in the gate file, or {RE_RECORD}")
    return table


def _windows(table: TopKTable) -> list[TopKTable]:
    return [table.select_windows(i, i + 1) for i in range(len(table.window_sizes))]


def _sig(x: float) -> float:
    return float(f"{x:.6g}")


def _records(suite: str, items: Sequence[Item], base: TopKTable, cand: TopKTable,
             settings: KldSettings, decode: Callable[[int], str] | None, meta: dict[str, Any],
             group: str) -> list[ItemRecord]:
    """One record per window of ``base`` (= per item), comparing ``cand`` with it token by token."""
    if len(items) != len(base.window_sizes):
        raise UserError(f"{len(items)} kld items for {len(base.window_sizes)} stored windows", RE_RECORD)
    div = compare(base, cand)
    out = []
    for (item_id, prompt, output, stored), rows in zip(items, base.window_slices(), strict=True):
        kl = div.kl[rows]
        n = int(kl.size)
        q = np.quantile(kl, [0.5, 0.9, 0.99, 0.999]) if n else np.zeros(4)
        dp = np.exp(div.cand_logprob[rows]) - np.exp(div.base_logprob[rows])
        nll_b, nll_c = -float(div.base_logprob[rows].sum()), -float(div.cand_logprob[rows].sum())
        texts = list(stored.meta["tokens"]) if stored is not None and stored.meta.get("tokens") else None
        if texts is None and stored is None and decode is not None:
            texts = [decode(int(t)) for t in base.targets[rows]]
        scores = {
            "tokens": float(n), "kl_mean": float(kl.mean()) if n else 0.0, "kl_median": float(q[0]), "kl_p90": float(q[1]),
            "kl_p99": float(q[2]), "kl_p999": float(q[3]), "kl_max": float(kl.max()) if n else 0.0,
            "same_top": float(div.same_top[rows].mean()) if n else 1.0,
            "dp_rms": math.sqrt(float((dp * dp).mean())) if n else 0.0,
            "nll": nll_c, "ppl_ratio": math.exp((nll_c - nll_b) / n) if n else 1.0,
        }
        item_meta = {**meta, "corpus": group, "method": div.method}
        if texts is not None and stored is None:
            item_meta["tokens"] = texts
        item_meta["worst"] = _worst(div, base, cand, rows, texts, decode, settings.worst_tokens)
        out.append(ItemRecord(suite=suite, item_id=item_id, prompt=prompt, group=group, output=output, scores=scores,
                              per_token={"kl": [_sig(float(x)) for x in kl]}, meta=item_meta))
    return out


def _worst(div: TokenDivergence, base: TopKTable, cand: TopKTable, rows: slice, texts: list[str] | None,
           decode: Callable[[int], str] | None, count: int) -> list[dict[str, Any]]:
    """The ``count`` positions of largest KL in ``rows``: the token, what preceded it, both models' top 5."""
    kl = div.kl[rows]
    if count == 0 or not kl.size or float(kl.max()) <= 0:
        return []
    name = decode or (lambda i: f"#{i}")
    out = []
    for j in np.argsort(-kl, kind="stable")[:count]:
        at = rows.start + int(j)
        context = "".join(texts[max(0, j - 24):j]) if texts else ""
        base_top = [[name(int(t)), _sig(math.exp(float(lp)))] for t, lp in zip(base.top_ids[at, :5], base.top_logprobs[at, :5], strict=True)]
        cand_top = [[name(int(t)), _sig(math.exp(float(lp)))] for t, lp in zip(cand.top_ids[at, :5], cand.top_logprobs[at, :5], strict=True)]
        out.append({"position": int(j), "kl": _sig(float(kl[j])), "token": texts[j] if texts else name(int(base.targets[at])),
                    "context": context[-160:], "base_top": base_top, "cand_top": cand_top})
    return out
