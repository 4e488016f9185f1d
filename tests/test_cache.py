"""The request cache: no repeated model calls, SIGKILL-safe resume, never shared between models."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from harness.backends import open_backend
from harness.backends.base import (
    Backend,
    GenerateRequest,
    Loglikelihood,
    LoglikelihoodRequest,
    RollingRequest,
    TopKRequest,
)
from harness.cache import CachedBackend, RequestCache, chunk_bounds, request_key
from harness.divergence import TokenIds, encode_topk
from harness.errors import UserError
from tests.tiny_models import build_tiny_moe

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = [f"Item {i}: the answer is" for i in range(12)]


class CountingBackend:
    """Wraps a real backend and records every request it is actually asked to compute."""

    def __init__(self, inner: Backend) -> None:
        self.inner = inner
        self.name = inner.name
        self.seen: list[object] = []

    def fingerprint(self) -> str:
        return self.inner.fingerprint()

    def loglikelihood(self, requests: Sequence[LoglikelihoodRequest]):  # type: ignore[no-untyped-def]
        self.seen.extend(requests)
        return self.inner.loglikelihood(requests)

    def loglikelihood_rolling(self, requests: Sequence[RollingRequest]):  # type: ignore[no-untyped-def]
        self.seen.extend(requests)
        return self.inner.loglikelihood_rolling(requests)

    def generate(self, requests: Sequence[GenerateRequest]):  # type: ignore[no-untyped-def]
        self.seen.extend(requests)
        return self.inner.generate(requests)


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny-cache")
    return {"a": build_tiny_moe("qwen2_moe", root / "a", seed=0), "b": build_tiny_moe("qwen2_moe", root / "b", seed=1)}


@pytest.fixture(scope="module")
def backend_a(tiny_dirs: dict[str, Path]) -> Backend:
    return open_backend(str(tiny_dirs["a"]), device="cpu", max_length=64)


def test_second_run_makes_no_model_calls_and_dedups(tmp_path: Path, backend_a: Backend) -> None:
    ll = [LoglikelihoodRequest(p, " yes") for p in PROMPTS[:4]] + [LoglikelihoodRequest(PROMPTS[0], " yes")]
    gen = [GenerateRequest(p, max_tokens=4) for p in PROMPTS[:3]]
    roll = [RollingRequest("a b c d e f g h i j k", window=5)]
    counting = CountingBackend(backend_a)
    cached = CachedBackend(counting, RequestCache(tmp_path / "c.sqlite"), chunk_size=2)
    first = (cached.loglikelihood(ll), cached.generate(gen), cached.loglikelihood_rolling(roll))
    assert len(counting.seen) == 4 + 3 + 1  # the duplicate is computed once
    assert first[0][0] == first[0][4]
    direct = backend_a.loglikelihood(ll)
    assert [r.logprob for r in first[0]] == pytest.approx([r.logprob for r in direct], abs=1e-5)
    again = CachedBackend(counting, RequestCache(tmp_path / "c.sqlite"), chunk_size=2)
    second = (again.loglikelihood(ll), again.generate(gen), again.loglikelihood_rolling(roll))
    assert second == first
    assert len(counting.seen) == 8 and again.stats.misses == 0 and again.stats.model_calls == 0
    assert again.stats.hits == len(ll) + len(gen) + len(roll)
    changed = again.generate([GenerateRequest(PROMPTS[0], max_tokens=5)])  # decoding settings are part of the key
    assert again.stats.misses == 1 and len(changed) == 1


def test_different_fingerprints_never_share_entries(tmp_path: Path, tiny_dirs: dict[str, Path], backend_a: Backend) -> None:
    backend_b = open_backend(str(tiny_dirs["b"]), device="cpu", max_length=64)
    assert backend_a.fingerprint() != backend_b.fingerprint()
    cache = RequestCache(tmp_path / "shared.sqlite")
    ll = [LoglikelihoodRequest("The sky is", " blue")]
    a = CachedBackend(backend_a, cache).loglikelihood(ll)
    cached_b = CachedBackend(backend_b, cache)
    b = cached_b.loglikelihood(ll)
    assert cached_b.stats.hits == 0 and cached_b.stats.misses == 1
    assert a != b and b == backend_b.loglikelihood(ll)
    assert request_key("x", "generate", ll[0]) != request_key("y", "generate", ll[0])
    assert request_key("x", "generate", ll[0]) != request_key("x", "loglikelihood", ll[0])


_CHILD = textwrap.dedent(
    """
    import json, sys, time
    from harness.backends import open_backend
    from harness.backends.base import GenerateRequest
    from harness.cache import CachedBackend, RequestCache
    model, cache_path, log_path, out_path, prompts = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], json.loads(sys.argv[5])
    inner = open_backend(model, device="cpu", max_length=64)

    class Logged:
        name = inner.name
        def fingerprint(self):
            return inner.fingerprint()
        def generate(self, requests):
            out = inner.generate(requests)
            with open(log_path, "a") as log:
                log.write(json.dumps([r.prompt for r in requests]) + "\\n")
            time.sleep(0.4)
            return out

    # a local backend's chunks are bounded by new text: 85 characters hold two of these prompts and their tokens
    cached = CachedBackend(Logged(), RequestCache(cache_path), chunk_chars=85)
    results = cached.generate([GenerateRequest(p, max_tokens=5) for p in prompts])
    with open(out_path, "w") as out:
        json.dump([[g.text, g.tokens, g.finish_reason] for g in results], out)
    """
)


def _child(model: Path, tmp: Path, tag: str) -> subprocess.Popen[bytes]:
    env = dict(os.environ, PYTHONPATH=str(ROOT), MOEGATE_QUIET="1")
    args = [str(model), str(tmp / "cache.sqlite"), str(tmp / f"log-{tag}.jsonl"), str(tmp / f"out-{tag}.json"), json.dumps(PROMPTS)]
    return subprocess.Popen([sys.executable, "-c", _CHILD, *args], env=env, cwd=tmp)


def test_sigkill_resumes_without_repeating_finished_items(tmp_path: Path, tiny_dirs: dict[str, Path]) -> None:
    killed = _child(tiny_dirs["a"], tmp_path, "killed")
    log = tmp_path / "log-killed.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and (not log.exists() or len(log.read_text().splitlines()) < 2):
        time.sleep(0.05)
    os.kill(killed.pid, signal.SIGKILL)
    killed.wait()
    assert killed.returncode == -signal.SIGKILL and not (tmp_path / "out-killed.json").exists()
    backend = open_backend(str(tiny_dirs["a"]), device="cpu", max_length=64)
    keys = {request_key(backend.fingerprint(), "generate", GenerateRequest(p, max_tokens=5)): p for p in PROMPTS}
    cache = RequestCache(tmp_path / "cache.sqlite")
    committed = {keys[k] for k in cache.get_many(list(keys))}
    assert 2 <= len(committed) < len(PROMPTS) and len(cache) == len(committed)
    cache.close()

    resumed = _child(tiny_dirs["a"], tmp_path, "resumed")
    assert resumed.wait(timeout=300) == 0
    computed_again = [p for line in (tmp_path / "log-resumed.jsonl").read_text().splitlines() for p in json.loads(line)]
    assert sorted(computed_again) == sorted(set(PROMPTS) - committed)  # finished items are never recomputed

    fresh = backend.generate([GenerateRequest(p, max_tokens=5) for p in PROMPTS])
    resumed_out = json.loads((tmp_path / "out-resumed.json").read_text())
    assert resumed_out == [[g.text, g.tokens, g.finish_reason] for g in fresh]


def test_local_chunks_keep_a_shared_start_together_and_bound_new_text() -> None:
    stem = "An example question, and its answer. " * 80  # 2,960 characters every request starts with
    shared = [LoglikelihoodRequest(stem + f"Question {i}?", f" {c}") for i in range(30) for c in "ABCDEFGHIJ"]
    assert chunk_bounds(shared, max_requests=4096, max_chars=32_768) == [(0, 300)]  # the start counts once
    alone = [LoglikelihoodRequest("ab"[i % 2] + f"{i:03d}" + "x" * 996, " A") for i in range(100)]  # 1,002 new each
    assert [b - a for a, b in chunk_bounds(alone, max_requests=4096, max_chars=32_768)] == [32, 32, 32, 4]
    generations = [GenerateRequest(f"p{i}", max_tokens=1000) for i in range(10)]  # about 4,000 characters each
    assert [b - a for a, b in chunk_bounds(generations, max_requests=4096, max_chars=10_000)] == [2, 2, 2, 2, 2]
    assert chunk_bounds(alone[:5], max_requests=2, max_chars=None) == [(0, 2), (2, 4), (4, 5)]
    assert chunk_bounds([LoglikelihoodRequest("y" * 50_000, " A")], max_requests=9, max_chars=100) == [(0, 1)]


@pytest.mark.slow
def test_two_processes_share_one_cache(tmp_path: Path, tiny_dirs: dict[str, Path]) -> None:
    first, second = _child(tiny_dirs["a"], tmp_path, "p1"), _child(tiny_dirs["a"], tmp_path, "p2")
    assert first.wait(timeout=300) == 0 and second.wait(timeout=300) == 0
    out1 = json.loads((tmp_path / "out-p1.json").read_text())
    assert out1 == json.loads((tmp_path / "out-p2.json").read_text())
    assert len(RequestCache(tmp_path / "cache.sqlite")) == len(PROMPTS)


TOPK_TEXT = " ".join(PROMPTS) * 2


def test_topk_tables_are_cached_in_their_binary_form(tmp_path: Path, backend_a: Backend) -> None:
    cache = RequestCache(tmp_path / "c.sqlite")
    (base,) = backend_a.next_token_topk([TopKRequest(TOPK_TEXT, k=16, window=32)])
    requests = [TopKRequest(TOPK_TEXT, k=2, window=32, probe=TokenIds(base.top_ids)),
                TopKRequest(TOPK_TEXT, k=2, window=32, probe=TokenIds(base.top_ids[:, :8])), TopKRequest(TOPK_TEXT, k=2, window=32)]
    first = CachedBackend(backend_a, cache).next_token_topk(requests)
    again = CachedBackend(backend_a, cache)
    second = again.next_token_topk(requests)
    assert again.stats.model_calls == 0 and again.stats.hits == 3
    assert len(cache) == 4  # each probe its own entry, and the rolling result of their one text's windows
    assert all(a == b for a, b in zip(first, second, strict=True)) and second[1].probe_ids.shape[1] == 8
    stored = [v for (v,) in cache._conn.execute("SELECT value FROM results WHERE kind = 'next_token_topk'")]
    compact = [json.dumps({"topk": base64.b64encode(encode_topk(t)).decode()}) for t in first]
    assert sorted(map(len, stored)) == sorted(map(len, compact))  # the binary form, base64 in the JSON column

    class NoTopK:
        name = "toy"

        def fingerprint(self) -> str:
            return "toy"

    with pytest.raises(UserError, match="the toy backend cannot return next-token top-k tables"):
        CachedBackend(NoTopK(), cache).next_token_topk(requests)  # type: ignore[arg-type]


class ServedLike:
    """A backend that keeps ``concurrency`` requests in flight and records each batch it is handed."""

    name = "served-like"

    def __init__(self, concurrency: int) -> None:
        self.concurrency = concurrency
        self.batches: list[int] = []

    def fingerprint(self) -> str:
        return f"served-like-{self.concurrency}"

    def loglikelihood(self, requests: Sequence[LoglikelihoodRequest]) -> list[Loglikelihood]:
        self.batches.append(len(requests))
        return [Loglikelihood(logprob=-1.0, is_greedy=True) for _ in requests]


# concurrency 1 is a local backend: its chunks are bounded by new text, and 500 short requests fit in one
@pytest.mark.parametrize(("concurrency", "chunk"), [(1, 500), (8, 64), (32, 128), (100, 400)])
def test_chunks_keep_a_servers_requests_in_flight(tmp_path: Path, concurrency: int, chunk: int) -> None:
    backend = ServedLike(concurrency)
    cached = CachedBackend(backend, RequestCache(tmp_path / "c.sqlite"))  # type: ignore[arg-type]
    cached.loglikelihood([LoglikelihoodRequest(f"q{i}", " a") for i in range(500)])
    assert backend.batches[0] == chunk and sum(backend.batches) == 500
