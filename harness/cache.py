"""The request cache: SQLite keyed by model fingerprint + request kind + request content.

Unlike lm-eval's cache (keyed by request only, lm-eval issue #2715), two models never share entries:
the key starts with the backend's fingerprint (weights sample, tokenizer, dtype, settings). Misses are
computed in chunks and each chunk is committed at once, so a run killed with SIGKILL resumes where it
stopped, losing at most one chunk. A remote backend's chunk is a count of requests (enough to keep its
concurrency busy); a local one's is a budget of new text (``LOCAL_CHUNK_CHARS``), so the requests of a
suite that share a few-shot start reach the backend together and it computes that start once, not once
per 64 requests. A text-form top-k table computed by a backend whose tables hold its rolling scores
(``topk_scores_rolling``) is also stored as the rolling result of the same windows. WAL mode and a busy
timeout let two processes share one cache file.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import sqlite3
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from harness.backends.base import (
    Backend,
    GenerateRequest,
    Generation,
    Loglikelihood,
    LoglikelihoodRequest,
    RollingRequest,
    RollingResult,
    TopKRequest,
    WindowScore,
    rolling_request_of,
    rolling_result_of,
)
from harness.divergence.topk import TopKTable, decode_topk, encode_topk
from harness.errors import UserError
from harness.progress import progress_bar

CACHE_VERSION = 1
"""Bump when a backend's results change meaning, to orphan old entries."""
_SQL_BATCH = 500
LOCAL_CHUNK_REQUESTS = 4096
"""At most this many misses per call of a local backend (one without ``concurrency``, or with 1)."""
LOCAL_CHUNK_CHARS = 32_768
"""A local backend's chunk holds at most this many characters of new text (about 8,000 tokens): each request
counts its text beyond what it shares with the request before it in the chunk (a few-shot start counts once),
plus ``GENERATED_CHARS`` per generation token it may produce. A SIGKILL loses at most this much work."""
GENERATED_CHARS = 4
"""Characters a generated token stands for in a chunk's budget (a token of English is about four)."""


def canonical_json(obj: Any) -> str:
    """Deterministic JSON (sorted keys, no spaces) of a request dataclass or plain data.

    A field holding a large array (a top-k request's probe ids) enters as its ``cache_identity()``, a
    content hash, so the key covers every id without writing millions of them into JSON.
    """
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        obj = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=_identity)


def _identity(value: Any) -> Any:
    if hasattr(value, "cache_identity"):
        return value.cache_identity()
    raise TypeError(f"{type(value).__name__} cannot enter a request key")


def request_key(fingerprint: str, kind: str, request: Any) -> str:
    """sha256 of fingerprint + kind + the request's full content (decoding settings included)."""
    payload = f"v{CACHE_VERSION}\0{fingerprint}\0{kind}\0{canonical_json(request)}"
    return hashlib.sha256(payload.encode()).hexdigest()


