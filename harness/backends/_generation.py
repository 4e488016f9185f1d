"""Generation for the transformers backend: a greedy decoding loop that pays only for live rows.

``model.generate`` on a left-padded batch runs every row to the longest one: a row that met its EOS or a
stop string keeps decoding padding, and each prompt's few-shot start (8-shot GSM8K: ~90% of its tokens)
is prefilled once per row. The loop here is greedy decoding with a key/value cache (``DynamicCache``)
that instead

- runs the start shared by a group's prompts once (at least ``SHARE_MIN_PREFIX_TOKENS``) and expands
  its cache to the rows, as the scoring code shares few-shot stems;
- checks each row's EOS and stop strings after every token, decoding only the tail that can hold a new
  occurrence (``StopStrings``), and drops finished rows from the cache, mask and positions.

The tokens are those of plain greedy decoding (argmax of each step's logits, first index on ties), which
is what ``model.generate`` does when the model's generation config adds no logits processor
(``plain_greedy`` checks; otherwise, and for sampling, ``model.generate`` runs). Batch composition
changes a row's logits by float noise only; see tests/test_generation.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from harness.backends._scoring import STEM_MIN_TOKENS
from harness.backends._torch_scoring import cache_rows
from harness.backends.base import GenerateRequest, Generation

SHARE_MIN_PREFIX_TOKENS = STEM_MIN_TOKENS
"""Share a group's common prompt start only from this many tokens (a stem costs a pass and a cache copy)."""

GREEDY_NEUTRAL = frozenset({
    "_from_model_config", "transformers_version", "bos_token_id", "eos_token_id", "pad_token_id",
    "decoder_start_token_id", "do_sample", "temperature", "top_k", "top_p", "min_p", "typical_p",
    "epsilon_cutoff", "eta_cutoff", "top_h", "max_length", "max_new_tokens", "use_cache", "cache_implementation",
    "output_attentions", "output_hidden_states", "output_scores", "output_logits", "return_dict_in_generate",
})
"""Generation-config fields that leave greedy decoding's tokens alone (ids, sampling-only warpers, lengths,
the cache, extra outputs); any other field a model sets (a repetition penalty, suppressed tokens...) sends it to
``model.generate``, which applies it."""


