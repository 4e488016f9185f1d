"""OpenAI-compatible backend against real server processes on 127.0.0.1.

Scoring (echo + logprobs, and vLLM's prompt_logprobs) is checked against ``tests/openai_ref_server.py``
(a reference server over a transformers model: no installed third-party server returns prompt
log-probs); generation and the refusal of scoring are checked against mlx_lm.server, a third-party server.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from harness.backends import open_backend
from harness.backends._http import RetryPolicy
from harness.backends._logprobs import _offsets, parse_prompt_logprobs
from harness.backends.base import GenerateRequest, LoglikelihoodRequest, RollingRequest
from harness.backends.openai import OpenAIBackend
from harness.errors import UserError
from tests.tiny_models import build_tiny_moe

HERE = Path(__file__).parent
TEXTS = ["The quick brown fox jumps over the lazy dog.", "Paris is the capital of France, and Rome of Italy."]
PAIRS = [LoglikelihoodRequest("The capital of France is", " Paris"),
         LoglikelihoodRequest("The capital of France is ", "Paris."),
         LoglikelihoodRequest("2 + 2 =", " 4")]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(cmd: list[str], port: int, timeout_s: float = 120) -> subprocess.Popen[bytes]:
    """Start ``cmd`` and wait (bounded) until GET /v1/models answers."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        return _wait_ready(proc, port, timeout_s)
    except BaseException:
        stop_server(proc)
        raise


def _wait_ready(proc: subprocess.Popen[bytes], port: int, timeout_s: float) -> subprocess.Popen[bytes]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {proc.stderr.read().decode()[-2000:] if proc.stderr else ''}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=2) as resp:
                if resp.status == 200:
                    return proc
        except OSError:
            time.sleep(0.3)
    raise RuntimeError(f"server on port {port} not ready within {timeout_s} s")


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_moe("qwen2_moe", tmp_path_factory.mktemp("tiny") / "qwen2_moe")


def ref_server(model: Path | str, *extra: str) -> Iterator[str]:
    port = free_port()
    proc = start_server([sys.executable, str(HERE / "openai_ref_server.py"), "--model", str(model),
                         "--port", str(port), *extra], port)
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        stop_server(proc)


@pytest.fixture(scope="module")
def server(tiny: Path) -> Iterator[str]:
    yield from ref_server(tiny)


@pytest.fixture(scope="module")
def reference(tiny: Path):
    return open_backend(str(tiny), dtype="float32", device="cpu")


def test_scoring_matches_transformers(server: str, reference) -> None:
    backend = open_backend("ref", kind="openai", base_url=server, concurrency=4)
    caps = backend.capabilities()
    assert caps.prompt_logprobs and caps.completions and caps.chat and caps.models[0] == "ref"
    assert caps.echo_logprobs and caps.vllm_prompt_logprobs and caps.logprobs_via == "echo"  # both work: echo
    got, want = backend.loglikelihood(PAIRS), reference.loglikelihood(PAIRS)
    for g, w in zip(got, want, strict=True):
        assert g.logprob == pytest.approx(w.logprob, rel=1e-4, abs=1e-4)
        assert g.is_greedy == w.is_greedy
    rolled, ref_rolled = backend.loglikelihood_rolling([RollingRequest(t) for t in TEXTS]), \
        reference.loglikelihood_rolling([RollingRequest(t) for t in TEXTS])
    for g, w in zip(rolled, ref_rolled, strict=True):
        assert g.tokens == w.tokens
        assert g.logprob == pytest.approx(w.logprob, rel=1e-4)
    windowed = backend.loglikelihood_rolling([RollingRequest(TEXTS[0], window=4)])[0]
    assert len(windowed.windows) >= 3 and all(w.tokens <= 3 for w in windowed.windows)
    assert backend.check_alignment(reference).ok()


def test_generate_matches_transformers(server: str, reference) -> None:
    backend = OpenAIBackend(server, "ref")
    reqs = [GenerateRequest("Once upon a time", max_tokens=6), GenerateRequest("Hi", max_tokens=5, chat=True)]
    for g, w in zip(backend.generate(reqs), reference.generate(reqs), strict=True):
        assert g.text == w.text


def test_fingerprint_names_server_and_model(server: str) -> None:
    a = OpenAIBackend(server, "ref")
    assert a.fingerprint() == OpenAIBackend(server, "ref", concurrency=1).fingerprint()
    assert a.fingerprint() != OpenAIBackend(server, "ref", logprob_shift=1).fingerprint()
    assert a.fingerprint() != OpenAIBackend(server, "ref-shifted").fingerprint()
    with pytest.raises(UserError, match="serves 6 models"):
        OpenAIBackend(server)
    assert a.max_model_len() == 512


