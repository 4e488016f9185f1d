"""Torch forward passes behind the transformers backend's scoring: plain batches and shared prefixes.

The plan (which rows, which batches, which stems) comes from ``_scoring``; this module only turns
a plan into forward passes and scores. Plain batches are lm-eval's: right padding without a mask
(causal attention never lets a real token see the padding after it). Packed rows run with a 4D mask
(each position sees its trie ancestors) and explicit position ids; a stem runs once into a
transformers ``DynamicCache`` and each chunk of rows on top reads a copy of its own rows of it.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from harness.backends._scoring import PackedPass, PackedRow, Scored, TopKJob, TopKRows, depths, tree_mask

Results = dict[Scored, tuple[float, bool]]
T = TypeVar("T")


class TorchScorer:
    """Forward passes of ``model`` on ``device`` for scoring plans; fills a results dict."""

    def __init__(self, model: Any, device: str) -> None:
        self.model = model
        self.device = device
        params = inspect.signature(model.forward).parameters
        self.keep_arg = "logits_to_keep" in params
        self.cache_arg = "cache" if "cache" in params else "past_key_values"

    def can_share_prefixes(self) -> bool:
        """Only plain full-attention caches: sliding windows and linear-attention states cannot be masked."""
        from transformers import DynamicCache
        from transformers.cache_utils import DynamicLayer

        layers = DynamicCache(config=self.model.config).layers
        return bool(layers) and all(type(layer) is DynamicLayer for layer in layers)

    def plain(self, batch: Sequence[Scored], score: Callable[[Any, int], T]) -> list[T]:
        """One right-padded forward over ``batch``, keeping only the logits some row scores.

        ``score(logits, row)`` gets row ``row``'s logits at its ``n`` scored positions ([n, vocab]).
        """
        import torch

        lengths = [len(seq) - 1 for seq, _ in batch]
        width = max(lengths)
        keep = max(width - (length - n) for length, (_, n) in zip(lengths, batch, strict=True))
        ids = torch.zeros((len(batch), width), dtype=torch.long)
        for row, (seq, _) in enumerate(batch):
            ids[row, : len(seq) - 1] = torch.tensor(seq[:-1], dtype=torch.long)
        kwargs = {"logits_to_keep": keep} if self.keep_arg else {}
        with torch.inference_mode():
            logits = self.model(ids.to(self.device), use_cache=False, **kwargs).logits
            offset = width - logits.shape[1]
            out = []
            for row, (length, (_, n)) in enumerate(zip(lengths, batch, strict=True)):
                start = length - n - offset
                out.append(score(logits[row, start:start + n], row))
            return out

    def packed(self, unique: Sequence[Scored], plan: PackedPass, results: Results, *, greedy: bool = True) -> None:
        """The stems in one pass into a cache, then each chunk of packed rows on top of its rows' stems."""
        base = self.stems(plan.stems) if plan.stems else None
        for chunk in plan.chunks:
            logits, at = self.tree_pass(base, chunk)
            for b, (_, row) in enumerate(chunk):
                for i, positions in row.scored:
                    seq, n = unique[i]
                    picked = logits[[at[b][p] for p in positions]]
                    results[unique[i]] = target_score(picked, seq[-n:], greedy=greedy)

    def stems(self, stems: Sequence[tuple[int, ...]]) -> Level:
        """``stems`` right-padded in one pass into a cache (no mask: causal attention never lets a real
        token see the padding after it); the rows on top mask that padding out."""
        import torch
        from transformers import DynamicCache

        width = max(len(s) for s in stems)
        ids = torch.zeros((len(stems), width), dtype=torch.long)
        real = torch.zeros((len(stems), width), dtype=torch.bool)
        for k, stem in enumerate(stems):
            ids[k, : len(stem)] = torch.tensor(stem, dtype=torch.long)
            real[k, : len(stem)] = True
        cache = DynamicCache(config=self.model.config)
        kwargs: dict[str, Any] = {"logits_to_keep": 1} if self.keep_arg else {}
        with torch.inference_mode():
            self.model(ids.to(self.device), use_cache=True, **{self.cache_arg: cache}, **kwargs)
        return Level(cache, real)

    def tree_pass(self, parent: Level | None, chunk: Sequence[tuple[int, PackedRow]]) -> tuple[Any, list[dict[int, int]]]:
        """One forward over packed rows on top of rows of ``parent``'s cache (or from nothing).

        Returns the logits of the scored positions ([scored, vocab], rows in order) and per row where
        each scored position's logits are.
        """
        import torch

        inputs = tree_inputs(chunk, None if parent is None else parent.real, self.model.dtype)
        kwargs: dict[str, Any] = {"use_cache": False}
        if parent is not None:
            index = torch.tensor([s for s, _ in chunk]).to(self.device)
            kwargs = {"use_cache": True, self.cache_arg: cache_rows(parent.cache, index)}
        if self.keep_arg:
            kwargs["logits_to_keep"] = inputs.keep.to(self.device)
        with torch.inference_mode():
            logits = self.model(inputs.ids.to(self.device), attention_mask=inputs.mask.to(self.device),
                                position_ids=inputs.positions.to(self.device), **kwargs).logits
            if not self.keep_arg:
                logits = logits[inputs.keep.to(logits.device)]
        return logits, inputs.at