def plain_greedy(model: Any) -> bool:
    """Whether the loop reproduces ``model.generate``'s greedy tokens for ``model``: a plain full-attention
    cache (rows can be dropped and a shared start expanded) and a generation config with no processor."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    layers = DynamicCache(config=model.config).layers
    config = getattr(model, "generation_config", None)
    changed = set(config.to_diff_dict()) if config is not None else set()
    return bool(layers) and all(type(layer) is DynamicLayer for layer in layers) and changed <= GREEDY_NEUTRAL


class StopStrings:
    """A row's incremental stop-string check: after each token, decode only the last tokens that can hold an
    occurrence completed by it, then confirm on the whole text (as ``finish`` cuts it)."""

    def __init__(self, tokenizer: Any, stops: Sequence[str]) -> None:
        self.tokenizer = tokenizer
        self.stops = tuple(s for s in stops if s)
        # an occurrence spans at most one token per UTF-8 byte; one more keeps a token's leading-space or
        # partial-character decoding at the tail's start off the occurrence
        self.window = max((len(s.encode("utf-8")) for s in self.stops), default=0) + 1
        self.special = set(getattr(tokenizer, "all_special_ids", ()) or ())

    def hit(self, tokens: Sequence[int]) -> bool:
        """Whether the decoded ``tokens`` contain a stop string (checked after each new token)."""
        if not self.stops:
            return False
        start, counted = len(tokens), 0
        while start > 0 and counted < self.window:  # special tokens decode to nothing: they do not count
            start -= 1
            counted += tokens[start] not in self.special
        tail = self.tokenizer.decode(tokens[start:], skip_special_tokens=True)
        if not any(s in tail for s in self.stops):
            return False
        text = self.tokenizer.decode(tokens, skip_special_tokens=True)
        return any(s in text for s in self.stops)


@dataclass(frozen=True)
class Prefix:
    """A start shared by every prompt of a group, run once: its tokens and its one-row cache."""

    tokens: tuple[int, ...]
    cache: Any


def common_prefix(prompts: Sequence[Sequence[int]]) -> int:
    """Length of the start all ``prompts`` share, leaving each at least its last token (whose logits start
    the generation and must come from the prompt's own pass)."""
    if not prompts:
        return 0
    first, limit = prompts[0], min(len(p) for p in prompts) - 1
    n = 0
    while n < limit and all(p[n] == first[n] for p in prompts):
        n += 1
    return n


class GreedyDecoder:
    """Greedy decoding of batches of token prompts with ``model`` on ``device``."""

    def __init__(self, model: Any, device: str) -> None:
        import inspect

        self.model = model
        self.device = device
        params = inspect.signature(model.forward).parameters
        self.cache_arg = "cache" if "cache" in params else "past_key_values"
        self.keep = {"logits_to_keep": 1} if "logits_to_keep" in params else {}

    def prefix(self, prompts: Sequence[Sequence[int]], min_tokens: int = SHARE_MIN_PREFIX_TOKENS) -> Prefix | None:
        """The shared start of ``prompts`` run into a cache, or None when it is too short or shared by one."""
        import torch
        from transformers import DynamicCache

        n = common_prefix(prompts)
        if len(prompts) < 2 or n < min_tokens:
            return None
        cache = DynamicCache(config=self.model.config)
        ids = torch.tensor([list(prompts[0][:n])], dtype=torch.long, device=self.device)
        with torch.inference_mode():
            self.model(ids, use_cache=True, **{self.cache_arg: cache}, **self.keep)
        return Prefix(tuple(prompts[0][:n]), cache)

    def decode(self, prompts: Sequence[Sequence[int]], *, max_new_tokens: int, eos_ids: Sequence[int], pad: int,
               stop: StopStrings | None = None, prefix: Prefix | None = None) -> list[list[int]]:
        """The new tokens of each prompt: up to ``max_new_tokens``, ending with an EOS id or the token that
        completes a stop string when one stopped it.

        Each prompt's part after ``prefix`` is left-padded (masked) on top of the prefix's cache, so every row's
        next token sits in the last column; positions count real tokens only, as ``model.generate`` does.
        """
        import torch
        from transformers import DynamicCache

        if max_new_tokens < 1:
            return [[] for _ in prompts]
        shared = len(prefix.tokens) if prefix is not None else 0
        suffixes = [list(p[shared:]) for p in prompts]
        rows, width = len(prompts), max(len(s) for s in suffixes)
        ids = torch.full((rows, width), pad, dtype=torch.long)
        mask = torch.zeros((rows, shared + width), dtype=torch.long)
        mask[:, :shared] = 1
        for row, suffix in enumerate(suffixes):
            ids[row, width - len(suffix):] = torch.tensor(suffix, dtype=torch.long)
            mask[row, shared + width - len(suffix):] = 1
        positions = (mask.cumsum(dim=1) - 1).clamp(min=0)[:, shared:]
        if prefix is not None:
            cache = cache_rows(prefix.cache, torch.zeros(rows, dtype=torch.long, device=self.device))
        else:
            cache = DynamicCache(config=self.model.config)
        lengths = mask.sum(dim=1)  # the next token's position, per live row
        eos = set(eos_ids)
        out: list[list[int]] = [[] for _ in prompts]
        live = list(range(rows))
        with torch.inference_mode():
            logits = self._step(ids, mask, positions, cache)
            while True:
                chosen = logits.argmax(dim=-1).cpu()
                keep = []
                for k, (row, token) in enumerate(zip(live, chosen.tolist(), strict=True)):
                    out[row].append(token)
                    if not (token in eos or len(out[row]) >= max_new_tokens or (stop is not None and stop.hit(out[row]))):
                        keep.append(k)
                if not keep:
                    return out
                if len(keep) < len(live):  # drop the finished rows everywhere
                    at = torch.tensor(keep, dtype=torch.long)
                    cache.batch_select_indices(at.to(self.device))
                    mask, lengths, chosen = mask[at], lengths[at], chosen[at]
                    live = [live[k] for k in keep]
                mask = torch.cat([mask, torch.ones((len(live), 1), dtype=torch.long)], dim=1)
                logits = self._step(chosen[:, None], mask, lengths[:, None], cache)
                lengths = lengths + 1

    def _step(self, ids: Any, mask: Any, positions: Any, cache: Any) -> Any:
        """One forward pass on top of ``cache`` (extended in place): the last column's logits, [rows, vocab]."""
        out = self.model(
            ids.to(self.device), attention_mask=mask.to(self.device), position_ids=positions.to(self.device),
            use_cache=True, **{self.cache_arg: cache}, **self.keep,
        )
        return out.logits[:, -1]


def generate_with_model(model: Any, tokenizer: Any, device: str, prompts: Sequence[Sequence[int]],
                        req: GenerateRequest, eos_ids: Sequence[int], pad: int) -> list[list[int]]:
    """``model.generate`` on one left-padded batch (sampled requests, models the loop does not cover): each
    prompt's new tokens, padding included after a row stopped."""
    import torch
    from transformers import GenerationConfig

    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, p in enumerate(prompts):
        ids[row, width - len(p):] = torch.tensor(list(p), dtype=torch.long)
        mask[row, width - len(p):] = 1
    sample = req.temperature > 0
    config = GenerationConfig(
        max_new_tokens=req.max_tokens,
        do_sample=sample,
        temperature=req.temperature if sample else None,
        top_k=0 if sample else None,
        top_p=1.0 if sample else None,
        eos_token_id=list(eos_ids) or None,
        pad_token_id=pad,
        stop_strings=[s for s in req.stop if s] or None,
    )
    if sample:
        torch.manual_seed(req.seed)
    with torch.inference_mode():
        out = model.generate(
            input_ids=ids.to(device), attention_mask=mask.to(device),
            generation_config=config, tokenizer=tokenizer if config.stop_strings else None,
        )
    return [row[width:].tolist() for row in out]


def finish(tokenizer: Any, new: Sequence[int], req: GenerateRequest, eos_ids: Sequence[int]) -> Generation:
    """The generation of ``new`` tokens: cut before the first EOS id, decoded, cut before the first stop string."""
    new, reason = list(new), "length"
    for k, tok in enumerate(new):
        if tok in eos_ids:
            new, reason = new[:k], "stop"
            break
    text = tokenizer.decode(new, skip_special_tokens=True)
    cuts = [text.find(s) for s in req.stop if s and s in text]
    if cuts:
        text, reason = text[: min(cuts)], "stop"
    return Generation(text=text, tokens=len(new), finish_reason=reason)
