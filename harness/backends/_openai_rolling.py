"""Rolling log-likelihood (perplexity) through an OpenAI-compatible server, inside its context.

Windows are disjoint runs of ``window`` tokens (default: the server's context less the one generated
token every request asks for), each window's first token unscored, as the local backends cut them.
Where the engine has a tokenize route and scores token-id prompts (vLLM), the text is tokenized once
and every window is sent as its token ids: the same windows as the local backends, and no request longer
than a window. Elsewhere a text is scored whole and, when longer than a window, cut at its tokens'
offsets and scored again piece by piece; a text that cannot fit the context is refused up front where
the server can count its tokens, else by the server's own context-length error (a one-line hint).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import TYPE_CHECKING

from harness.backends.base import RollingRequest, RollingResult, WindowScore
from harness.errors import UserError

if TYPE_CHECKING:
    from harness.backends.openai import OpenAIBackend


def rolling(backend: OpenAIBackend, requests: Sequence[RollingRequest]) -> list[RollingResult]:
    """Score each request's windows (the server already passed ``verify``)."""
    limit = backend.max_model_len()
    exact = backend.engine.token_prompts and backend.capabilities().vllm_prompt_logprobs
    pieces: list[tuple[int, str | list[int]]] = []
    for index, req in enumerate(requests):
        window = req.window or (limit - 1 if limit else None)
        if window is not None and window < 2:
            raise UserError(f"rolling window {window} is too small", "use a window of at least 2 tokens")
        if window is not None and limit is not None and window > limit - 1:
            raise UserError(f"rolling window {window} tokens does not fit server {backend.base_url}'s context of {limit} "
                            "tokens (each request also asks for one generated token)",
                            f"use a window of at most {limit - 1} tokens, or serve the model with a longer context")
        ids = backend.tokenize(req.text) if exact else None
        if ids is not None:
            step = window or len(ids)
            cut: list[str | list[int]] = [ids[a: a + step] for a in range(0, len(ids), step) if len(ids[a: a + step]) >= 2]
        else:
            cut = list(_text_windows(backend, req.text, window))
        pieces.extend((index, piece) for piece in cut[: req.windows])
    scored = backend.score_texts([p for _, p in pieces])
    windows: list[list[WindowScore]] = [[] for _ in requests]
    for index, piece in pieces:
        scores = scored[tuple(piece) if isinstance(piece, list) else piece]
        lps = backend.values(scores, range(1, len(scores.logprobs)))
        if lps:
            windows[index].append(WindowScore(logprob=float(sum(lps)), tokens=len(lps)))
    return [RollingResult(windows=tuple(w)) for w in windows]


def _text_windows(backend: OpenAIBackend, text: str, window: int | None) -> list[str]:
    """Without token-id prompts: the whole text when it fits one window, else cut at its tokens' offsets."""
    ids = backend.tokenize(text)
    limit = backend.max_model_len()
    if ids is not None and limit is not None and len(ids) > limit - 1:
        raise UserError(f"a text of {len(ids)} tokens does not fit server {backend.base_url}'s context of {limit} tokens, "
                        f"and {backend.engine.name} cannot score prompts given as token ids, so windows cannot be cut exactly",
                        "serve the model with vLLM, or with a context longer than the text")
    offsets = backend.score_texts([text])[text].offsets
    if window is None or len(offsets) <= window:
        return [text]
    starts = [*list(offsets[::window]), len(text)]
    return [text[a:b] for a, b in itertools.pairwise(starts) if b > a]
