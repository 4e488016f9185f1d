"""The mlx-lm backend: the same request kinds on Apple silicon (and, slowly, on Linux as ``mlx[cpu]``).

Many people who compress MoE models run them with mlx-lm, so a gate must be able to score the model
the way they run it. Tokenization and the lm-eval split (trailing context spaces join the continuation,
left cut to ``max_length + 1``, disjoint rolling windows) are the transformers backend's own functions
applied to the same Hugging Face tokenizer, so both backends score the same tokens. Generation runs
mlx-lm's ``generate_step`` with a greedy sampler and stops on EOS or a stop string.

``route_trace`` walks the decoder layer by layer (pre-norm attention, then the MoE block) and reads
each layer's router (``gate``) on the same hidden states the block sees; nothing is patched.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from harness.backends._scoring import (
    Scored,
    TopKJob,
    TopKRows,
    batches,
    longest_first_batches,
    unique_longest_first,
)
from harness.backends.base import (
    EngineInfo,
    GenerateRequest,
    Generation,
    RouteTrace,
)
from harness.backends.transformers import TransformersBackend, _resolve_max_length
from harness.errors import UserError


class MlxBackend:
    """An mlx-lm model behind the ``Backend`` protocol.

    Args:
        model: the mlx-lm ``Model`` (from ``mlx_lm.load``).
        tokenizer: mlx-lm's ``TokenizerWrapper`` (its Hugging Face tokenizer does the encoding).
        path: the checkpoint folder (fingerprint, config).
        max_length: context length; default from config.json like the transformers backend.
        batch_size: most rows per forward pass when scoring.
        add_bos_token: force BOS on or off for plain prompts (``None``: the tokenizer's default).
    """

    name = "mlx"

    # lm-eval's tokenization conventions, shared with the transformers backend (same HF tokenizer).
    prefix_token_id = TransformersBackend.prefix_token_id
    tok_encode = TransformersBackend.tok_encode
    encode_pair = TransformersBackend.encode_pair
    _prompt_ids = TransformersBackend._prompt_ids
    loglikelihood = TransformersBackend.loglikelihood
    loglikelihood_rolling = TransformersBackend.loglikelihood_rolling
    _rolling_window = TransformersBackend._rolling_window
    next_token_topk = TransformersBackend.next_token_topk
    _topk_sequences = TransformersBackend._topk_sequences

    def __init__(self, model: Any, tokenizer: Any, path: Path, *, max_length: int | None = None,
                 batch_size: int = 8, add_bos_token: bool | None = None) -> None:
        self.model = model
        self.wrapper = tokenizer
        self.tokenizer = getattr(tokenizer, "_tokenizer", tokenizer)
        self.path = Path(path)
        self.config = json.loads((self.path / "config.json").read_text())
        self.max_length = int(max_length or _resolve_max_length(_Attrs(self.config), self.tokenizer))
        self.batch_size = max(1, int(batch_size))
        self.max_batch_tokens = max(self.max_length + 1, 4096)
        self.add_bos_token = add_bos_token
        self._fingerprint: str | None = None

    def describe(self) -> EngineInfo:
        """mlx-lm and its version, the checkpoint, the context the backend scores with."""
        from importlib import metadata

        return EngineInfo(engine=self.name, version=metadata.version("mlx-lm"), model=str(self.path),
                          max_context=self.max_length)  # fmt: skip

    def fingerprint(self) -> str:
        if self._fingerprint is None:
            from harness.checkpoint.fingerprint import fingerprint_checkpoint

            extra = {"backend": self.name, "max_length": self.max_length, "add_bos_token": self.add_bos_token}
            self._fingerprint = fingerprint_checkpoint(self.path, extra)
        return self._fingerprint

    # ------------------------------------------------------------------ scoring
    def _score(self, seqs: Sequence[Scored], *, greedy: bool = True) -> list[tuple[float, bool]]:
        """Sum of log-probs of the last ``n`` tokens of each sequence and whether each is the argmax (False
        for all when ``greedy=False``, as the transformers backend's rolling windows ask)."""
        import mlx.core as mx

        unique = unique_longest_first(seqs)
        lengths = [len(seq) - 1 for seq, _ in unique]
        results: dict[Scored, tuple[float, bool]] = {}
        for batch in batches(lengths, batch_size=self.batch_size, max_batch_tokens=self.max_batch_tokens):
            width = max(lengths[i] for i in batch)
            rows = [list(unique[i][0][:-1]) + [0] * (width - lengths[i]) for i in batch]  # right padding: causal
            logits = self.model(mx.array(rows))
            for row, i in enumerate(batch):
                seq, n = unique[i]
                start = lengths[i] - n
                part = logits[row, start:start + n].astype(mx.float32)  # only the scored rows get a softmax
                part = part - mx.logsumexp(part, axis=-1, keepdims=True)
                target = mx.array(seq[-n:])
                lp = mx.take_along_axis(part, target[:, None], axis=-1).sum().item()
                is_greedy = greedy and bool(mx.all(mx.argmax(part, axis=-1) == target).item())
                results[unique[i]] = (float(lp), is_greedy)
        return [results[s] for s in seqs]

    def _topk_rows(self, jobs: Sequence[TopKJob]) -> list[TopKRows]:
        """Top-k table rows per job (the transformers backend's batches; log-softmax and top-k in mlx)."""
        import mlx.core as mx

        rows: dict[int, TopKRows] = {}
        for batch in longest_first_batches(jobs, batch_size=self.batch_size, max_batch_tokens=self.max_batch_tokens):
            width = max(len(jobs[i].tokens) - 1 for i in batch)
            ids = [list(jobs[i].tokens[:-1]) + [0] * (width + 1 - len(jobs[i].tokens)) for i in batch]
            logits = self.model(mx.array(ids))
            for row, i in enumerate(batch):
                job = jobs[i]
                start = len(job.tokens) - 1 - job.n
                part = logits[row, start:start + job.n].astype(mx.float32)
                lp = part - mx.logsumexp(part, axis=-1, keepdims=True)
                top = mx.argpartition(-lp, kth=job.k - 1, axis=-1)[:, : job.k]
                values = mx.take_along_axis(lp, top, axis=-1)
                order = mx.argsort(-values, axis=-1)
                target = mx.array(job.tokens[-job.n:])[:, None]
                probe = None if job.probe is None else mx.take_along_axis(lp, mx.array(job.probe.astype(np.int32)), axis=-1)
                rows[i] = TopKRows(
                    vocab=int(lp.shape[-1]),
                    target_logprobs=np.array(mx.take_along_axis(lp, target, axis=-1)[:, 0]),
                    top_ids=np.array(mx.take_along_axis(top, order, axis=-1)),
                    top_logprobs=np.array(mx.take_along_axis(values, order, axis=-1)),
                    probe_logprobs=None if probe is None else np.array(probe),
                )
        return [rows[i] for i in range(len(jobs))]

    def _output_width(self) -> int:
        return int(self.config.get("vocab_size") or len(self.tokenizer))

    # ------------------------------------------------------------------ generation
    def _eos_ids(self) -> set[int]:
        ids = set(getattr(self.wrapper, "eos_token_ids", None) or ())
        if self.tokenizer.eos_token_id is not None:
            ids.add(int(self.tokenizer.eos_token_id))
        eos = self.config.get("eos_token_id")
        ids.update([eos] if isinstance(eos, int) else (eos or []))
        return ids

    def generate(self, requests: Sequence[GenerateRequest]) -> list[Generation]:
        unique = list(dict.fromkeys(requests))
        outs = {req: self._generate_one(req) for req in unique}
        return [outs[r] for r in requests]

    def _generate_one(self, req: GenerateRequest) -> Generation:
        import mlx.core as mx
        from mlx_lm.generate import generate_step
        from mlx_lm.sample_utils import make_sampler

        ids = self._prompt_ids(req)[-max(1, self.max_length - req.max_tokens):]
        if req.temperature > 0:
            mx.random.seed(req.seed)
        sampler = make_sampler(temp=req.temperature)
        eos, stops = self._eos_ids(), [s for s in req.stop if s]
        new: list[int] = []
        reason = "length"
        for token, _ in generate_step(mx.array(ids), self.model, max_tokens=req.max_tokens, sampler=sampler):
            tok = int(token.item() if hasattr(token, "item") else token)
            if tok in eos:
                reason = "stop"
                break
            new.append(tok)
            if stops and any(s in self.tokenizer.decode(new, skip_special_tokens=True) for s in stops):
                break
        text = self.tokenizer.decode(new, skip_special_tokens=True)
        cuts = [text.find(s) for s in stops if s in text]
        if cuts:
            text, reason = text[: min(cuts)], "stop"
        return Generation(text=text, tokens=len(new), finish_reason=reason)

    # ------------------------------------------------------------------ routing
    def route_trace(self, texts: Sequence[str]) -> list[RouteTrace]:
        """Per MoE layer, the top-k experts and router weights of every token (layer-by-layer forward)."""
        import mlx.core as mx
        from mlx_lm.models.base import create_attention_mask

        inner = getattr(self.model, "model", None)
        layers = getattr(inner, "layers", None)
        if inner is None or layers is None or not hasattr(inner, "embed_tokens"):
            raise UserError(f"mlx model {type(self.model).__name__} has no model.layers/embed_tokens", "route traces need a decoder LM")
        top_k = int(self.config.get("num_experts_per_tok") or 0)
        n_experts = int(self.config.get("num_experts") or self.config.get("num_local_experts") or 0)
        normalize = bool(self.config.get("norm_topk_prob", self.config.get("model_type") == "mixtral"))
        if not top_k or not n_experts:
            raise UserError(f"model {self.config.get('model_type')} is dense: no expert routing to trace", "use a MoE checkpoint")
        traces = []
        for text in texts:
            ids = self.tok_encode(text)[: self.max_length]
            h = inner.embed_tokens(mx.array([ids]))
            mask = create_attention_mask(h, None)
            found: list[tuple[int, list[list[int]], list[list[float]]]] = []
            for index, layer in enumerate(layers):
                block = getattr(layer, "mlp", None) or getattr(layer, "block_sparse_moe", None)
                if block is None or not hasattr(layer, "post_attention_layernorm"):
                    raise UserError(f"mlx layer {type(layer).__name__} is not a pre-norm decoder layer", "route traces support Qwen-MoE/Mixtral-style layers")
                mid = h + layer.self_attn(layer.input_layernorm(h), mask, None)
                x = layer.post_attention_layernorm(mid)
                gate = getattr(block, "gate", None)
                if gate is not None and not isinstance(gate, mx.array):
                    probs = mx.softmax(gate(x)[0].astype(mx.float32), axis=-1)
                    order = mx.argsort(-probs, axis=-1)[:, :top_k]
                    weights = mx.take_along_axis(probs, order, axis=-1)
                    if normalize:
                        weights = weights / weights.sum(axis=-1, keepdims=True)
                    found.append((index, order.tolist(), weights.tolist()))
                h = mid + block(x)
            traces.append(RouteTrace(
                layers=tuple(i for i, _, _ in found),
                expert_ids=tuple(tuple(tuple(int(e) for e in row) for row in ids_) for _, ids_, _ in found),
                weights=tuple(tuple(tuple(float(w) for w in row) for row in ws) for _, _, ws in found),
                num_experts=n_experts,
                tokens=tuple(self.tokenizer.convert_ids_to_tokens(ids)),
            ))
        return traces


class _Attrs:
    """config.json as attributes, for ``_resolve_max_length``."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.__dict__.update(config)


def open_mlx(model: str, **options: Any) -> MlxBackend:
    """Registry factory for ``kind="mlx"``: ``model`` is a local folder with config.json and safetensors."""
    path = Path(model)
    if not (path / "config.json").is_file():
        raise UserError(f"{model} is not a model folder with config.json", "give a local Hugging Face folder (safetensors) to the mlx backend")
    try:
        from mlx_lm import load
    except ImportError:
        raise UserError("mlx-lm is not installed", "pip install 'moegate[mlx]'") from None
    config = json.loads((path / "config.json").read_text())
    overrides: dict[str, Any] = {}
    rope = config.get("rope_parameters") or {}
    if "rope_theta" not in config and "rope_theta" in rope:  # mlx-lm ignores transformers 5's rope_parameters
        overrides["rope_theta"] = rope["rope_theta"]
    try:
        loaded, tokenizer = load(str(path), model_config=overrides)[:2]
    except (ValueError, KeyError, FileNotFoundError) as err:
        raise UserError(f"mlx-lm cannot load {model}: {err}", "check the folder (mlx-lm supports this model family?)") from None
    return MlxBackend(loaded, tokenizer, path, **options)
