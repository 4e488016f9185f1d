"""OpenAI-compatible HTTP backend: vLLM, SGLang, llama.cpp, mlx_lm.server, transformers serve.

For models that need a cluster: the engine scales (tensor/expert parallel), moegate stays the client.

- ``generate`` goes through ``/v1/completions`` (or ``/v1/chat/completions`` when ``chat=True``) with
  temperature 0 and a seed; stop strings are sent to the server and applied again locally.
- ``loglikelihood`` and ``loglikelihood_rolling`` need *prompt* log-probabilities, asked for in one of two
  ways (``capabilities()`` probes both once; echo is used when both work): ``echo: true`` with
  ``logprobs`` on ``/v1/completions`` (the legacy OpenAI API; vLLM, llama.cpp), or vLLM's
  ``prompt_logprobs`` extension (see ``_logprobs.py`` for the format and how the prompt token of each
  position is found exactly). Per-token character offsets locate the continuation, so no local tokenizer
  is needed; a token that straddles the context/continuation boundary counts as continuation.
  ``is_greedy`` comes from the top log-probs or the rank. A server that gives neither is refused with a
  one-line ``UserError``, never scored wrongly.
- ``check_alignment(reference)`` scores a short text on the server and on a local reference backend
  and reports whether the server's prompt log-probs are shifted (one llama.cpp build returned them one
  position off), whichever way the log-probs are asked for; ``logprob_shift`` corrects a known shift
  (a late ``prompt_logprobs`` answer has nothing for the last prompt token, so it is refused instead).

A server cannot prove which weights it serves: the fingerprint hashes the base URL, the model name,
what ``/v1/models`` reveals about it (id, root, max_model_len...) and the settings, nothing more.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from harness.backends._http import RETRY_STATUS, HttpError, JsonClient, RetryPolicy
from harness.backends._logprobs import PromptScores, parse_echo, parse_prompt_logprobs, prompt_token_ids
from harness.backends.base import (
    Backend,
    GenerateRequest,
    Generation,
    Loglikelihood,
    LoglikelihoodRequest,
    RollingRequest,
    RollingResult,
    WindowScore,
)
from harness.errors import UserError

PROBE_TEXT = "The capital of France is Paris. The capital of Italy is Rome."
VOLATILE_MODEL_KEYS = frozenset({"created", "object", "permission"})


@dataclass(frozen=True)
class Capabilities:
    """What the server showed it can do when probed."""

    models: tuple[str, ...]
    completions: bool
    echo_logprobs: bool
    """``echo`` + ``logprobs`` on /v1/completions returns per-token log-probs and offsets of the prompt."""
    vllm_prompt_logprobs: bool
    """vLLM's ``prompt_logprobs`` on /v1/completions returns them, with the prompt token ids."""
    chat: bool
    notes: tuple[str, ...] = ()

    @property
    def logprobs_via(self) -> str | None:
        """How prompt log-probs are asked for: "echo" when it works, else "prompt_logprobs", else None."""
        return "echo" if self.echo_logprobs else "prompt_logprobs" if self.vllm_prompt_logprobs else None

    @property
    def prompt_logprobs(self) -> bool:
        """The server can score (loglikelihood, rolling) one way or the other."""
        return self.logprobs_via is not None


@dataclass(frozen=True)
class Alignment:
    """Server prompt log-probs vs a local reference on the same text."""

    shift: int
    """The offset s for which server[k + s] best matches reference[k]; 0 when aligned."""
    mean_abs_diff: dict[int, float] = field(default_factory=dict)
    """Mean |server[k + s] - reference[k]| per tried shift s."""
    max_abs_diff: float = 0.0
    """Largest per-token difference at the best shift."""
    tokens: int = 0

    def ok(self, tol: float = 1e-2) -> bool:
        return self.shift == 0 and self.max_abs_diff <= tol


