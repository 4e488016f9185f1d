"""The backend seam: three request kinds (as in lm-eval), teacher-forced top-k next-token tables, and
optional routing traces.

Every engine — transformers, mlx-lm, an OpenAI-compatible server — sits behind this protocol, and
everything above it (cache, suites, lm-eval adapter) only sees these types.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np

from harness.divergence.topk import TokenIds, TopKTable


@dataclass(frozen=True)
class LoglikelihoodRequest:
    """Score ``continuation`` after ``context``. As in lm-eval the continuation carries its leading space."""

    context: str
    continuation: str


@dataclass(frozen=True)
class Loglikelihood:
    logprob: float
    """Sum of the continuation tokens' log-probabilities (natural log)."""
    is_greedy: bool
    """True when every continuation token is the argmax under its prefix."""


@dataclass(frozen=True)
class RollingRequest:
    """Score a whole text over disjoint windows (perplexity)."""

    text: str
    window: int | None = None
    """Tokens per window; ``None`` means the model's maximum length."""
    windows: int | None = None
    """Score only the first this many windows (``None``: all), as ``TopKRequest.windows``."""


@dataclass(frozen=True)
class WindowScore:
    logprob: float
    """Sum of log-probabilities of the scored tokens in this window."""
    tokens: int
    """Number of tokens scored in this window."""


@dataclass(frozen=True)
class RollingResult:
    windows: tuple[WindowScore, ...]

    @property
    def logprob(self) -> float:
        return sum(w.logprob for w in self.windows)

    @property
    def tokens(self) -> int:
        return sum(w.tokens for w in self.windows)


@dataclass(frozen=True)
class GenerateRequest:
    prompt: str
    max_tokens: int = 256
    stop: tuple[str, ...] = ()
    chat: bool = False
    """Wrap ``prompt`` as one user message through the model's chat template."""
    temperature: float = 0.0
    """0 means greedy decoding."""
    seed: int = 0


@dataclass(frozen=True)
class Generation:
    text: str
    """The continuation only (prompt excluded), cut at the first stop string (which is removed)."""
    tokens: int = 0
    """Generated token count before the cut."""
    finish_reason: str = "length"
    """``stop`` (stop string or EOS) or ``length`` (hit ``max_tokens``)."""


@dataclass(frozen=True)
class TopKRequest:
    """Teacher-forced next-token distributions over a text: per scored position a ``TopKTable`` row.

    Text form (``prompt`` None): ``text`` is cut into disjoint windows exactly as ``RollingRequest`` does
    and every token but a window's first is scored. Continuation form: ``text`` (e.g. a baseline's own
    greedy generation) is scored after ``prompt``, encoded as generation encodes it (chat template when
    ``chat``); only the continuation's tokens are scored.
    """

    text: str
    k: int
    """Top-k width of the model's own distribution to return (at least 1: the top token)."""
    prompt: str | None = None
    chat: bool = False
    window: int | None = None
    """Text form: tokens per window; ``None`` means the model's maximum length (capped like rolling)."""
    windows: int | None = None
    """Text form: score only the first this many windows (``None``: all)."""
    probe: TokenIds | None = None
    """[positions, m] ids (a baseline's top-k) at which to also return this model's log-probs, so the KL
    needs no full-vocabulary rows; one row per scored position, in order."""


def rolling_request_of(request: TopKRequest) -> RollingRequest | None:
    """The rolling request whose windows a text-form top-k request scores (None for the continuation form)."""
    if request.prompt is not None:
        return None
    return RollingRequest(text=request.text, window=request.window, windows=request.windows)


def rolling_result_of(table: TopKTable) -> RollingResult:
    """The rolling result a text-form top-k table holds: per window, its targets' summed log-probability."""
    target = np.asarray(table.target_logprobs, dtype=np.float64)
    return RollingResult(windows=tuple(WindowScore(logprob=float(target[rows].sum()), tokens=rows.stop - rows.start)
                                       for rows in table.window_slices()))  # fmt: skip


@dataclass(frozen=True)
class RouteTrace:
    """Per MoE layer: the top-k expert ids and their routing weights for every token of one text."""

    layers: tuple[int, ...]
    expert_ids: tuple[tuple[tuple[int, ...], ...], ...]
    """[layer][token][k]"""
    weights: tuple[tuple[tuple[float, ...], ...], ...]
    """[layer][token][k]"""
    num_experts: int = 0
    tokens: tuple[str, ...] = field(default=())


@dataclass(frozen=True)
class EngineInfo:
    """What computes a backend's numbers: recorded with every stored run, compared between baseline and
    candidate (log-probabilities from two engines differ even for the same weights)."""

    engine: str
    """``transformers``, ``mlx``, or a row name of the serving-engine table (``vllm``, ``llama-cpp-python``...), or ``unknown``."""
    version: str | None
    """The library's version, or as the server tells it; None where it does not."""
    model: str
    """The checkpoint path or the served model name."""
    max_context: int | None
    """Tokens per request (prompt + completion) it accepts, where known."""
    base_url: str | None = None
    """The server's URL for a served model."""


@runtime_checkable
class Backend(Protocol):
    """What a suite may ask of a model. Methods take a batch and return results in the same order."""

    name: str
    """Backend kind, e.g. ``transformers``, ``mlx``, ``openai``."""

    def fingerprint(self) -> str:
        """Stable hash of everything that determines outputs (weights, tokenizer, dtype, settings)."""
        ...

    def loglikelihood(self, requests: Sequence[LoglikelihoodRequest]) -> list[Loglikelihood]: ...

    def loglikelihood_rolling(self, requests: Sequence[RollingRequest]) -> list[RollingResult]: ...

    def generate(self, requests: Sequence[GenerateRequest]) -> list[Generation]: ...


@runtime_checkable
class DescribedBackend(Backend, Protocol):
    """A backend that says which engine computes its numbers (every built-in backend does)."""

    def describe(self) -> EngineInfo: ...


def engine_of(backend: Backend) -> EngineInfo:
    """``backend.describe()``, or what its kind alone says for a backend without one (plugins, test doubles)."""
    if isinstance(backend, DescribedBackend):
        return backend.describe()
    return EngineInfo(engine=backend.name, version=None, model="", max_context=None)


@runtime_checkable
class TopKBackend(Backend, Protocol):
    """A backend that returns teacher-forced top-k next-token tables (the fourth request kind).

    The transformers, mlx and openai backends implement it (openai through vLLM's ``prompt_logprobs=k``; a
    server cannot be probed, so its tables carry no ``probe_*`` and ``vocab`` 0). Kept apart from ``Backend``
    so that a backend for generation only still fits the seam.
    """

    def next_token_topk(self, requests: Sequence[TopKRequest]) -> list[TopKTable]: ...


@runtime_checkable
class RouteTracingBackend(Backend, Protocol):
    """A backend that can see inside the model and report expert routing."""

    def route_trace(self, texts: Sequence[str]) -> list[RouteTrace]: ...
