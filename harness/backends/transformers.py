"""The transformers/torch backend: lm-eval's scoring conventions on any ``AutoModelForCausalLM``.

Scoring follows lm-eval's ``HFLM`` exactly (trailing context spaces move into the continuation, the
sequence is cut from the left to ``max_length + 1`` tokens, right padding without a mask, sum of the
continuation's log-probabilities and an exact-greedy flag), so numbers agree with published lm-eval
runs. Requests are deduplicated and sorted by length; batch composition never changes a result beyond
float noise because every row is scored independently of its padding.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from harness.backends._generation import GreedyDecoder, StopStrings, finish, generate_with_model, plain_greedy
from harness.backends._scoring import (
    PACK_WIDTH,
    SHARE_MIN_SAVED_TOKENS,
    STEM_MIN_TOKENS,
    Scored,
    TopKJob,
    TopKRows,
    assemble_tables,
    batches,
    longest_first_batches,
    packed_passes,
    packed_plan,
    rolling_windows,
    topk_jobs,
    unique_longest_first,
)
from harness.backends._torch_scoring import TorchScorer, target_score, topk_rows
from harness.backends.base import (
    EngineInfo,
    GenerateRequest,
    Generation,
    Loglikelihood,
    LoglikelihoodRequest,
    RollingRequest,
    RollingResult,
    RouteTrace,
    TopKRequest,
    WindowScore,
)
from harness.checkpoint import ModelSource, load_model_and_tokenizer, resolve_model
from harness.divergence.topk import TopKTable
from harness.errors import UserError

DEFAULT_MAX_LENGTH = 2048
ROLLING_WINDOW_CAP = 2048
"""Default rolling window: the model's max length, capped so a window's logits stay a few hundred MB."""


class TransformersBackend:
    """A loaded causal LM behind the ``Backend`` protocol.

    Args:
        model: a causal LM (eval mode).
        tokenizer: its tokenizer.
        device: where inputs go (defaults to the model's device).
        max_length: context length; default from the config (``max_position_embeddings``...) like lm-eval.
        batch_size: most rows per forward pass.
        max_batch_tokens: most padded tokens per forward pass (keeps memory flat for long windows).
        add_bos_token: force BOS on or off for plain prompts (``None``: the tokenizer's default).
        share_prefixes: pack sequences as prefix tries, so a context shared by several continuations runs
            once per row and a start shared by many contexts once into a key/value cache (results agree
            with plain batches to float noise).
        source: where the checkpoint came from (for the fingerprint).
        settings: extra settings that change outputs (recorded in the fingerprint).
    """

    name = "transformers"
    topk_scores_rolling = True
    """A text-form top-k table's target log-probs are this backend's rolling window scores (the same windows in
    the same batches; the sums differ by float rounding only), so the request cache answers a rolling request
    from it (``CachedBackend``): the wikitext2 and kld suites share one forward per window."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        device: str | None = None,
        max_length: int | None = None,
        batch_size: int = 8,
        max_batch_tokens: int = 4096,
        add_bos_token: bool | None = None,
        share_prefixes: bool = True,
        source: ModelSource | None = None,
        settings: dict[str, Any] | None = None,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.device = str(device or next(model.parameters()).device)
        self.max_length = int(max_length or _resolve_max_length(model.config, tokenizer))
        self.batch_size = max(1, int(batch_size))
        self.max_batch_tokens = max(self.max_length + 1, int(max_batch_tokens))
        self.add_bos_token = add_bos_token
        self.share_prefixes = share_prefixes
        self.share_min_saved_tokens = SHARE_MIN_SAVED_TOKENS
        self.share_min_stem_tokens = STEM_MIN_TOKENS
        self.pack_width = PACK_WIDTH
        self._scorer: TorchScorer | None = None
        self._can_share = False
        self.source = source
        self.settings = dict(settings or {})
        self._fingerprint: str | None = None

    @classmethod
    def from_pretrained(
        cls,
        model: str,
        *,
        dtype: str = "auto",
        device: str = "auto",
        trust_pickle: bool = False,
        gguf_file: str | None = None,
        **options: Any,
    ) -> TransformersBackend:
        """Validate and load a local HF directory, a GGUF file or a hub id (see ``resolve_model``)."""
        source = resolve_model(model, trust_pickle=trust_pickle, gguf_file=gguf_file)
        loaded, tokenizer, resolved = load_model_and_tokenizer(source, dtype=dtype, device=device)
        if source.kind == "hub":
            source = _with_hub_snapshot(source)
        # dtype, max_length and add_bos_token enter the fingerprint in fingerprint(); batch sizes change
        # only float noise, so they stay out of it and runs with different batch sizes share the cache.
        return cls(loaded, tokenizer, device=resolved, source=source, **options)

    # ------------------------------------------------------------------ identity
    def describe(self) -> EngineInfo:
        """transformers and its version, the checkpoint, the context the backend scores with."""
        import transformers

        where = str(self.source.path) if self.source is not None and self.source.path is not None else ""
        model = where or (self.source.spec if self.source is not None else "")
        return EngineInfo(engine=self.name, version=transformers.__version__, model=model, max_context=self.max_length)

    def fingerprint(self) -> str:
        """Hash of the checkpoint (sampled bytes, headers, tokenizer) plus dtype and scoring settings."""
        if self._fingerprint is None:
            from harness.checkpoint.fingerprint import fingerprint_checkpoint, fingerprint_module

            extra = {
                "backend": self.name,
                "dtype": str(self.model.dtype).removeprefix("torch."),
                "max_length": self.max_length,
                "add_bos_token": self.add_bos_token,
                **self.settings,
            }
            if self.source is not None and self.source.path is not None and self.source.path.exists():
                self._fingerprint = fingerprint_checkpoint(self.source.path, extra)
            elif self.source is not None:
                self._fingerprint = fingerprint_module(self.model, self.tokenizer, {**extra, "hub_id": self.source.spec})
            else:
                self._fingerprint = fingerprint_module(self.model, self.tokenizer, extra)
        return self._fingerprint

    # ------------------------------------------------------------------ tokenization
    @property
    def prefix_token_id(self) -> int:
        tok = self.tokenizer
        return tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id

    def tok_encode(self, text: str, add_special_tokens: bool | None = None) -> list[int]:
        """lm-eval's ``tok_encode``: the tokenizer's default specials, none when the text starts with BOS."""
        kwargs: dict[str, Any] = {}
        if add_special_tokens is not None:
            kwargs["add_special_tokens"] = add_special_tokens
        elif self.add_bos_token is not None:
            kwargs["add_special_tokens"] = self.add_bos_token
        if add_special_tokens is None and text.startswith(self.tokenizer.decode(self.prefix_token_id)):
            kwargs["add_special_tokens"] = False
        return list(self.tokenizer.encode(text, **kwargs))

    def encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """lm-eval's split: trailing context spaces join the continuation; empty context gets the prefix token."""
        if context == "":
            cont = self.tok_encode(continuation, add_special_tokens=False)
            if cont and cont[0] == self.prefix_token_id:
                return cont[:1], cont[1:]
            return [self.prefix_token_id], cont
        n_spaces = len(context) - len(context.rstrip())
        if n_spaces:
            continuation = context[-n_spaces:] + continuation
            context = context[:-n_spaces]
        whole = self.tok_encode(context + continuation)
        ctx = self.tok_encode(context)
        if not ctx:  # an all-space context (lm-eval asserts here): condition on the prefix token instead
            return [self.prefix_token_id], whole
        return ctx, whole[len(ctx):]

    # ------------------------------------------------------------------ scoring
    def loglikelihood(self, requests: Sequence[LoglikelihoodRequest]) -> list[Loglikelihood]:
        seqs: list[Scored] = []
        for req in requests:
            ctx, cont = self.encode_pair(req.context, req.continuation)
            if not cont:
                raise UserError(f"continuation {req.continuation!r} encodes to no tokens", "give a non-empty continuation")
            if len(cont) > self.max_length:
                raise UserError(f"continuation is {len(cont)} tokens, more than max_length {self.max_length}", "shorten it")
            seqs.append((tuple((ctx + cont)[-(self.max_length + 1):]), len(cont)))
        scored = self._score(seqs)
        return [Loglikelihood(logprob=lp, is_greedy=greedy) for lp, greedy in scored]

    def loglikelihood_rolling(self, requests: Sequence[RollingRequest]) -> list[RollingResult]:
        seqs: list[Scored] = []
        owners: list[int] = []
        for index, req in enumerate(requests):
            for chunk in rolling_windows(self.tok_encode(req.text), self._rolling_window(req.window))[: req.windows]:
                seqs.append((chunk, len(chunk) - 1))  # a window's first token has no context and is not scored
                owners.append(index)
        scored = self._score(seqs, greedy=False)  # a window's greedy flag is not reported
        windows: list[list[WindowScore]] = [[] for _ in requests]
        for owner, (_seq, n), (lp, _) in zip(owners, seqs, scored, strict=True):
            windows[owner].append(WindowScore(logprob=lp, tokens=n))
        return [RollingResult(windows=tuple(w)) for w in windows]

    def _rolling_window(self, window: int | None) -> int:
        size = min(window or ROLLING_WINDOW_CAP, self.max_length)
        if size < 2:
            raise UserError(f"rolling window {size} is too small", "use a window of at least 2 tokens")
        return size

    def next_token_topk(self, requests: Sequence[TopKRequest]) -> list[TopKTable]:
        """Teacher-forced top-k tables: the rolling windows (or prompt + continuation), one forward pass
        per window in the same length-sorted batches as rolling log-likelihood."""
        width = self._output_width()
        plans = [topk_jobs(self._topk_sequences(req), req, width) for req in requests]
        rows = self._topk_rows([job for plan in plans for job in plan])
        return assemble_tables(width, requests, plans, rows)

    def _topk_sequences(self, req: TopKRequest) -> list[Scored]:
        if req.prompt is None:
            chunks = rolling_windows(self.tok_encode(req.text), self._rolling_window(req.window))
            return [(chunk, len(chunk) - 1) for chunk in chunks[: req.windows]]
        context = self._prompt_ids(GenerateRequest(req.prompt, chat=req.chat)) or [self.prefix_token_id]
        cont = self.tok_encode(req.text, add_special_tokens=False)
        if len(cont) > self.max_length:
            raise UserError(f"continuation is {len(cont)} tokens, more than max_length {self.max_length}", "shorten it")
        return [(tuple((context + cont)[-(self.max_length + 1):]), len(cont))] if cont else []

    def _topk_rows(self, jobs: Sequence[TopKJob]) -> list[TopKRows]:
        scorer = self._torch_scorer()
        rows: list[TopKRows | None] = [None] * len(jobs)
        for batch in longest_first_batches(jobs, batch_size=self.batch_size, max_batch_tokens=self.max_batch_tokens):
            scored = [(jobs[i].tokens, jobs[i].n) for i in batch]
            found = scorer.plain(scored, lambda logits, r, batch=batch: topk_rows(logits, jobs[batch[r]]))
            for i, row in zip(batch, found, strict=True):
                rows[i] = row
        return [row for row in rows if row is not None]

    def _output_width(self) -> int:
        return int(self.model.get_output_embeddings().weight.shape[0])

    def _torch_scorer(self) -> TorchScorer:
        if self._scorer is None:
            self._scorer = TorchScorer(self.model, self.device)
            self._can_share = self._scorer.can_share_prefixes()
        return self._scorer

    def _score(self, seqs: Sequence[Scored], *, greedy: bool = True) -> list[tuple[float, bool]]:
        """Sum of log-probs of the last ``n`` tokens of each sequence, and whether each is the argmax.

        With ``greedy=False`` the argmax is skipped and every flag is False.

        Sequences are packed as prefix tries into rows, so a context shared by several continuations
        runs once per row, and a start many contexts share (few-shot examples) runs once beneath them
        (see ``_scoring``); with ``share_prefixes`` off (or a cache that cannot be masked) they go
        through plain right-padded batches, longest first, as in lm-eval.
        """
        scorer = self._torch_scorer()
        unique = unique_longest_first(seqs)
        limits = {"batch_size": self.batch_size, "max_batch_tokens": self.max_batch_tokens}
        results: dict[Scored, tuple[float, bool]] = {}
        if self.share_prefixes and self._can_share:
            plan = packed_plan(unique, width=self.pack_width, min_saved_tokens=self.share_min_saved_tokens,
                               min_stem_tokens=self.share_min_stem_tokens)
            for packed in packed_passes(plan, **limits):
                scorer.packed(unique, packed, results, greedy=greedy)
            return [results[s] for s in seqs]
        for batch in batches([len(seq) - 1 for seq, _ in unique], **limits):
            rows = [unique[i] for i in batch]
            scores = scorer.plain(rows, lambda logits, r, rows=rows: target_score(logits, rows[r][0][-rows[r][1]:], greedy=greedy))
            results.update(zip(rows, scores, strict=True))
        return [results[s] for s in seqs]

    # ------------------------------------------------------------------ routing
    def route_trace(self, texts: Sequence[str]) -> list[RouteTrace]:
        """Per MoE layer, the top-k experts and weights of every token (right-padded batches, pads dropped)."""
        import torch

        from harness.checkpoint.layout import moe_layout_from_config
        from harness.profiler.hooks import trace_routes

        layout = moe_layout_from_config(self.model.config.to_dict())
        if layout is None:
            raise UserError(f"model {self.model.config.model_type} is dense: no expert routing to trace", "use a MoE checkpoint")
        encoded = [self.tok_encode(text)[: self.max_length] or [self._eos_ids()[0]] for text in texts]
        order = sorted(range(len(texts)), key=lambda i: -len(encoded[i]))
        traces: dict[int, RouteTrace] = {}
        for batch in batches([len(encoded[i]) for i in order], batch_size=self.batch_size, max_batch_tokens=self.max_batch_tokens):
            rows = [order[b] for b in batch]
            width = len(encoded[rows[0]])
            ids, mask = torch.zeros((len(rows), width), dtype=torch.long), torch.zeros((len(rows), width), dtype=torch.long)
            for row, i in enumerate(rows):
                ids[row, : len(encoded[i])], mask[row, : len(encoded[i])] = torch.tensor(encoded[i]), 1
            captured = trace_routes(self.model, ids, attention_mask=mask)
            for row, i in enumerate(rows):
                cut = slice(row * width, row * width + len(encoded[i]))  # tokens are flattened row-major
                traces[i] = RouteTrace(
                    layers=tuple(int(layer) for layer, _, _ in captured),
                    expert_ids=tuple(tuple(tuple(r) for r in e[cut].tolist()) for _, e, _ in captured),
                    weights=tuple(tuple(tuple(r) for r in w[cut].float().tolist()) for _, _, w in captured),
                    num_experts=layout.routed_experts,
                    tokens=tuple(self.tokenizer.convert_ids_to_tokens(encoded[i])),
                )
        return [traces[i] for i in range(len(texts))]

    # ------------------------------------------------------------------ generation
    def _prompt_ids(self, req: GenerateRequest) -> list[int]:
        if not req.chat:
            return self.tok_encode(req.prompt)
        if not getattr(self.tokenizer, "chat_template", None):
            raise UserError("chat=True but the tokenizer has no chat template", "use chat=false for this model")
        text = self.tokenizer.apply_chat_template(
            [{"role": "user", "content": req.prompt}], tokenize=False, add_generation_prompt=True
        )
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def _eos_ids(self) -> list[int]:
        eos = getattr(self.model.generation_config, "eos_token_id", None)
        if eos is None:
            eos = self.tokenizer.eos_token_id
        ids = [eos] if isinstance(eos, int) else list(eos or [])
        if self.tokenizer.eos_token_id is not None and self.tokenizer.eos_token_id not in ids:
            ids.append(self.tokenizer.eos_token_id)
        return ids

    def generate(self, requests: Sequence[GenerateRequest]) -> list[Generation]:
        """Greedy requests with the same stop strings and budget run as one group through the decoding loop
        (``_generation``), in batches of ``batch_size`` sorted by length; a sampled one runs alone, so its seed
        alone decides its output."""
        prompts = [self._prompt_ids(r) for r in requests]
        results: list[Generation | None] = [None] * len(requests)
        groups: dict[tuple[Any, ...], list[int]] = {}
        for i, req in enumerate(requests):
            key = ("sample", i) if req.temperature > 0 else ("greedy", req.stop, req.max_tokens)
            groups.setdefault(key, []).append(i)
        eos_ids = self._eos_ids()
        for members in groups.values():
            req = requests[members[0]]
            budget = max(1, self.max_length - req.max_tokens)
            members.sort(key=lambda i: (-len(prompts[i][-budget:]), prompts[i][-budget:]))
            news = self._generate_group([prompts[i][-budget:] for i in members], req, eos_ids)
            for i, new in zip(members, news, strict=True):
                results[i] = finish(self.tokenizer, new, req, eos_ids)
        return [r for r in results if r is not None]

    def _generate_group(self, prompts: list[list[int]], req: GenerateRequest, eos_ids: list[int]) -> list[list[int]]:
        pad = self.tokenizer.pad_token_id
        pad = pad if pad is not None else (eos_ids[0] if eos_ids else 0)
        chunks = [prompts[start:start + self.batch_size] for start in range(0, len(prompts), self.batch_size)]
        if req.temperature > 0 or not self._greedy_loop:
            return [new for chunk in chunks
                    for new in generate_with_model(self.model, self.tokenizer, self.device, chunk, req, eos_ids, pad)]
        decoder = GreedyDecoder(self.model, self.device)
        prefix = decoder.prefix(prompts) if self.share_prefixes else None
        stop = StopStrings(self.tokenizer, req.stop)
        return [new for chunk in chunks
                for new in decoder.decode(chunk, max_new_tokens=req.max_tokens, eos_ids=eos_ids, pad=pad, stop=stop, prefix=prefix)]

    @functools.cached_property
    def _greedy_loop(self) -> bool:
        return plain_greedy(self.model)


def _with_hub_snapshot(source: ModelSource) -> ModelSource:
    """Point a hub model at its downloaded snapshot folder so it is fingerprinted like a local one."""
    import dataclasses

    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(source.spec, "config.json")
    return dataclasses.replace(source, path=Path(found).parent) if isinstance(found, str) else source


def _resolve_max_length(config: Any, tokenizer: Any) -> int:
    """lm-eval's order: text_config, then n_positions / max_position_embeddings / n_ctx, then the tokenizer."""
    cfg = getattr(config, "text_config", None) or config
    for attr in ("n_positions", "max_position_embeddings", "n_ctx"):
        value = getattr(cfg, attr, None)
        if value is not None:
            return int(value)
    limit = getattr(tokenizer, "model_max_length", None)
    return int(limit) if limit is not None and limit < 10**9 else DEFAULT_MAX_LENGTH


def open_transformers(model: str, **options: Any) -> TransformersBackend:
    """Registry factory for ``kind="transformers"`` (see ``TransformersBackend.from_pretrained``)."""
    return TransformersBackend.from_pretrained(model, **options)
