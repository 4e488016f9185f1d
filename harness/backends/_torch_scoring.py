"""Torch forward passes behind the transformers backend's scoring: plain batches and shared prefixes.

The plan (which rows, which batches, which prefixes) comes from ``_scoring``; this module only turns
a plan into forward passes and scores. Plain batches are lm-eval's: right padding without a mask
(causal attention never lets a real token see the padding after it). Shared stems and prefixes run
once into a transformers ``DynamicCache``; each pass on top reads a copy of its own rows of it.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from harness.backends._scoring import Scored, StemPass, TopKJob, TopKRows

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

    def shared(self, unique: Sequence[Scored], plan: StemPass, results: Results) -> None:
        """The stems in one pass into a cache; each prefix pass on top of it; each chunk of rows on top of that.

        A row attends to its own stem's and prefix's real tokens only (the mask hides the padding a shorter
        one left in the cache) and its positions continue from their length.
        """
        base = self.extend(None, (), plan.stems, keep=1)[1] if plan.stems else None
        for shared in plan.passes:
            level = self.extend(base, shared.stem_of, shared.segments, keep=1)[1]
            for chunk in shared.chunks:
                rows = [shared.groups[pos].rows[r] for pos, r in chunk]
                logits = self.extend(level, [pos for pos, _ in chunk], rows, keep=0)[0]
                for k, (pos, r) in enumerate(chunk):
                    for i, row in shared.groups[pos].members:
                        if row == r:
                            seq, n = unique[i]
                            results[unique[i]] = target_score(logits[k, :n], seq[-n:])

    def extend(self, parent: Level | None, index: Sequence[int], segments: Sequence[tuple[int, ...]], *,
               keep: int) -> tuple[Any, Level]:
        """Run ``segments`` (right-padded) on top of rows ``index`` of ``parent``'s cache, or from nothing.

        Returns the logits of the last ``keep`` positions (0: all) and the extended cache, a copy:
        ``parent`` stays as it was for the next pass that reads it.
        """
        import torch
        from transformers import DynamicCache

        width = max(len(s) for s in segments)
        ids = torch.zeros((len(segments), width), dtype=torch.long)
        real = torch.zeros((len(segments), width), dtype=torch.long)
        for k, segment in enumerate(segments):
            ids[k, : len(segment)] = torch.tensor(segment, dtype=torch.long)
            real[k, : len(segment)] = 1
        kwargs: dict[str, Any] = {"logits_to_keep": keep} if self.keep_arg and keep else {}
        with torch.inference_mode():
            if parent is None:  # right padding without a mask, as in plain batches
                cache = DynamicCache(config=self.model.config)
                logits = self.model(ids.to(self.device), use_cache=True, **{self.cache_arg: cache}, **kwargs).logits
                return logits, Level(cache, real)
            at = torch.tensor(list(index), dtype=torch.long)
            past = parent.real[at]
            cache = cache_rows(parent.cache, at.to(self.device))
            mask = torch.cat([past, torch.ones_like(real)], dim=1)
            positions = past.sum(dim=1, keepdim=True) + torch.arange(width)
            logits = self.model(
                ids.to(self.device), attention_mask=mask.to(self.device), position_ids=positions.to(self.device),
                use_cache=True, **{self.cache_arg: cache}, **kwargs,
            ).logits
            return logits, Level(cache, torch.cat([past, real], dim=1))


@dataclass(frozen=True)
class Level:
    """A key/value cache of right-padded rows and which of its positions hold real tokens ([rows, width], 0/1)."""

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
