"""A small JSON-over-HTTP client with bounded retries, for the OpenAI-compatible backend.

Standard library only (``urllib``, ``concurrent.futures``), so the client adds no dependency. Retries cover what a busy
inference server does under load: 429 (rate limit), 5xx, timeouts and refused/reset connections. Each
retry waits ``base * 2**attempt`` seconds (capped), times a random jitter in [0.5, 1.5), or the
server's ``Retry-After`` when it gives one. 4xx other than 408/429 is the caller's fault and is not
retried. ``ordered_map`` keeps at most N requests in flight and returns results in request order; the
first request that fails for good cancels those not yet started (they would fail the same way), so a
dropped server ends a call within one retry budget, and what the request cache stored before stays.
"""

from __future__ import annotations

import http.client
import json
import random
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")
R = TypeVar("R")

RETRY_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504})


class HttpError(Exception):
    """A request that failed for good: ``status`` is the HTTP status (0 for a network failure)."""

    def __init__(self, url: str, status: int, body: str, attempts: int) -> None:
        self.url, self.status, self.body, self.attempts = url, status, body, attempts
        what = f"HTTP {status}" if status else "no response"
        super().__init__(f"{url}: {what} after {attempts} attempt(s): {' '.join(body[:300].split())}")


@dataclass
class RetryPolicy:
    max_retries: int = 5
    """Retries after the first attempt (so at most ``max_retries + 1`` requests)."""
    base_s: float = 0.5
    cap_s: float = 20.0

    def delay(self, attempt: int, retry_after: str | None, rng: random.Random) -> float:
        if retry_after:
            try:
                return min(self.cap_s, max(0.0, float(retry_after)))
            except ValueError:
                pass
        return min(self.cap_s, self.base_s * 2**attempt) * rng.uniform(0.5, 1.5)


class JsonClient:
    """POST/GET JSON to ``base_url`` with a timeout and a retry policy. Thread-safe (no shared state but the RNG)."""

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        timeout_s: float = 120.0,
        retry: RetryPolicy | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.timeout_s = timeout_s
        self.retry = retry or RetryPolicy()
        self._sleep = sleep
        self._rng = random.Random(0)
        self.retries_done = 0
        """Retries so far (for reports and tests)."""

    def get(self, path: str) -> Any:
        return self._request("GET", path, None)

    def post(self, path: str, payload: dict[str, Any]) -> Any:
        return self._request("POST", path, payload)

    def _request(self, method: str, path: str, payload: dict[str, Any] | None) -> Any:
        url = f"{self.base_url}{path}"
        data = json.dumps(payload).encode() if payload is not None else None
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        attempt = 0
        while True:
            status, body, retry_after = 0, "", None
            try:
                req = urllib.request.Request(url, data=data, headers=headers, method=method)
                with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                    return json.loads(resp.read().decode("utf-8"))
            except urllib.error.HTTPError as err:
                status, retry_after = err.code, err.headers.get("Retry-After")
                body = err.read().decode("utf-8", "replace")
                if status not in RETRY_STATUS:
                    raise HttpError(url, status, body, attempt + 1) from None
            except (urllib.error.URLError, TimeoutError, ConnectionError, http.client.HTTPException) as err:
                # HTTPException: the server closed the connection mid-answer (IncompleteRead, RemoteDisconnected)
                body = str(getattr(err, "reason", err)) or type(err).__name__
            except json.JSONDecodeError as err:
                raise HttpError(url, 200, f"response is not JSON: {err}", attempt + 1) from None
            if attempt >= self.retry.max_retries:
                raise HttpError(url, status, body, attempt + 1)
            self._sleep(self.retry.delay(attempt, retry_after, self._rng))
            attempt += 1
            self.retries_done += 1


def ordered_map(fn: Callable[[T], R], items: Sequence[T], concurrency: int) -> list[R]:
    """``[fn(x) for x in items]`` with at most ``concurrency`` calls at once; the first failure is raised."""
    if concurrency <= 1 or len(items) <= 1:
        return [fn(x) for x in items]
    with ThreadPoolExecutor(max_workers=min(concurrency, len(items))) as pool:
        futures = [pool.submit(fn, x) for x in items]
        try:
            return [f.result() for f in futures]
        except BaseException:
            for future in futures:
                future.cancel()
            raise