def test_shifted_server_is_detected_and_corrected(server: str, reference) -> None:
    raw = OpenAIBackend(server, "ref-shifted")
    alignment = raw.check_alignment(reference)
    assert alignment.shift == 1 and not alignment.ok()
    assert alignment.mean_abs_diff[1] < 1e-3 < alignment.mean_abs_diff[0]
    fixed = OpenAIBackend(server, "ref-shifted", logprob_shift=1).loglikelihood(PAIRS)
    for g, w in zip(fixed, reference.loglikelihood(PAIRS), strict=True):
        assert g.logprob == pytest.approx(w.logprob, rel=1e-4, abs=1e-4)


def test_server_without_prompt_logprobs_is_refused(server: str) -> None:
    backend = OpenAIBackend(server, "ref-noecho")
    caps = backend.capabilities()
    assert not caps.prompt_logprobs and not caps.echo_logprobs and not caps.vllm_prompt_logprobs
    assert caps.logprobs_via is None
    with pytest.raises(UserError, match="does not support prompt log-probs") as refused:
        backend.loglikelihood(PAIRS[:1])
    assert "\n" not in str(refused.value) and "prompt_logprobs" in str(refused.value)
    with pytest.raises(UserError, match="does not support prompt log-probs"):
        backend.loglikelihood_rolling([RollingRequest(TEXTS[0])])
    assert backend.generate([GenerateRequest("Hi", max_tokens=2)])[0].tokens == 2


def test_vllm_prompt_logprobs_match_transformers(server: str, reference) -> None:
    """prompt_logprobs only (echo ignored): the same scores, greedy flags and alignment as transformers."""
    backend = OpenAIBackend(server, "ref-vllm", concurrency=2)
    caps = backend.capabilities()
    assert not caps.echo_logprobs and caps.vllm_prompt_logprobs and caps.logprobs_via == "prompt_logprobs"
    words = TEXTS[1].split(" ")
    contexts = [" ".join(words[:i]) for i in range(2, 6)]
    argmax = [g.text for g in reference.generate([GenerateRequest(c, max_tokens=1) for c in contexts])]
    reqs = [*PAIRS, *(LoglikelihoodRequest(c, t) for c, t in zip(contexts, argmax, strict=True) if t.strip()),
            *(LoglikelihoodRequest(c, " " + w) for c, w in zip(contexts, words[2:], strict=False))]
    want = reference.loglikelihood(reqs)
    assert {w.is_greedy for w in want} == {True, False}
    for g, w in zip(backend.loglikelihood(reqs), want, strict=True):
        assert g.logprob == pytest.approx(w.logprob, abs=1e-3)
        assert g.is_greedy == w.is_greedy
    rolling = [RollingRequest(t) for t in TEXTS]
    for g, w in zip(backend.loglikelihood_rolling(rolling), reference.loglikelihood_rolling(rolling), strict=True):
        assert g.tokens == w.tokens
        assert g.logprob == pytest.approx(w.logprob, abs=1e-3)
    alignment = backend.check_alignment(reference)
    assert alignment.ok() and alignment.tokens >= 10


def test_vllm_token_ids_from_tokenize_route(server: str, reference) -> None:
    """Older vLLM (no prompt_token_ids in the answer): the ids come from /tokenize, the scores are the same."""
    backend = OpenAIBackend(server, "ref-vllm-noids")
    assert backend.capabilities().logprobs_via == "prompt_logprobs"
    for g, w in zip(backend.loglikelihood(PAIRS), reference.loglikelihood(PAIRS), strict=True):
        assert g.logprob == pytest.approx(w.logprob, abs=1e-3)


def test_vllm_shifted_server_is_detected_and_not_scored(server: str, reference) -> None:
    alignment = OpenAIBackend(server, "ref-vllm-shifted").check_alignment(reference)
    assert alignment.shift == 1 and not alignment.ok()
    assert alignment.mean_abs_diff[1] < 1e-3 < alignment.mean_abs_diff[0]
    # a late prompt_logprobs answer holds nothing for the last prompt token: refused, not scored short
    late = OpenAIBackend(server, "ref-vllm-shifted", logprob_shift=1)
    with pytest.raises(UserError, match="no log-prob for prompt token"):
        late.loglikelihood(PAIRS[:1])
    with pytest.raises(UserError, match="no log-prob for prompt token"):
        late.loglikelihood_rolling([RollingRequest(TEXTS[0])])


