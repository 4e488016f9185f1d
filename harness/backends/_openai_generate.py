"""One generation request as an OpenAI-compatible completion call, and the answer as a ``Generation`` (pure).

Stop strings go to the server and are cut again here: engines differ in whether they return the stop string
and in what they call the finish reason ("stop", "eos", "stop_sequence"); the text moegate records is cut
before the first stop string, as the local backends cut it.
"""

from __future__ import annotations

from typing import Any

from harness.backends.base import GenerateRequest, Generation

STOP_REASONS = ("stop", "eos", "stop_sequence")


def completion_request(req: GenerateRequest, model_name: str, seed: int) -> tuple[str, dict[str, Any]]:
    """The route and payload; a greedy request carries the backend's seed, a sampled one its own."""
    payload: dict[str, Any] = {"model": model_name, "max_tokens": req.max_tokens,
                               "temperature": req.temperature, "seed": req.seed if req.temperature > 0 else seed}
    stops = [s for s in req.stop if s]
    if stops:
        payload["stop"] = stops
    if req.chat:
        payload["messages"] = [{"role": "user", "content": req.prompt}]
        return "/chat/completions", payload
    payload["prompt"] = req.prompt
    return "/completions", payload


def completion_generation(answer: dict[str, Any], req: GenerateRequest) -> Generation:
    choice = (answer.get("choices") or [{}])[0]
    text = choice.get("text") if not req.chat else (choice.get("message") or {}).get("content")
    text = text or ""
    reason = "stop" if choice.get("finish_reason") in STOP_REASONS else "length"
    cuts = [text.find(s) for s in req.stop if s and s in text]
    if cuts:
        text, reason = text[: min(cuts)], "stop"
    tokens = int(((answer.get("usage") or {}).get("completion_tokens")) or 0)
    return Generation(text=text, tokens=tokens, finish_reason=reason)
