"""OpenAI-compatible HTTP backend: vLLM, SGLang, llama.cpp, mlx_lm.server, transformers serve.

For models that need a cluster: the engine scales (tensor/expert parallel), moegate stays the client.

- ``generate`` goes through ``/v1/completions`` (or ``/v1/chat/completions`` when ``chat=True``) with
  temperature 0 and a seed; stop strings are sent to the server and applied again locally.
- ``loglikelihood`` and ``loglikelihood_rolling`` need *prompt* log-probabilities, asked for with
  ``echo: true`` + ``logprobs`` (legacy OpenAI API; llama.cpp) or vLLM's ``prompt_logprobs`` (preferred
  where the engine's row says so; see ``_logprobs.py`` for both formats). Per-token character offsets
  locate the continuation, so no local tokenizer is needed: every token that ends past the
  context/continuation boundary or starts at it counts. Rolling windows are cut client-side in token ids
  (the server's tokenize route) and sent as token-id prompts where the engine takes them, so no request
  exceeds the server's context; a context-length refusal becomes a one-line hint.
- Nothing is scored on a server that has not passed the self-consistency probe (``_openai_checks``).
- Engine quirks (version route, tokenize route, context error text) come from one table, ``_engines.py``;
  ``describe()`` says which engine serves the model, and the fingerprint covers it.

A server cannot prove which weights it serves: the fingerprint hashes the base URL, the model name,
what ``/v1/models`` reveals about it (id, root, max_model_len...), the engine and its version, and the
settings, nothing more.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from harness.backends import _openai_checks as checks
from harness.backends._engines import Engine, detect, is_context_error
from harness.backends._http import HttpError, JsonClient, RetryPolicy, ordered_map
from harness.backends._logprobs import (
    PromptScores,
    continuation_tokens,
    parse_echo,
    parse_prompt_logprobs,
    prompt_token_ids,
)
from harness.backends._openai_checks import Alignment, Capabilities, Consistency
from harness.backends._openai_generate import completion_generation, completion_request
from harness.backends._openai_rolling import rolling
from harness.backends.base import (
    Backend,
    EngineInfo,
    GenerateRequest,
    Generation,
    Loglikelihood,
    LoglikelihoodRequest,
    RollingRequest,
    RollingResult,
    TopKRequest,
)
from harness.divergence.topk import TopKTable
from harness.errors import UserError

PROBE_DECIMALS = 2
"""Rounding of the probe's log-probs: an engine's run-to-run noise (~1e-5) must not change the key."""
VOLATILE_MODEL_KEYS = frozenset({"created", "object", "permission", "permissions", "status"})
__all__ = ["Alignment", "Capabilities", "Consistency", "OpenAIBackend", "open_openai"]


class OpenAIBackend:
    """Client for one model on an OpenAI-compatible server.

    Args:
        base_url: e.g. ``http://127.0.0.1:8000/v1`` (``/v1`` is added when missing).
        model_name: the served model id; default the only one ``/v1/models`` lists.
        api_key: sent as a bearer token when given.
        concurrency: requests in flight at once (results keep the order of the requests).
        timeout_s: per-request timeout.
        max_retries: retries on 429/5xx/timeouts/connection errors, with exponential backoff and jitter.
        seed: sent with every request (servers that honour it become reproducible when sampling).
        logprob_shift: correct a server whose prompt log-probs are shifted (see ``check_alignment``).
    """

    name = "openai"
    topk_probe = False
    """``next_token_topk`` cannot return log-probs at given ids (a server returns its own top-k only)."""

    def __init__(
        self,
        base_url: str,
        model_name: str | None = None,
        *,
        api_key: str | None = None,
        concurrency: int = 8,
        timeout_s: float = 300.0,
        max_retries: int = 5,
        seed: int = 0,
        logprob_shift: int = 0,
        sleep: Callable[[float], None] | None = None,
    ) -> None:
        base = base_url.rstrip("/")
        if not base.startswith(("http://", "https://")):
            raise UserError(f"base URL {base_url!r} is not http(s)", "give e.g. --base-url http://127.0.0.1:8000/v1")
        self.base_url = base if base.endswith("/v1") else base + "/v1"
        kwargs: dict[str, Any] = {"sleep": sleep} if sleep is not None else {}
        retry = RetryPolicy(max_retries=max_retries)
        self.client = JsonClient(self.base_url, api_key=api_key, timeout_s=timeout_s, retry=retry, **kwargs)
        self.root_client = JsonClient(self.base_url.removesuffix("/v1"), api_key=api_key, timeout_s=timeout_s,
                                      retry=RetryPolicy(max_retries=min(max_retries, 1)), **kwargs)
        """For routes beside ``/v1`` (vLLM's ``/tokenize``, ``/version``); few retries: a missing route is common."""
        self.concurrency = max(1, int(concurrency))
        self.seed = seed
        self.logprob_shift = int(logprob_shift)
        self._models: list[dict[str, Any]] | None = None
        self.model_name = model_name or self._only_model()
        self._caps: Capabilities | None = None
        self._engine: tuple[Engine, str | None] | None = None
        self._consistency: Consistency | None = None
        self._probed: list[Any] | None = None

    # ------------------------------------------------------------------ server facts
    def _fail(self, err: HttpError) -> UserError:
        """One line for a request that failed for good: a context-length refusal says so."""
        if is_context_error(self.engine, err.status, err.body):
            limit = self.max_model_len()
            return UserError(f"server {self.base_url} ({self.model_name}) refused a request longer than its context"
                             f"{f' of {limit} tokens' if limit else ''}: {err.body[:200]}",
                             "use a shorter window/seq_len or fewer few-shot examples, or serve the model with a "
                             "longer context (vLLM: --max-model-len)")
        return UserError(f"server {self.base_url} failed: {err}", "check that the server is up and serves this model")

    def _call(self, method: str, path: str, payload: dict[str, Any] | None = None) -> Any:
        try:
            return self.client.get(path) if method == "GET" else self.client.post(path, payload or {})
        except HttpError as err:
            raise self._fail(err) from None

    def models(self) -> list[dict[str, Any]]:
        """The /v1/models entries; empty when the server answers that route with nothing usable (mlx_lm.server may)."""
        if self._models is None:
            try:
                data = self.client.get("/models")
            except HttpError as err:
                if err.status not in (200, 404):
                    raise UserError(f"server {self.base_url} failed: {err}", "check that the server is up") from None
                data = {}
            items = data.get("data") if isinstance(data, dict) else None
            self._models = [m for m in (items or []) if isinstance(m, dict)]
        return self._models

    def _only_model(self) -> str:
        ids = [str(m.get("id")) for m in self.models()]
        if len(ids) != 1:
            raise UserError(f"server {self.base_url} serves {len(ids)} models ({', '.join(ids[:5])})",
                            "choose one with --model-name NAME")
        return ids[0]

    def _entry(self) -> dict[str, Any]:
        return next((m for m in self.models() if m.get("id") == self.model_name), {})

    def _root_get(self, route: str) -> Any:
        try:
            return self.root_client.get(route)
        except HttpError:
            return None

    @property
    def engine(self) -> Engine:
        """The adapter-table row of the engine serving the model (``UNKNOWN`` when it shows no marker)."""
        return self._detect()[0]

    def _detect(self) -> tuple[Engine, str | None]:
        if self._engine is None:
            fingerprint = None
            if not self._entry():  # no model entry to tell by (mlx_lm.server): a completion's system_fingerprint
                try:
                    answer = self.client.post("/completions", self.one_token(prompt="Hello"))
                    fingerprint = answer.get("system_fingerprint") if isinstance(answer, dict) else None
                except HttpError:
                    fingerprint = None
            self._engine = detect(self._entry(), self._root_get, fingerprint if isinstance(fingerprint, str) else None)
        return self._engine

    def describe(self) -> EngineInfo:
        """Engine name and version (where the server tells), served model and max context."""
        engine, version = self._detect()
        return EngineInfo(engine=engine.name, version=version, model=self.model_name,
                          max_context=self.max_model_len(), base_url=self.base_url)

    def capabilities(self) -> Capabilities:
        """Probe once (see ``_openai_checks.probe_capabilities``)."""
        if self._caps is None:
            try:
                self._caps = checks.probe_capabilities(self)
            except HttpError as err:  # busy or down (retries spent), not "unsupported"
                raise UserError(f"server {self.base_url} failed while probed: {err}", "check that the server is up") from None
        return self._caps

    def _probe(self) -> list[Any]:
        """What the served weights answer on a fixed text: its prompt log-probs rounded to ``PROBE_DECIMALS``
        where the server returns them, else a short greedy continuation. Part of the fingerprint, because a
        server restarted with other weights under the same name shows nothing else that changed."""
        if self._probed is None:
            if self.capabilities().prompt_logprobs:
                scores = self.score_texts([checks.PROBE_TEXT], shift=self.logprob_shift)[checks.PROBE_TEXT]
                self._probed = [None if lp is None else round(lp, PROBE_DECIMALS) for lp in scores.logprobs]
            else:
                chat = not self.capabilities().completions
                answer = self._generate_one(GenerateRequest(prompt=checks.PROBE_TEXT, max_tokens=16, chat=chat))
                self._probed = [answer.text]
        return self._probed

    def fingerprint(self) -> str:
        """Hash of base URL, model name, the server's /v1/models entry, engine and version, settings and
        the probe's answers (``_probe``)."""
        info = self.describe()
        facts = {
            "probe": self._probe(),
            "backend": self.name,
            "base_url": self.base_url,
            "model": self.model_name,
            "entry": {k: v for k, v in self._entry().items() if k not in VOLATILE_MODEL_KEYS},
            "engine": info.engine,
            "engine_version": info.version,
            "logprob_shift": self.logprob_shift,
            "seed": self.seed,
        }
        return hashlib.sha256(json.dumps(facts, sort_keys=True, default=str).encode()).hexdigest()

    def max_model_len(self) -> int | None:
        entry = self._entry()
        for key in ("max_model_len", "context_length", "max_context_length"):
            if isinstance(entry.get(key), int) and not isinstance(entry.get(key), bool):
                return int(entry[key])
        return None

    def tokenize(self, text: str) -> list[int] | None:
        """Token ids of ``text`` (with the tokenizer's default special tokens) from the engine's tokenize route."""
        route = self.engine.tokenizer
        if route is None:
            return None
        try:
            answer = self.root_client.post(route.route, {"model": self.model_name, route.field: text, **dict(route.extra)})
        except HttpError as err:
            if err.status in (404, 405):
                return None
            raise self._fail(err) from None
        ids = answer.get(route.answer) if isinstance(answer, dict) else None
        if not isinstance(ids, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in ids):
            return None
        return list(ids)

    # ------------------------------------------------------------------ prompt log-probs
    def _require(self, what: str, ok: Callable[[Capabilities], bool], fix: str) -> None:
        if not ok(self.capabilities()):
            raise UserError(f"server {self.base_url} ({self.model_name}) does not support {what}", fix)

    def one_token(self, **fields: Any) -> dict[str, Any]:
        """A deterministic one-token request body: what the probes and prompt scoring send."""
        return {"model": self.model_name, "max_tokens": 1, "temperature": 0.0, "seed": self.seed, **fields}

    def fetch_echo(self, prompt: str, shift: int = 0) -> PromptScores:
        """``echo`` + ``logprobs``: raises HttpError, or ValueError for an unusable answer."""
        return parse_echo(self.client.post("/completions", self.one_token(prompt=prompt, echo=True, logprobs=1)), prompt, shift)

    def fetch_prompt_logprobs(self, prompt: str | list[int], shift: int = 0, top: int = 1) -> PromptScores:
        """vLLM ``prompt_logprobs`` (top-1 besides the prompt token, so greediness is exact). The prompt token
        ids are the prompt itself (token-id prompt), or come from the answer (``return_token_ids``), or else
        from the tokenize route; a token-id prompt gets no character offsets."""
        answer = self.client.post("/completions", self.one_token(prompt=prompt, prompt_logprobs=top, return_token_ids=True))
        if isinstance(prompt, list):
            return parse_prompt_logprobs(answer, None, prompt, shift)
        ids = prompt_token_ids(answer)
        if ids is None:
            ids = self.tokenize(prompt)
            if ids is None:
                raise ValueError("no prompt_token_ids in the answer and no tokenize route")
        return parse_prompt_logprobs(answer, prompt, ids, shift)

    def consistency(self) -> Consistency:
        """The self-consistency probe's result: a pass stored for this server fingerprint, else probed now."""
        self._require(
            "prompt log-probs (echo + logprobs, or vLLM prompt_logprobs, on /v1/completions)", lambda c: c.prompt_logprobs,
            "serve the model with vLLM (or another server with echo+logprobs), or run generation-only suites",
        )
        if self._consistency is None:
            fingerprint = self.fingerprint()
            self._consistency = checks.cached_pass(fingerprint) or checks.consistency_probe(self)
            checks.store_pass(fingerprint, self._consistency)
        return self._consistency

    def verify(self) -> Consistency:
        """Refuse, in one line, a server whose prompt log-probs failed the self-consistency probe."""
        result = self.consistency()
        if not result.ok:
            info = self.describe()
            known = f"; known problem of {info.engine}: {self.engine.known_problem}" if self.engine.known_problem else ""
            raise UserError(
                f"server {self.base_url} ({' '.join(x for x in (info.engine, info.version) if x)}, model {self.model_name}) "
                f"failed the self-consistency probe of its prompt log-probs ({self.capabilities().logprobs_via}): "
                f"{result.detail}{known}",
                "nothing was scored; score this model locally or through another engine (vLLM), or run generation-only suites")
        return result

    def score_texts(self, prompts: Sequence[str | list[int]], shift: int | None = None) -> dict[Any, PromptScores]:
        """Prompt log-probs of each distinct prompt, the way the probe chose, unchecked (``verify`` is the caller's)."""
        way = self.capabilities().logprobs_via
        if way is None:
            raise UserError(f"server {self.base_url} ({self.model_name}) does not support prompt log-probs", "use another server")
        shift = self.logprob_shift if shift is None else shift

        def one(prompt: str | list[int]) -> PromptScores:
            try:
                if way == "echo" and not isinstance(prompt, list):
                    return self.fetch_echo(prompt, shift)
                return self.fetch_prompt_logprobs(prompt, shift)
            except HttpError as err:
                raise self._fail(err) from None
            except ValueError as err:
                raise UserError(f"server {self.base_url} ({self.model_name}) returned unusable prompt log-probs "
                                f"({way}): {err}", "score this text on another server or backend") from None

        keyed = {tuple(p) if isinstance(p, list) else p: p for p in prompts}
        return dict(zip(keyed, ordered_map(one, list(keyed.values()), self.concurrency), strict=True))

    def loglikelihood(self, requests: Sequence[LoglikelihoodRequest]) -> list[Loglikelihood]:
        splits = []
        for req in requests:
            context, continuation = req.context, req.continuation
            n_spaces = len(context) - len(context.rstrip())
            if n_spaces:  # lm-eval: trailing context spaces belong to the continuation
                context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
            if not continuation:
                raise UserError(f"continuation {req.continuation!r} is empty", "give a non-empty continuation")
            splits.append((context + continuation, len(context)))
        if not splits:
            return []
        self.verify()
        scores = self.score_texts([p for p, _ in splits])
        results = []
        for prompt, boundary in splits:
            picked = continuation_tokens(scores[prompt], boundary, len(prompt))
            if not picked or picked[0] == 0:
                raise UserError("the server gives no log-prob for the first prompt token", "give every request a non-empty context")
            lps = self.values(scores[prompt], picked)
            results.append(Loglikelihood(logprob=float(sum(lps)), is_greedy=all(scores[prompt].greedy[i] for i in picked)))
        return results

    def loglikelihood_rolling(self, requests: Sequence[RollingRequest]) -> list[RollingResult]:
        """Disjoint windows within the server's context (see ``_openai_rolling``)."""
        if not requests:
            return []
        self.verify()
        return rolling(self, requests)

    def next_token_topk(self, requests: Sequence[TopKRequest]) -> list[TopKTable]:
        """Top-k tables through vLLM's ``prompt_logprobs=k`` on token-id prompts (see ``_openai_topk``)."""
        from harness.backends._openai_topk import next_token_topk

        return next_token_topk(self, requests)

    def values(self, prompt_scores: PromptScores, picked: Iterable[int]) -> list[float]:
        """The log-probs of the ``picked`` tokens; one the answer lacks (a shifted read past its end) is refused."""
        values = []
        for i in picked:
            value = prompt_scores.logprobs[i]
            if value is None:
                raise UserError(f"server {self.base_url} ({self.model_name}) gives no log-prob for prompt token {i} "
                                f"with logprob_shift={self.logprob_shift}",
                                "vLLM prompt_logprobs hold no position after the prompt: use a server whose prompt log-probs are aligned (check_alignment)")
            values.append(value)
        return values

    def check_alignment(self, reference: Backend, text: str = checks.PROBE_TEXT) -> Alignment:
        """Compare per-token prompt log-probs with ``reference`` (e.g. the transformers backend on the same model)."""
        return checks.check_alignment(self, reference, text)

    # ------------------------------------------------------------------ generation
    def generate(self, requests: Sequence[GenerateRequest]) -> list[Generation]:
        if any(r.chat for r in requests):
            self._require("chat completions", lambda c: c.chat, "use chat=false or a server with /v1/chat/completions")
        if any(not r.chat for r in requests):
            self._require("completions", lambda c: c.completions, "use chat=true or a server with /v1/completions")
        unique = list(dict.fromkeys(requests))
        outs = dict(zip(unique, ordered_map(self._generate_one, unique, self.concurrency), strict=True))
        return [outs[r] for r in requests]

    def _generate_one(self, req: GenerateRequest) -> Generation:
        route, payload = completion_request(req, self.model_name, self.seed)
        return completion_generation(self._call("POST", route, payload), req)


def open_openai(model: str, **options: Any) -> OpenAIBackend:
    """Registry factory for ``kind="openai"``: ``model`` is the served model name, or the base URL when
    ``base_url`` is not given. Options are checked by ``harness.backends.options.OpenAIOptions``."""
    base_url = options.pop("base_url", None)
    name = options.pop("model_name", None)
    if base_url is None:
        if not model.startswith(("http://", "https://")):
            raise UserError(f"no server URL for model {model!r}", "give --base-url http://HOST:PORT/v1")
        base_url = model
    elif name is None and model:
        name = model
    return OpenAIBackend(base_url, name, **options)