def test_vllm_tokens_that_do_not_spell_the_prompt_are_refused(server: str) -> None:
    """A character split into byte tokens decodes to U+FFFD piece by piece: no exact offsets, so refused."""
    with pytest.raises(UserError, match=r"server http://127\.0\.0\.1:\d+/v1 \(ref-vllm\) returned unusable.*do not spell"):
        OpenAIBackend(server, "ref-vllm").loglikelihood([LoglikelihoodRequest("A rare sign:", " \U0001d518")])


@given(st.text(max_size=5), st.lists(st.text(min_size=1, max_size=5), max_size=8))
def test_prompt_offsets_from_decoded_tokens(first: str, rest: list[str]) -> None:
    prompt = first + "".join(rest)
    ends = [len(first) + sum(len(t) for t in rest[:i]) for i in range(len(rest))]
    assert _offsets(prompt, rest) == (0, *ends)
    if rest:
        with pytest.raises(ValueError, match="do not spell"):
            _offsets(prompt + "x", [*rest[:-1], rest[-1] + "y"])


def test_prompt_logprobs_need_the_prompt_token_entry() -> None:
    answer = {"choices": [{"prompt_logprobs": [None, {"7": {"logprob": -1.0, "rank": 1, "decoded_token": "b"}}]}]}
    assert parse_prompt_logprobs(answer, "ab", [3, 7]).logprobs == (None, -1.0)
    with pytest.raises(ValueError, match="no entry for the prompt token id 8"):
        parse_prompt_logprobs(answer, "ab", [3, 8])
    with pytest.raises(ValueError, match="2 prompt_logprobs entries for 3 prompt tokens"):
        parse_prompt_logprobs(answer, "ab", [3, 7, 9])


def test_retries_on_429_and_503_then_gives_up(tmp_path: Path) -> None:
    for url in ref_server("", "--fail-first", "3"):
        backend = OpenAIBackend(url, sleep=lambda _s: None)
        assert backend.generate([GenerateRequest("x", max_tokens=1)])[0].text == "ok"
        assert backend.client.retries_done == 3
    for url in ref_server("", "--fail-first", "10"):
        backend = OpenAIBackend(url, max_retries=2, sleep=lambda _s: None)
        with pytest.raises(UserError, match=r"after 3 attempt.*busy"):
            backend.generate([GenerateRequest("x", max_tokens=1)])


def test_unreachable_server_and_bad_options() -> None:
    port = free_port()
    with pytest.raises(UserError, match="failed"):
        OpenAIBackend(f"http://127.0.0.1:{port}", "m", max_retries=1, sleep=lambda _s: None).fingerprint()
    with pytest.raises(UserError, match="unknown openai backend option"):
        open_backend("m", kind="openai", base_url="http://127.0.0.1:1", temperature=1)
    with pytest.raises(UserError, match="not http"):
        OpenAIBackend("ftp://x", "m")


@given(st.integers(0, 30), st.floats(0.01, 5), st.floats(0.1, 60))
def test_backoff_is_bounded_and_grows(attempt: int, base: float, cap: float) -> None:
    import random

    policy = RetryPolicy(base_s=base, cap_s=cap)
    delay = policy.delay(attempt, None, random.Random(attempt))
    assert 0 <= delay <= 1.5 * min(cap, base * 2**attempt)
    assert delay >= 0.5 * min(cap, base * 2**attempt)
    assert policy.delay(attempt, "0", random.Random(0)) == 0


@pytest.mark.slow
@pytest.mark.mlx
def test_mlx_lm_server_generates_like_transformers(tiny: Path, reference) -> None:
    """A real third-party server: greedy generation equals ours; scoring is refused (no prompt logprobs)."""
    cfg = json.loads((tiny / "config.json").read_text())
    cfg.setdefault("rope_theta", cfg.get("rope_parameters", {}).get("rope_theta", 10000.0))
    (tiny / "config.json").write_text(json.dumps(cfg))
    port = free_port()
    proc = start_server([sys.executable, "-m", "mlx_lm.server", "--model", str(tiny), "--host", "127.0.0.1",
                         "--port", str(port)], port, timeout_s=180)
    try:
        backend = OpenAIBackend(f"http://127.0.0.1:{port}", str(tiny), timeout_s=120)
        reqs = [GenerateRequest("Once upon a time", max_tokens=5)]
        assert [g.text for g in backend.generate(reqs)] == [g.text for g in reference.generate(reqs)]
        assert not backend.capabilities().prompt_logprobs
        with pytest.raises(UserError, match="prompt log-probs"):
            backend.loglikelihood(PAIRS[:1])
    finally:
        stop_server(proc)
