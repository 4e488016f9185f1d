"""The forward-pass floor of a suite: the bare model's forward passes over the unique tokens its requests need.

``Recorder`` sits between a gate run's request cache and its backend and keeps what the backend was
asked (every miss, so every unique request of a cold run) and, for generation, how many tokens each
answer took. ``Floor`` turns that into token lists with the backend's own tokenizer (lm-eval's
conventions), before any clock starts; ``Floor.run`` then times plain transformers calls on the bare
model, no moegate code around them:

* scoring (loglikelihood): the longest start all unique contexts share, once, when it is at least
  ``STEM_MIN`` tokens (MMLU-Pro's 5-shot examples; ARC shares only "Question:"); each unique context's
  rest once on top of it; each unique continuation, minus its last token, once on top of its context
  (a one-token continuation, an option letter, needs no pass: its logit is the context's last one).
  Batches of ``batch_size`` rows, longest first, right-padded with a mask over the padding, key/value
  caches copied per row; only the logits a score needs are computed (``logits_to_keep``).
* generation: each unique prompt prefilled once (batches of ``batch_size`` among the prompts of one backend
  call, one suite's, longest first, left-padded like ``generate``), then one decode step per generated token and row, a row leaving the batch once it has
  as many tokens as the gate's answer had: no step for a finished row, none for padding.

No log-softmax, tokenization, cache or record keeping: the floor is the forward passes alone.
"""

from __future__ import annotations

import copy
import inspect
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

STEM_MIN = 64
"""A start shared by every context runs once only when at least this long (as the gate's planner)."""


class Recorder:
    """A backend wrapper that keeps the requests it computes (behind the request cache: the misses)."""

    def __init__(self, backend: Any) -> None:
        self.backend = backend
        self.scored: list[Any] = []
        self.generated: list[list[tuple[Any, Any]]] = []
        """Per ``generate`` call, its requests and answers."""

    def __getattr__(self, attr: str) -> Any:
        if attr == "backend":
            raise AttributeError(attr)
        return getattr(self.backend, attr)

    def loglikelihood(self, requests: Sequence[Any]) -> list[Any]:
        self.scored.extend(requests)
        return self.backend.loglikelihood(requests)

    def generate(self, requests: Sequence[Any]) -> list[Any]:
        out = self.backend.generate(requests)
        self.generated.append(list(zip(requests, out, strict=True)))
        return out