class RequestCache:
    """A SQLite file of ``key -> JSON result``; safe for several processes at once."""

    def __init__(self, path: str | Path, *, timeout_s: float = 120.0) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._conn = sqlite3.connect(str(self.path), timeout=timeout_s, check_same_thread=False)
            self._conn.execute(f"PRAGMA busy_timeout={int(timeout_s * 1000)}")
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.execute(
                "CREATE TABLE IF NOT EXISTS results (key TEXT PRIMARY KEY, kind TEXT NOT NULL, value TEXT NOT NULL)"
            )
            self._conn.commit()
        except (sqlite3.DatabaseError, OSError) as exc:
            raise UserError(f"request cache {self.path} cannot be opened ({exc})", "delete it or pass another cache path") from None
        self._lock = threading.Lock()

    def get_many(self, keys: Sequence[str]) -> dict[str, Any]:
        found: dict[str, Any] = {}
        unique = list(dict.fromkeys(keys))
        with self._lock:
            for start in range(0, len(unique), _SQL_BATCH):
                part = unique[start:start + _SQL_BATCH]
                marks = ",".join("?" * len(part))
                for key, value in self._conn.execute(f"SELECT key, value FROM results WHERE key IN ({marks})", part):
                    found[key] = json.loads(value)
        return found

    def put_many(self, kind: str, items: Sequence[tuple[str, Any]]) -> None:
        """Store and commit at once (a later crash keeps these)."""
        rows = [(key, kind, json.dumps(value, sort_keys=True)) for key, value in items]
        with self._lock:
            self._conn.executemany("INSERT OR REPLACE INTO results (key, kind, value) VALUES (?, ?, ?)", rows)
            self._conn.commit()

    def __len__(self) -> int:
        with self._lock:
            return int(self._conn.execute("SELECT COUNT(*) FROM results").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._conn.close()


@dataclasses.dataclass
class CacheStats:
    hits: int = 0
    """Requests answered from the cache."""
    misses: int = 0
    """Requests not in the cache (duplicates within a call count once)."""
    model_calls: int = 0
    """Backend method calls made for the misses (one per chunk)."""


def _decode_loglikelihood(value: Any) -> Loglikelihood:
    return Loglikelihood(**value)


def _decode_rolling(value: Any) -> RollingResult:
    return RollingResult(windows=tuple(WindowScore(**w) for w in value["windows"]))


def _decode_generation(value: Any) -> Generation:
    return Generation(**value)


def _encode_topk(table: TopKTable) -> dict[str, str]:
    """The table's binary form (``harness.divergence.topk``), base64 in the JSON column."""
    return {"topk": base64.b64encode(encode_topk(table)).decode("ascii")}


def _decode_topk(value: Any) -> TopKTable:
    return decode_topk(base64.b64decode(value["topk"]))


_FIELD_TYPES: dict[str, tuple[type, ...]] = {"float": (int, float), "int": (int,), "bool": (bool,), "str": (str,)}


def _well_formed(value: Any) -> bool:
    """Every float/int/bool/str field of a decoded result (dataclasses, tuples of them) holds that type."""
    if isinstance(value, tuple):
        return all(_well_formed(v) for v in value)
    if not dataclasses.is_dataclass(value) or isinstance(value, type):
        return True
    for spec in dataclasses.fields(value):
        field_value = getattr(value, spec.name)
        wanted = _FIELD_TYPES.get(str(spec.type))
        if wanted is None:
            if not _well_formed(field_value):
                return False
        elif not isinstance(field_value, wanted) or (isinstance(field_value, bool) and bool not in wanted):
            return False
    return True


class CachedBackend:
    """Any ``Backend`` with a request cache in front: same protocol, same results, fewer model calls.

    Args:
        backend: the backend that computes misses.
        cache: a ``RequestCache`` or a path to its SQLite file.
        chunk_size: most misses per backend call (default: a remote backend 64, or 4x its concurrency when
            larger; a local one ``LOCAL_CHUNK_REQUESTS``); each chunk is committed as soon as it is computed.
        chunk_chars: most new text per backend call (see ``LOCAL_CHUNK_CHARS``, the default of a local
            backend; a remote one has none).
        description: label for the progress bar.
    """

    def __init__(self, backend: Backend, cache: RequestCache | str | Path, *, chunk_size: int | None = None,
                 chunk_chars: int | None = None, description: str = "") -> None:  # fmt: skip
        self.backend = backend
        self.cache = cache if isinstance(cache, RequestCache) else RequestCache(cache)
        concurrency = int(getattr(backend, "concurrency", 1))
        # a server's chunk is never smaller than 4x what it keeps in flight; a local backend's is bounded by work
        default = max(64, 4 * concurrency) if concurrency > 1 else LOCAL_CHUNK_REQUESTS
        self.chunk_size = max(1, int(chunk_size)) if chunk_size is not None else default
        local_chars = LOCAL_CHUNK_CHARS if concurrency <= 1 else None
        self.chunk_chars = max(1, int(chunk_chars)) if chunk_chars is not None else local_chars
        self.description = description or backend.name
        self.stats = CacheStats()

    @property
    def name(self) -> str:
        return self.backend.name

    def fingerprint(self) -> str:
        return self.backend.fingerprint()

    def __getattr__(self, attr: str) -> Any:
        # model, tokenizer, route_trace... of the wrapped backend stay reachable.
        if attr == "backend":
            raise AttributeError(attr)
        return getattr(self.backend, attr)

    def loglikelihood(self, requests: Sequence[LoglikelihoodRequest]) -> list[Loglikelihood]:
        return self._run("loglikelihood", requests, self.backend.loglikelihood, _decode_loglikelihood)

    def loglikelihood_rolling(self, requests: Sequence[RollingRequest]) -> list[RollingResult]:
        return self._run("loglikelihood_rolling", requests, self.backend.loglikelihood_rolling, _decode_rolling)

    def generate(self, requests: Sequence[GenerateRequest]) -> list[Generation]:
        return self._run("generate", requests, self.backend.generate, _decode_generation)

    def next_token_topk(self, requests: Sequence[TopKRequest]) -> list[TopKTable]:
        compute = getattr(self.backend, "next_token_topk", None)
        if compute is None:
            raise UserError(
                f"the {self.name} backend cannot return next-token top-k tables",
                "run this suite with the transformers, mlx or openai (vLLM) backend",
            )
        if not getattr(self.backend, "topk_scores_rolling", False):
            return self._run("next_token_topk", requests, compute, _decode_topk, _encode_topk)

        def compute_and_share(chunk: list[TopKRequest]) -> list[TopKTable]:
            tables = compute(chunk)
            self._store_rolling(chunk, tables)
            return tables

        return self._run("next_token_topk", requests, compute_and_share, _decode_topk, _encode_topk)

    def _store_rolling(self, requests: Sequence[TopKRequest], tables: Sequence[TopKTable]) -> None:
        """Each text-form table's rolling result, under its rolling request's key: a suite that scores the same
        windows' perplexity (wikitext2 beside kld) then needs no forward pass of its own."""
        fingerprint = self.backend.fingerprint()
        shared = [(request_key(fingerprint, "loglikelihood_rolling", rolling), dataclasses.asdict(rolling_result_of(table)))
                  for request, table in zip(requests, tables, strict=True)
                  if (rolling := rolling_request_of(request)) is not None]  # fmt: skip
        if shared:
            self.cache.put_many("loglikelihood_rolling", shared)

    def _decoded(self, kind: str, decode: Callable[[Any], Any], value: Any) -> Any:
        """A cached result decoded and type-checked; a wrong shape is the cache's fault, not a model's."""
        try:
            result = decode(value)
            problem = None if _well_formed(result) else "fields of the wrong type"
        except (TypeError, KeyError, ValueError, AttributeError, IndexError) as exc:
            problem = f"{type(exc).__name__}: {exc}"
        if problem is not None:
            path = self.cache.path
            raise UserError(f"request cache {path} holds a {kind} result of the wrong shape ({problem})",
                            f"clear the cache: delete {path} (or set MOEGATE_CACHE_DIR to another folder) and rerun")
        return result

    def _run(self, kind: str, requests: Sequence[Any], compute: Callable[[list[Any]], list[Any]], decode: Callable[[Any], Any],
             encode: Callable[[Any], Any] = dataclasses.asdict) -> list[Any]:
        fingerprint = self.backend.fingerprint()
        keys = [request_key(fingerprint, kind, r) for r in requests]
        found = self.cache.get_many(keys)
        missing: dict[str, Any] = {}
        for key, request in zip(keys, requests, strict=True):
            if key not in found and key not in missing:
                missing[key] = request
        self.stats.hits += sum(1 for k in keys if k in found)
        self.stats.misses += len(missing)
        results: dict[str, Any] = {k: self._decoded(kind, decode, v) for k, v in found.items()}
        todo = list(missing.items())
        with progress_bar(len(todo), f"{kind} · {self.description}") as advance:
            for start, stop in chunk_bounds([r for _, r in todo], max_requests=self.chunk_size, max_chars=self.chunk_chars):
                chunk = todo[start:stop]
                outputs = compute([r for _, r in chunk])
                self.stats.model_calls += 1
                if len(outputs) != len(chunk):
                    raise RuntimeError(f"backend {self.name} returned {len(outputs)} results for {len(chunk)} requests")
                self.cache.put_many(kind, [(k, encode(o)) for (k, _), o in zip(chunk, outputs, strict=True)])
                results.update({k: o for (k, _), o in zip(chunk, outputs, strict=True)})
                advance(len(chunk))
        return [results[k] for k in keys]


def chunk_bounds(requests: Sequence[Any], *, max_requests: int, max_chars: int | None) -> list[tuple[int, int]]:
    """``(start, stop)`` of consecutive chunks: at most ``max_requests`` each and, with ``max_chars``, at most that
    much new text (a request's string fields beyond the start it shares with the previous request of its chunk,
    plus ``GENERATED_CHARS`` per token of its ``max_tokens``); a chunk always holds at least one request."""
    bounds: list[tuple[int, int]] = []
    start, chars, previous = 0, 0, ""
    for index, request in enumerate(requests):
        text = _text(request)
        extra = GENERATED_CHARS * int(getattr(request, "max_tokens", 0) or 0)
        new = len(text) - _shared_start(previous, text) + extra
        if index > start and (index - start >= max_requests or (max_chars is not None and chars + new > max_chars)):
            bounds.append((start, index))
            start, chars, new = index, 0, len(text) + extra  # a new chunk computes its shared start again
        chars, previous = chars + new, text
    if start < len(requests):
        bounds.append((start, len(requests)))
    return bounds


def _text(request: Any) -> str:
    """A request's string fields in declaration order (a context then its continuation, a prompt, a text)."""
    if not dataclasses.is_dataclass(request):
        return ""
    return "".join(v for f in dataclasses.fields(request) if isinstance(v := getattr(request, f.name), str))


def _shared_start(a: str, b: str) -> int:
    """Length of the longest common prefix of ``a`` and ``b`` (a binary search over C-level slice compares)."""
    lo, hi = 0, min(len(a), len(b))
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


def default_cache_path() -> Path:
    from harness.resources import cache_dir

    return cache_dir() / "requests.sqlite"
