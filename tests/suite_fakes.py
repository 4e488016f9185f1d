"""A tiny deterministic backend for testing suites' record building (never for scores of a real model).

Its "tokenizer" is whitespace words: rolling windows are word windows, each word's log-probability is
``-0.1 * len(word)``; generations come from a canned function of the prompt.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from harness.backends.base import (
    GenerateRequest,
    Generation,
    Loglikelihood,
    LoglikelihoodRequest,
    RollingRequest,
    RollingResult,
    WindowScore,
)


class WordBackend:
    name = "fake"

    def __init__(self, answer: Callable[[GenerateRequest], str] | None = None) -> None:
        self.answer = answer or (lambda request: "")
        self.calls: list[tuple[str, int]] = []
        """(method, batch size) per call, to check that suites batch their requests."""
        self.rolling_texts: list[str] = []
        self.generate_requests: list[GenerateRequest] = []

    def fingerprint(self) -> str:
        return "fake-word-backend"

    def loglikelihood(self, requests: Sequence[LoglikelihoodRequest]) -> list[Loglikelihood]:
        self.calls.append(("loglikelihood", len(requests)))
        return [Loglikelihood(-0.1 * len(r.continuation), True) for r in requests]

    def loglikelihood_rolling(self, requests: Sequence[RollingRequest]) -> list[RollingResult]:
        self.calls.append(("loglikelihood_rolling", len(requests)))
        results = []
        for request in requests:
            self.rolling_texts.append(request.text)
            words = request.text.split()
            size = request.window or 16
            windows = tuple(
                WindowScore(
                    logprob=-0.1 * sum(len(w) for w in words[i : i + size]), tokens=len(words[i : i + size])
                )
                for i in range(0, len(words), size)
            )
            results.append(RollingResult(windows=windows))
        return results

    def generate(self, requests: Sequence[GenerateRequest]) -> list[Generation]:
        self.calls.append(("generate", len(requests)))
        out = []
        for request in requests:
            self.generate_requests.append(request)
            text = self.answer(request)
            for stop in request.stop:
                if stop in text:
                    text = text[: text.index(stop)]
            out.append(Generation(text=text, tokens=len(text.split()), finish_reason="stop"))
        return out