@dataclass
class Floor:
    """Token lists of a suite's unique work: contexts with their continuations, prompts with their token counts."""

    contexts: dict[tuple[int, ...], set[tuple[int, ...]]] = field(default_factory=dict)
    prompts: dict[tuple[int, ...], int] = field(default_factory=dict)
    """Each unique prompt and the tokens its answer took."""
    calls: list[list[tuple[int, ...]]] = field(default_factory=list)
    """The unique prompts of each ``generate`` call, in batches by call (a prompt in the first call that had it)."""

    @classmethod
    def from_recorder(cls, recorder: Recorder) -> Floor:
        """Tokenize what ``recorder`` saw with its backend's tokenizer (the gate's own token lists)."""
        backend = recorder.backend
        floor = cls()
        for req in recorder.scored:
            ctx, cont = backend.encode_pair(req.context, req.continuation)
            floor.contexts.setdefault(tuple(ctx), set()).add(tuple(cont))
        for call in recorder.generated:
            fresh = []
            for req, out in call:
                prompt = tuple(backend._prompt_ids(req)[-max(1, backend.max_length - req.max_tokens):])
                if prompt not in floor.prompts:
                    fresh.append(prompt)
                floor.prompts[prompt] = max(floor.prompts.get(prompt, 0), int(out.tokens))
            floor.calls.append(list(dict.fromkeys(fresh)))
        return floor

    def positions(self) -> int:
        """Token positions the floor runs (stem once, contexts' rests, continuations, prompts, decode steps)."""
        stem = len(self.stem())
        scoring = stem + sum(len(c) - stem for c in self.contexts) + sum(
            len(k) - 1 for conts in self.contexts.values() for k in conts)
        return scoring + sum(len(p) for p in self.prompts) + sum(max(0, n - 1) for n in self.prompts.values())

    def stem(self) -> tuple[int, ...]:
        """The start every context shares, short of each context's last token (empty below ``STEM_MIN``)."""
        keys = [c[:-1] for c in self.contexts]
        if len(keys) < 2:
            return ()
        first, n = keys[0], min(len(k) for k in keys)
        for key in keys[1:]:
            n = next((i for i in range(n) if key[i] != first[i]), n)
        return first[:n] if n >= STEM_MIN else ()

    def run(self, model: Any, batch_size: int) -> float:
        """Seconds of the floor's forward passes on ``model``."""
        import torch

        with torch.inference_mode():
            start = time.perf_counter()
            if self.contexts:
                self._score(model, batch_size)
            if self.prompts:
                self._generate(model, batch_size)
            return time.perf_counter() - start

    def _score(self, model: Any, batch_size: int) -> None:
        import torch

        stem = self.stem()
        base = _extend(model, None, None, [stem], keep=1)[1:] if stem else None
        contexts = sorted(self.contexts, key=lambda c: -len(c))
        for lo in range(0, len(contexts), batch_size):
            chosen = contexts[lo:lo + batch_size]
            parent = None if base is None else (_rows(base[0], [0] * len(chosen)), base[1].expand(len(chosen), -1))
            cache, mask = _extend(model, *(parent or (None, None)), [c[len(stem):] for c in chosen], keep=1)[1:]
            rows = [(k, cont[:-1]) for k, c in enumerate(chosen) for cont in sorted(self.contexts[c]) if len(cont) > 1]
            for at in range(0, len(rows), batch_size * 4):  # continuations are short: more of them ride in a pass
                part = rows[at:at + batch_size * 4]
                index = [k for k, _ in part]
                _extend(model, _rows(cache, index), mask[torch.tensor(index)], [s for _, s in part], keep=0)

    def _generate(self, model: Any, batch_size: int) -> None:
        import torch

        groups = [sorted(call, key=lambda p: -len(p)) for call in self.calls]
        for chosen in (call[lo:lo + batch_size] for call in groups for lo in range(0, len(call), batch_size)):
            width = max(len(p) for p in chosen)
            ids = torch.zeros((len(chosen), width), dtype=torch.long)
            mask = torch.zeros((len(chosen), width), dtype=torch.long)
            for k, p in enumerate(chosen):
                ids[k, width - len(p):], mask[k, width - len(p):] = torch.tensor(p), 1
            cache = _new_cache(model)
            logits = model(ids, attention_mask=mask, position_ids=(mask.cumsum(1) - 1).clamp(min=0),
                           **_cache_kwarg(model, cache), use_cache=True, logits_to_keep=1).logits
            left = torch.tensor([self.prompts[p] - 1 for p in chosen])  # tokens still to produce after the first
            while True:
                live = (left > 0).nonzero()[:, 0]
                if len(live) == 0:
                    break
                if len(live) < len(left):
                    cache.batch_select_indices(live)
                    mask, logits, left = mask[live], logits[live], left[live]
                token = logits[:, -1].argmax(-1, keepdim=True)
                mask = torch.cat([mask, torch.ones_like(token)], dim=1)
                logits = model(token, attention_mask=mask, position_ids=mask.sum(1, keepdim=True) - 1,
                               **_cache_kwarg(model, cache), use_cache=True).logits
                left = left - 1


def _new_cache(model: Any) -> Any:
    from transformers import DynamicCache

    return DynamicCache(config=model.config)


def _cache_kwarg(model: Any, cache: Any) -> dict[str, Any]:
    """transformers 5 names the forward's cache argument ``cache``; earlier versions ``past_key_values``."""
    return {"cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values": cache}


def _rows(cache: Any, index: Sequence[int]) -> Any:
    """A copy of ``cache`` holding rows ``index``; ``update`` concatenates into new tensors, so shallow copies do."""
    import torch

    rows = copy.copy(cache)
    rows.layers = [copy.copy(layer) for layer in cache.layers]
    rows.batch_select_indices(torch.tensor(list(index)))
    return rows


def _extend(model: Any, cache: Any, past: Any, segments: Sequence[tuple[int, ...]], *, keep: int) -> tuple[Any, Any, Any]:
    """``segments`` right-padded on top of ``cache`` (rows aligned; None: from nothing): (logits, cache, mask)."""
    import torch

    width = max(len(s) for s in segments)
    ids = torch.zeros((len(segments), width), dtype=torch.long)
    real = torch.zeros((len(segments), width), dtype=torch.long)
    for k, s in enumerate(segments):
        ids[k, : len(s)], real[k, : len(s)] = torch.tensor(s, dtype=torch.long), 1
    if cache is None:
        cache, past = _new_cache(model), real[:, :0]
    mask = torch.cat([past, real], dim=1)
    positions = past.sum(1, keepdim=True) + torch.arange(width)
    kwargs = {"logits_to_keep": keep} if keep else {}
    logits = model(ids, attention_mask=mask, position_ids=positions, **_cache_kwarg(model, cache), use_cache=True, **kwargs).logits
    return logits, cache, mask
