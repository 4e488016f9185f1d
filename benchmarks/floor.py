"""The forward-pass floor of a suite: the bare model's forward passes over the unique tokens its requests need.

``Recorder`` sits between a gate run's request cache and its backend and keeps what the backend was
asked (every miss, so every unique request of a cold run) and, for generation, how many tokens each
answer took. ``Floor`` turns that into token lists with the backend's own tokenizer (lm-eval's
conventions), before any clock starts; ``Floor.run`` then times plain transformers calls on the bare
model, no moegate code around them:

* scoring (loglikelihood): each unique context + continuation, its input tokens as a prefix trie
  packed into rows without padding inside (the gate's pure planner ``packed_plan``: a shared context
  runs once per row, a start many contexts share, MMLU-Pro's 5-shot examples, runs once into a cache
  beneath the rows that read it); a 4D mask lets each position see its ancestors; only the logits a
  score needs are computed (``logits_to_keep``). All inputs (ids, masks, position ids) are built before
  the clock starts; it holds the forwards and the per-row copies of a stem's cache.
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

MAX_BATCH_TOKENS = 4096
"""The transformers backend's default bound on a pass's padded tokens (cache read included)."""


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

    def sequences(self) -> list[tuple[tuple[int, ...], int]]:
        """Each unique context + continuation, scored on the continuation (the gate's ``Scored``)."""
        from harness.backends._scoring import unique_longest_first

        return unique_longest_first([(c + k, len(k)) for c, conts in self.contexts.items() for k in conts])

    def plan(self, batch_size: int) -> list[Any]:
        """The unique sequences as prefix tries packed into rows (the gate's pure planner, no model code)."""
        from harness.backends._scoring import packed_passes, packed_plan

        return packed_passes(packed_plan(self.sequences()), batch_size=batch_size, max_batch_tokens=MAX_BATCH_TOKENS)

    def positions(self, batch_size: int) -> int:
        """Token positions the floor runs (stems once, packed rows, prompts, decode steps)."""
        plan = self.plan(batch_size)
        scoring = sum(len(s) for p in plan for s in p.stems) + sum(
            len(row.tokens) for p in plan for chunk in p.chunks for _, row in chunk)
        return scoring + sum(len(p) for p in self.prompts) + sum(max(0, n - 1) for n in self.prompts.values())

    def stems(self, batch_size: int) -> int:
        return sum(len(p.stems) for p in self.plan(batch_size))

    def run(self, model: Any, batch_size: int) -> float:
        """Seconds of the floor's forward passes on ``model``."""
        import torch

        with torch.inference_mode():
            scoring = self._score_inputs(model, batch_size) if self.contexts else []
            start = time.perf_counter()
            self._score(model, scoring)
            if self.prompts:
                self._generate(model, batch_size)
            return time.perf_counter() - start

    def _score_inputs(self, model: Any, batch_size: int) -> list[tuple[Any, list[tuple[Any, list[int]]]]]:
        """Per stem pass: its right-padded stem ids (None: no stem), and per chunk its inputs and stem rows."""
        import torch

        from harness.backends._torch_scoring import tree_inputs

        out = []
        for packed in self.plan(batch_size):
            stem_ids = stem_real = None
            if packed.stems:
                width = max(len(st) for st in packed.stems)
                stem_real = torch.tensor([[i < len(st) for i in range(width)] for st in packed.stems])
                stem_ids = torch.tensor([list(st) + [0] * (width - len(st)) for st in packed.stems])
            out.append((stem_ids, [(tree_inputs(chunk, stem_real, model.dtype), [s for s, _ in chunk]) for chunk in packed.chunks]))
        return out

    def _score(self, model: Any, passes: list[tuple[Any, list[tuple[Any, list[int]]]]]) -> None:
        """Each stem pass into a cache, then its chunks of packed rows on top of copies of its rows."""
        for stem_ids, chunks in passes:
            cache = None
            if stem_ids is not None:
                cache = _new_cache(model)
                model(stem_ids, **_cache_kwarg(model, cache), use_cache=True, logits_to_keep=1)
            for inputs, stems in chunks:
                kwargs: dict[str, Any] = {"use_cache": False}
                if cache is not None:
                    kwargs = {"use_cache": True, **_cache_kwarg(model, _rows(cache, stems))}
                model(inputs.ids, attention_mask=inputs.mask, position_ids=inputs.positions,
                      logits_to_keep=inputs.keep, **kwargs)

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