@dataclass(frozen=True)
class TreeInputs:
    """A chunk of packed rows as forward inputs: ids, 4D additive mask, position ids, scored positions."""

    ids: Any
    mask: Any
    positions: Any
    keep: Any
    """[rows, width] bool: the positions whose logits some member scores (``logits_to_keep``)."""
    at: list[dict[int, int]]
    """Per row, scored position -> its index among the kept logits (rows in order)."""


def tree_inputs(chunk: Sequence[tuple[int, PackedRow]], stem_real: Any, dtype: Any) -> TreeInputs:
    """Right-padded rows; a position sees its stem's real tokens (``stem_real[stem]``, None: no stem) and
    its own trie ancestors, at position id stem length + depth; a padding position sees only itself."""
    import numpy as np
    import torch

    width = max(len(r.tokens) for _, r in chunk)
    past = 0 if stem_real is None else int(stem_real.shape[1])
    ids = torch.zeros((len(chunk), width), dtype=torch.long)
    allowed = np.zeros((len(chunk), width, past + width), dtype=bool)
    positions = np.zeros((len(chunk), width), dtype=np.int64)
    keep = np.zeros((len(chunk), width), dtype=bool)
    for b, (stem, row) in enumerate(chunk):
        size = len(row.tokens)
        ids[b, :size] = torch.tensor(row.tokens, dtype=torch.long)
        allowed[b, np.arange(width), past + np.arange(width)] = True
        allowed[b, :size, past:past + size] = tree_mask(row.parents)
        offset = 0
        if stem_real is not None:
            real = stem_real[stem].numpy()
            allowed[b, :size, :past] = real
            offset = int(real.sum())
        positions[b, :size] = offset + depths(row.parents)
        keep[b, [p for _, scored in row.scored for p in scored]] = True
    at: list[dict[int, int]] = []
    flat = 0
    for b in range(len(chunk)):
        where = np.flatnonzero(keep[b])
        at.append({int(p): flat + k for k, p in enumerate(where)})
        flat += len(where)
    mask = torch.zeros(allowed.shape, dtype=dtype).masked_fill_(torch.from_numpy(~allowed), torch.finfo(dtype).min)
    return TreeInputs(ids, mask[:, None], torch.from_numpy(positions), torch.from_numpy(keep), at)


@dataclass(frozen=True)
class Level:
    """A key/value cache of right-padded rows and which of its positions hold real tokens ([rows, width], bool)."""

    cache: Any
    real: Any


def target_score(logits: Any, targets: Sequence[int], *, greedy: bool = True) -> tuple[float, bool]:
    """Summed log-probability of ``targets`` under ``logits`` (one row per target), and all-argmax.

    ``log_softmax`` then a gather: measured faster on CPU than ``logit - logsumexp`` (whose kernel
    also writes a full-size temporary). The argmax pass costs about a third as much again, so
    callers that ignore the flag (rolling windows) skip it with ``greedy=False`` and get False.
    """
    import torch

    rows = logits.log_softmax(dim=-1, dtype=torch.float32)  # a half-precision row is upcast in the kernel
    target = torch.tensor(targets, dtype=torch.long, device=rows.device)
    logprob = float(rows.gather(1, target[:, None]).sum().item())
    return logprob, greedy and bool((rows.argmax(dim=-1) == target).all().item())


def topk_rows(logits: Any, job: TopKJob) -> TopKRows:
    """The top-k table rows of one job from its scored logits ([n, vocab]): one log-softmax, then gathers
    and one ``topk``; only [n, k]-sized results leave torch."""
    import torch

    rows = logits.log_softmax(dim=-1, dtype=torch.float32)
    target = torch.tensor(job.tokens[-job.n:], dtype=torch.long, device=rows.device)
    top = rows.topk(job.k, dim=-1, sorted=True)
    probe = None
    if job.probe is not None:
        at = torch.from_numpy(np.asarray(job.probe, dtype=np.int64)).to(rows.device)
        probe = rows.gather(1, at).cpu().numpy()
    return TopKRows(
        vocab=int(rows.shape[-1]),
        target_logprobs=rows.gather(1, target[:, None])[:, 0].cpu().numpy(),
        top_ids=top.indices.cpu().numpy(),
        top_logprobs=top.values.cpu().numpy(),
        probe_logprobs=probe,
    )


def cache_rows(cache: Any, index: Any) -> Any:
    """A copy of ``cache`` with the batch rows ``index`` (repeats allowed); ``cache`` itself is untouched.

    ``DynamicLayer.update`` concatenates into new tensors, so the shallow copies never write into the
    tensors they share with ``cache``, and ``batch_select_indices`` gathers into new ones.
    """
    rows = copy.copy(cache)
    rows.layers = [copy.copy(layer) for layer in cache.layers]
    rows.batch_select_indices(index)
    return rows
