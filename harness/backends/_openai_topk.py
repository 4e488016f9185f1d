"""Teacher-forced top-k tables (``next_token_topk``) through a server's vLLM-style ``prompt_logprobs=k``.

Each scored sequence is sent as a token-id prompt (so the server scores exactly the tokens the local
backends would) with ``prompt_logprobs: k``; position j of the answer holds the prompt token with its log-prob
and rank plus the top-k (``_logprobs.prompt_positions``). Token ids come from the engine's tokenize route:
text windows are cut from the text's ids as ``rolling_windows`` cuts them locally; a continuation is the
prompt's ids (for ``chat``, the route's ``messages`` form, which renders the served model's chat template with
the generation prompt, as vLLM's ``/tokenize`` does) followed by the text's ids without special tokens.

A server cannot be probed at a baseline's ids, so the tables carry the server's own top-k only (no
``probe_*``): the KL is the both-sides-top-k estimate. A server does not tell its vocabulary size either, so
``vocab`` is 0 (unknown); the targets (the server's own tokenization) still have to match the baseline's.
A server without ``prompt_logprobs``, token-id prompts or a tokenize route is refused in one line naming
what it lacks.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from harness.backends._http import HttpError, ordered_map
from harness.backends._logprobs import Position, prompt_positions
from harness.backends._scoring import rolling_windows
from harness.backends.base import TopKRequest
from harness.divergence.topk import TopKTable, rest_mass
from harness.errors import UserError

if TYPE_CHECKING:
    from harness.backends.openai import OpenAIBackend

FIX = "serve the model with vLLM (prompt_logprobs, token-id prompts, /tokenize), or run the kld suite on a local backend"


def next_token_topk(backend: OpenAIBackend, requests: Sequence[TopKRequest]) -> list[TopKTable]:
    """One table per request, the server already checked by ``verify``."""
    if not requests:
        return []
    where = f"server {backend.base_url} ({backend.model_name})"
    caps = backend.capabilities()
    lacks = [what for what, ok in (("top-k prompt log-probs (vLLM's prompt_logprobs)", caps.vllm_prompt_logprobs),
                                   (f"token-id prompts ({backend.engine.name})", backend.engine.token_prompts),
                                   (f"a tokenize route ({backend.engine.name})", backend.engine.tokenizer is not None)) if not ok]
    if lacks:
        raise UserError(f"{where} cannot return next-token top-k tables: it lacks {'; '.join(lacks)}", FIX)
    backend.verify()
    plans = [_sequences(backend, req) for req in requests]
    jobs = [(seq, n, req.k) for plan, req in zip(plans, requests, strict=True) for seq, n in plan]
    rows = ordered_map(lambda job: _rows(backend, *job), jobs, backend.concurrency)
    tables, start = [], 0
    for plan, req in zip(plans, requests, strict=True):
        parts = rows[start:start + len(plan)]
        start += len(plan)
        tables.append(_table(req.k, [n for _, n in plan], parts))
    return tables


def _ids(backend: OpenAIBackend, **fields: object) -> list[int]:
    route = backend.engine.tokenizer
    assert route is not None
    try:
        answer = backend.root_client.post(route.route, {"model": backend.model_name, **dict(route.extra), **fields})
    except HttpError as err:
        raise UserError(f"server {backend.base_url} failed to tokenize: {err}", FIX) from None
    ids = answer.get(route.answer) if isinstance(answer, dict) else None
    if not isinstance(ids, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in ids):
        raise UserError(f"server {backend.base_url}'s tokenize route returned no token ids", FIX)
    return list(ids)


def _sequences(backend: OpenAIBackend, req: TopKRequest) -> list[tuple[tuple[int, ...], int]]:
    """(token ids, scored count) per sequence of ``req``, as the local backends cut them."""
    limit = backend.max_model_len()
    if req.prompt is None:
        window = req.window or (limit - 1 if limit else None)
        if window is not None and limit is not None and window > limit - 1:
            raise UserError(f"window {window} tokens does not fit server {backend.base_url}'s context of {limit} tokens",
                            f"use a window of at most {limit - 1} tokens, or serve the model with a longer context")
        ids = _ids(backend, prompt=req.text)
        chunks = rolling_windows(ids, window or len(ids) or 1)[: req.windows]
        return [(chunk, len(chunk) - 1) for chunk in chunks]
    if req.chat:
        context = _ids(backend, messages=[{"role": "user", "content": req.prompt}], add_generation_prompt=True,
                       add_special_tokens=False)
    else:
        context = _ids(backend, prompt=req.prompt)
    cont = _ids(backend, prompt=req.text, add_special_tokens=False)
    if not cont:
        return []
    if not context:
        raise UserError(f"server {backend.base_url} tokenized the prompt to nothing", "give the continuation a prompt")
    seq = tuple(context + cont)
    if limit is not None and len(seq) > limit - 1:
        raise UserError(f"prompt and continuation are {len(seq)} tokens, more than server {backend.base_url}'s context "
                        f"of {limit} allows", "serve the model with a longer context")
    return [(seq, len(cont))]


def _rows(backend: OpenAIBackend, seq: tuple[int, ...], n: int, k: int) -> tuple[np.ndarray, ...]:
    """targets, target log-probs, top ids, top log-probs of the last ``n`` positions of ``seq``."""
    try:
        answer = backend.client.post("/completions", backend.one_token(prompt=list(seq), prompt_logprobs=k))
        positions = prompt_positions(answer)
    except HttpError as err:
        raise backend._fail(err) from None
    except ValueError as err:
        raise UserError(f"server {backend.base_url} returned unusable prompt_logprobs: {err}", FIX) from None
    if len(positions) != len(seq):
        raise UserError(f"server {backend.base_url} returned {len(positions)} prompt_logprobs positions for "
                        f"{len(seq)} prompt tokens", FIX)
    targets, target_lp, top_ids, top_lp = [], [], [], []
    for j in range(len(seq) - n, len(seq)):
        position: Position = positions[j] or {}
        entry = position.get(seq[j])
        if entry is None:
            raise UserError(f"server {backend.base_url}'s prompt_logprobs[{j}] has no entry for the prompt token", FIX)
        ranked = sorted(position.items(), key=lambda kv: (kv[1].rank if kv[1].rank is not None else 0, -kv[1].logprob))
        top = [(tid, e.logprob) for tid, e in ranked if e.rank is None or e.rank <= k][:k]
        if len(top) < k:
            raise UserError(f"server {backend.base_url} returned {len(top)} top log-probs at a prompt position, "
                            f"not the {k} asked for", "lower top_k in the kld settings to what the server returns")
        targets.append(seq[j])
        target_lp.append(entry.logprob)
        top_ids.append([t for t, _ in top])
        top_lp.append([v for _, v in top])
    return (np.asarray(targets, np.int64), np.asarray(target_lp, np.float32),
            np.asarray(top_ids, np.int64).reshape(-1, k), np.asarray(top_lp, np.float32).reshape(-1, k))


def _table(k: int, sizes: list[int], parts: list[tuple[np.ndarray, ...]]) -> TopKTable:
    def cat(index: int, shape: tuple[int, ...], dtype: type) -> np.ndarray:
        return np.concatenate([p[index] for p in parts]) if parts else np.zeros(shape, dtype)

    top_lp = cat(3, (0, k), np.float32)
    return TopKTable(vocab=0, window_sizes=tuple(sizes), targets=cat(0, (0,), np.int64),
                     target_logprobs=cat(1, (0,), np.float32), top_ids=cat(2, (0, k), np.int64), top_logprobs=top_lp,
                     rest_mass=rest_mass(top_lp))