class OpenAIBackend:
    """Client for one model on an OpenAI-compatible server.

    Args:
        base_url: e.g. ``http://127.0.0.1:8000/v1`` (``/v1`` is added when missing).
        model_name: the served model id; default the only one ``/v1/models`` lists.
        api_key: sent as a bearer token when given.
        concurrency: requests in flight at once.
        timeout_s: per-request timeout.
        max_retries: retries on 429/5xx/timeouts/connection errors, with exponential backoff and jitter.
        seed: sent with every request (servers that honour it become reproducible when sampling).
        logprob_shift: correct a server whose prompt log-probs are shifted (see ``check_alignment``).
    """

    name = "openai"

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
        self.client = JsonClient(self.base_url, api_key=api_key, timeout_s=timeout_s,
                                 retry=RetryPolicy(max_retries=max_retries), **kwargs)
        self.root_client = JsonClient(self.base_url.removesuffix("/v1"), api_key=api_key, timeout_s=timeout_s,
                                      retry=RetryPolicy(max_retries=max_retries), **kwargs)
        """For vLLM's ``/tokenize``, which lives beside ``/v1``, not under it."""
        self.concurrency = max(1, int(concurrency))
        self.seed = seed
        self.logprob_shift = int(logprob_shift)
        self._models: list[dict[str, Any]] | None = None
        self.model_name = model_name or self._only_model()
        self._caps: Capabilities | None = None

    # ------------------------------------------------------------------ server facts
    def _call(self, method: str, path: str, payload: dict[str, Any] | None = None) -> Any:
        try:
            return self.client.get(path) if method == "GET" else self.client.post(path, payload or {})
        except HttpError as err:
            raise UserError(f"server {self.base_url} failed: {err}", "check that the server is up and serves this model") from None

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
            raise UserError(f"server {self.base_url} serves {len(ids)} models ({', '.join(ids[:5])})", "choose one with --model NAME")
        return ids[0]

    def capabilities(self) -> Capabilities:
        """Probe once: listed models, plain completions, prompt log-probs (echo; vLLM prompt_logprobs), chat."""
        if self._caps is not None:
            return self._caps
        try:
            self._caps = self._probe()
        except HttpError as err:  # busy or down (retries spent), not "unsupported"
            raise UserError(f"server {self.base_url} failed while probed: {err}", "check that the server is up") from None
        return self._caps

    def _probe(self) -> Capabilities:
        notes: list[str] = []
        completions = echo = vllm = chat = False
        try:
            self.client.post("/completions", self._one_token(prompt="Hello"))
            completions = True
        except HttpError as err:
            _unsupported_or_raise(err)
            notes.append(f"completions: {err}")
        if completions:
            echo = self._probe_logprobs("echo+logprobs", lambda: self._fetch_echo(PROBE_TEXT), notes)
            vllm = self._probe_logprobs("prompt_logprobs", lambda: self._fetch_prompt_logprobs(PROBE_TEXT), notes)
        try:
            self.client.post("/chat/completions", self._one_token(messages=[{"role": "user", "content": "Hello"}]))
            chat = True
        except HttpError as err:
            _unsupported_or_raise(err)
            notes.append(f"chat: {err}")
        return Capabilities(tuple(str(m.get("id")) for m in self.models()), completions, echo, vllm, chat, tuple(notes))

    @staticmethod
    def _probe_logprobs(what: str, fetch: Callable[[], PromptScores], notes: list[str]) -> bool:
        """True when ``fetch`` gives log-probs for the probe text; a 4xx or an unusable answer means no."""
        try:
            scores = fetch()
        except HttpError as err:
            _unsupported_or_raise(err)
            notes.append(f"{what}: {err}")
            return False
        except ValueError as err:
            notes.append(f"{what}: {err}")
            return False
        return len(scores.offsets) >= 2 and any(lp is not None for lp in scores.logprobs)

    def fingerprint(self) -> str:
        """Hash of base URL, model name, the server's /v1/models entry and settings (weights cannot be proven)."""
        entry = next((m for m in self.models() if m.get("id") == self.model_name), {})
        facts = {
            "backend": self.name,
            "base_url": self.base_url,
            "model": self.model_name,
            "entry": {k: v for k, v in entry.items() if k not in VOLATILE_MODEL_KEYS},
            "logprob_shift": self.logprob_shift,
            "seed": self.seed,
        }
        return hashlib.sha256(json.dumps(facts, sort_keys=True, default=str).encode()).hexdigest()

    def max_model_len(self) -> int | None:
        entry = next((m for m in self.models() if m.get("id") == self.model_name), {})
        for key in ("max_model_len", "context_length", "max_context_length"):
            if isinstance(entry.get(key), int):
                return int(entry[key])
        return None

    # ------------------------------------------------------------------ prompt log-probs
    def _require(self, what: str, ok: Callable[[Capabilities], bool], fix: str) -> None:
        if not ok(self.capabilities()):
            raise UserError(f"server {self.base_url} ({self.model_name}) does not support {what}", fix)

    def _one_token(self, **fields: Any) -> dict[str, Any]:
        """A deterministic one-token request body: what the probes and prompt scoring send."""
        return {"model": self.model_name, "max_tokens": 1, "temperature": 0.0, "seed": self.seed, **fields}

    def _fetch_echo(self, prompt: str, shift: int = 0) -> PromptScores:
        """``echo`` + ``logprobs``: raises HttpError, or ValueError for an unusable answer."""
        payload = self._one_token(prompt=prompt, echo=True, logprobs=1)
        return parse_echo(self.client.post("/completions", payload), prompt, shift)

    def _fetch_prompt_logprobs(self, prompt: str, shift: int = 0) -> PromptScores:
        """vLLM ``prompt_logprobs`` (top-1 besides the prompt token, so greediness is exact); the prompt token
        ids come from the answer (``return_token_ids``, newer vLLM) or else from ``/tokenize``."""
        payload = self._one_token(prompt=prompt, prompt_logprobs=1, return_token_ids=True)
        answer = self.client.post("/completions", payload)
        ids = prompt_token_ids(answer)
        if ids is None:
            try:
                tokens = self.root_client.post("/tokenize", {"model": self.model_name, "prompt": prompt,
                                                             "add_special_tokens": True})
            except HttpError as err:
                if err.status in (404, 405):
                    raise ValueError("no prompt_token_ids in the answer and no /tokenize route") from None
                raise
            ids = tokens.get("tokens") if isinstance(tokens, dict) else None
            if not isinstance(ids, list) or not all(isinstance(t, int) for t in ids):
                raise ValueError("no prompt_token_ids in the answer and /tokenize gave no token ids")
        return parse_prompt_logprobs(answer, prompt, ids, shift)

    def _scores_many(self, prompts: Sequence[str], raw: bool = False) -> dict[str, PromptScores]:
        """Prompt log-probs of each distinct prompt, the way the probe chose (``raw``: ignore ``logprob_shift``)."""
        self._require(
            "prompt log-probs (echo + logprobs, or vLLM prompt_logprobs, on /v1/completions)", lambda c: c.prompt_logprobs,
            "serve the model with vLLM (or another server with echo+logprobs), or run generation-only suites",
        )
        fetch = self._fetch_echo if self.capabilities().logprobs_via == "echo" else self._fetch_prompt_logprobs
        shift = 0 if raw else self.logprob_shift

        def one(prompt: str) -> PromptScores:
            try:
                return fetch(prompt, shift)
            except HttpError as err:
                raise UserError(f"server {self.base_url} failed: {err}", "check that the server is up and serves this model") from None
            except ValueError as err:
                raise UserError(f"server {self.base_url} ({self.model_name}) returned unusable prompt log-probs "
                                f"({self.capabilities().logprobs_via}): {err}", "score this text on another server or backend") from None

        unique = list(dict.fromkeys(prompts))
        return dict(zip(unique, self._map(one, unique), strict=True))

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
        scores = self._scores_many([p for p, _ in splits])
        results = []
        for prompt, boundary in splits:
            prompt_scores = scores[prompt]
            ends = [*list(prompt_scores.offsets[1:]), len(prompt)]
            picked = [i for i, end in enumerate(ends) if end > boundary]
            if not picked or picked[0] == 0:
                raise UserError("the server gives no log-prob for the first prompt token", "give every request a non-empty context")
            lps = self._values(prompt_scores, picked)
            results.append(Loglikelihood(logprob=float(sum(lps)), is_greedy=all(prompt_scores.greedy[i] for i in picked)))
        return results

    def loglikelihood_rolling(self, requests: Sequence[RollingRequest]) -> list[RollingResult]:
        """Whole text in one request; when it has more tokens than the window, windows cut at the server's token offsets."""
        scores = self._scores_many([r.text for r in requests])
        chunks: list[tuple[int, str]] = []
        for index, req in enumerate(requests):
            window = req.window or self.max_model_len()
            prompt_scores = scores[req.text]
            if window is None or len(prompt_scores.offsets) <= window:
                chunks.append((index, req.text))
                continue
            if window < 2:
                raise UserError(f"rolling window {window} is too small", "use a window of at least 2 tokens")
            starts = [*list(prompt_scores.offsets[::window]), len(req.text)]
            chunks.extend((index, req.text[a:b]) for a, b in itertools.pairwise(starts) if b > a)
        chunk_scores = self._scores_many([t for _, t in chunks if t not in scores]) | scores
        windows: list[list[WindowScore]] = [[] for _ in requests]
        for index, text in chunks:
            lps = self._values(chunk_scores[text], range(1, len(chunk_scores[text].logprobs)))
            if lps:
                windows[index].append(WindowScore(logprob=float(sum(lps)), tokens=len(lps)))
        return [RollingResult(windows=tuple(w)) for w in windows]

    def _values(self, prompt_scores: PromptScores, picked: Iterable[int]) -> list[float]:
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

    def check_alignment(self, reference: Backend, text: str = PROBE_TEXT) -> Alignment:
        """Compare per-token prompt log-probs with ``reference`` (e.g. the transformers backend on the same model)."""
        prompt_scores = self._scores_many([text], raw=True)[text]  # judge the server as it answers
        offsets = [*list(prompt_scores.offsets), len(text)]
        reqs = [LoglikelihoodRequest(text[: offsets[k]], text[offsets[k]: offsets[k + 1]]) for k in range(1, len(prompt_scores.offsets))]
        ref = [None, *(r.logprob for r in reference.loglikelihood(reqs))]
        diffs: dict[int, list[float]] = {}
        for shift in (-1, 0, 1):
            raw = prompt_scores.logprobs
            diffs[shift] = [abs(raw[k + shift] - ref[k]) for k in range(1, len(ref))
                            if 0 <= k + shift < len(raw) and raw[k + shift] is not None and ref[k] is not None]
        means = {s: sum(d) / len(d) for s, d in diffs.items() if d}
        best = min(means, key=lambda s: (means[s], abs(s)))
        return Alignment(shift=best, mean_abs_diff=means, max_abs_diff=max(diffs[best]), tokens=len(ref) - 1)

    # ------------------------------------------------------------------ generation
    def generate(self, requests: Sequence[GenerateRequest]) -> list[Generation]:
        if any(r.chat for r in requests):
            self._require("chat completions", lambda c: c.chat, "use chat=false or a server with /v1/chat/completions")
        if any(not r.chat for r in requests):
            self._require("completions", lambda c: c.completions, "use chat=true or a server with /v1/completions")
        unique = list(dict.fromkeys(requests))
        outs = dict(zip(unique, self._map(self._generate_one, unique), strict=True))
        return [outs[r] for r in requests]

    def _generate_one(self, req: GenerateRequest) -> Generation:
        payload: dict[str, Any] = {"model": self.model_name, "max_tokens": req.max_tokens,
                                   "temperature": req.temperature, "seed": req.seed if req.temperature > 0 else self.seed}
        stops = [s for s in req.stop if s]
        if stops:
            payload["stop"] = stops
        if req.chat:
            payload["messages"] = [{"role": "user", "content": req.prompt}]
            answer = self._call("POST", "/chat/completions", payload)
        else:
            payload["prompt"] = req.prompt
            answer = self._call("POST", "/completions", payload)
        choice = (answer.get("choices") or [{}])[0]
        text = choice.get("text") if not req.chat else (choice.get("message") or {}).get("content")
        text = text or ""
        reason = "stop" if choice.get("finish_reason") in ("stop", "eos", "stop_sequence") else "length"
        cuts = [text.find(s) for s in stops if s in text]
        if cuts:
            text, reason = text[: min(cuts)], "stop"
        tokens = int(((answer.get("usage") or {}).get("completion_tokens")) or 0)
        return Generation(text=text, tokens=tokens, finish_reason=reason)

    def _map(self, fn: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
        if len(items) <= 1 or self.concurrency == 1:
            return [fn(x) for x in items]
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(items))) as pool:
            return list(pool.map(fn, items))


def _unsupported_or_raise(err: HttpError) -> None:
    """A 4xx answer to a probe means "not supported"; a spent retry budget or a 5xx means the server failed."""
    if err.status == 0 or err.status in RETRY_STATUS or err.status >= 500:
        raise err


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
