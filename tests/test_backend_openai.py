"""OpenAI-compatible backend against server processes on 127.0.0.1.

Mechanics (scoring in both prompt log-prob formats, shifted and misaligned servers, the self-consistency
probe, context windows, retries, concurrency, a dropped server) against ``tests/openai_ref_server.py``, a
reference server over a tiny transformers model with knobs for every case. The real engines (vLLM,
llama-cpp-python, mlx_lm.server, transformers serve) are in ``tests/test_engines.py``.
"""

from __future__ import annotations

import json
import os
import random
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from harness.backends import open_backend
from harness.backends._engines import (
    ENGINES,
    LLAMA_CPP_PYTHON,
    MLX_LM,
    TRANSFORMERS_SERVE,
    UNKNOWN,
    VLLM,
    detect,
)
from harness.backends._http import RetryPolicy, ordered_map
from harness.backends._logprobs import _offsets, continuation_tokens, parse_prompt_logprobs, prompt_positions
from harness.backends.base import GenerateRequest, LoglikelihoodRequest, RollingRequest
from harness.backends.openai import OpenAIBackend
from harness.cache import CachedBackend, RequestCache
from harness.errors import UserError
from tests.servers import free_port, start_server, stop_server
from tests.tiny_models import build_tiny_moe

HERE = Path(__file__).parent
TEXTS = ["The quick brown fox jumps over the lazy dog.", "Paris is the capital of France, and Rome of Italy."]
PAIRS = [LoglikelihoodRequest("The capital of France is", " Paris"),
         LoglikelihoodRequest("The capital of France is ", "Paris."),
         LoglikelihoodRequest("2 + 2 =", " 4")]
SCRIPTS = [LoglikelihoodRequest("The capital of Russia is", " Москва"), LoglikelihoodRequest("The capital of Japan is", " 東京"),
           LoglikelihoodRequest("The capital of Egypt is", " القاهرة"), LoglikelihoodRequest("The capital of India is", " नई दिल्ली"),
           LoglikelihoodRequest("The capital of Greece is", " Αθήνα"), LoglikelihoodRequest("A smile:", " 🙂"),
           LoglikelihoodRequest("A rare sign:", " \U0001d518")]
"""Non-ASCII continuations in several scripts: byte-level BPE splits their characters into several tokens."""


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_moe("qwen2_moe", tmp_path_factory.mktemp("tiny") / "qwen2_moe")


@pytest.fixture(autouse=True)
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Self-consistency passes are stored in moegate's cache: each test starts without any."""
    monkeypatch.setenv("MOEGATE_CACHE_DIR", str(tmp_path / "cache"))


def ref_server(model: Path | str, *extra: str, port: int | None = None) -> Iterator[str]:
    port = port or free_port()
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


def stats(url: str) -> dict[str, int]:
    with urllib.request.urlopen(url.removesuffix("/v1") + "/stats", timeout=5) as resp:
        return json.loads(resp.read())


def assert_same_scores(got, want, tol: float = 1e-4) -> None:
    for g, w in zip(got, want, strict=True):
        assert g.logprob == pytest.approx(w.logprob, rel=tol, abs=tol)
        assert g.is_greedy == w.is_greedy


# ------------------------------------------------------------------------------------------ scoring
def test_scoring_matches_transformers(server: str, reference) -> None:
    backend = open_backend("ref", kind="openai", base_url=server, concurrency=4)
    caps = backend.capabilities()
    assert caps.prompt_logprobs and caps.completions and caps.chat and caps.models[0] == "ref"
    assert caps.echo_logprobs and caps.vllm_prompt_logprobs and caps.logprobs_via == "echo"  # unknown engine: echo
    assert_same_scores(backend.loglikelihood(PAIRS), reference.loglikelihood(PAIRS))
    rolled, ref_rolled = backend.loglikelihood_rolling([RollingRequest(t) for t in TEXTS]), \
        reference.loglikelihood_rolling([RollingRequest(t) for t in TEXTS])
    for g, w in zip(rolled, ref_rolled, strict=True):
        assert g.tokens == w.tokens
        assert g.logprob == pytest.approx(w.logprob, rel=1e-4)
    windowed = backend.loglikelihood_rolling([RollingRequest(TEXTS[0], window=4)])[0]
    assert len(windowed.windows) >= 3 and all(w.tokens <= 3 for w in windowed.windows)
    assert backend.loglikelihood_rolling([RollingRequest(TEXTS[0], window=4, windows=2)])[0].windows == windowed.windows[:2]
    assert backend.check_alignment(reference).ok()
    consistency = backend.verify()
    assert consistency.ok and consistency.tokens >= 4 and consistency.max_abs_diff < 1e-3


@pytest.mark.parametrize("name", ["ref", "ref-vllm"])
def test_every_continuation_token_counts_in_every_script(server: str, reference, name: str) -> None:
    """A token that is part of the continuation's first character is zero-width at the boundary: it counts."""
    backend = OpenAIBackend(server, name)
    assert backend.capabilities().logprobs_via == ("echo" if name == "ref" else "prompt_logprobs")
    assert_same_scores(backend.loglikelihood(SCRIPTS), reference.loglikelihood(SCRIPTS), tol=1e-3)


def test_vllm_prompt_logprobs_match_transformers(server: str, reference) -> None:
    """vLLM's row (owned_by vllm): prompt_logprobs first, rolling windows cut exactly in token ids."""
    backend = OpenAIBackend(server, "ref-vllm", concurrency=2)
    caps = backend.capabilities()
    assert not caps.echo_logprobs and caps.vllm_prompt_logprobs and caps.logprobs_via == "prompt_logprobs"
    assert backend.engine is VLLM and backend.describe().engine == "vllm"
    words = TEXTS[1].split(" ")
    contexts = [" ".join(words[:i]) for i in range(2, 6)]
    argmax = [g.text for g in reference.generate([GenerateRequest(c, max_tokens=1) for c in contexts])]
    reqs = [*PAIRS, *(LoglikelihoodRequest(c, t) for c, t in zip(contexts, argmax, strict=True) if t.strip()),
            *(LoglikelihoodRequest(c, " " + w) for c, w in zip(contexts, words[2:], strict=False))]
    want = reference.loglikelihood(reqs)
    assert {w.is_greedy for w in want} == {True, False}
    assert_same_scores(backend.loglikelihood(reqs), want, tol=1e-3)
    rolling = [RollingRequest(t) for t in TEXTS] + [RollingRequest(TEXTS[1], window=5), RollingRequest(TEXTS[1], window=5, windows=1)]
    for g, w in zip(backend.loglikelihood_rolling(rolling), reference.loglikelihood_rolling(rolling), strict=True):
        assert [x.tokens for x in g.windows] == [x.tokens for x in w.windows]
        assert g.logprob == pytest.approx(w.logprob, abs=1e-3)
    alignment = backend.check_alignment(reference)
    assert alignment.ok() and alignment.tokens >= 10


def test_vllm_token_ids_from_tokenize_route(server: str, reference) -> None:
    """Older vLLM (no prompt_token_ids in the answer): the ids come from /tokenize, the scores are the same."""
    backend = OpenAIBackend(server, "ref-vllm-noids")
    assert backend.capabilities().logprobs_via == "prompt_logprobs"
    assert_same_scores(backend.loglikelihood(PAIRS), reference.loglikelihood(PAIRS), tol=1e-3)


def test_long_texts_stay_inside_the_servers_context(tiny: Path, reference) -> None:
    """A text longer than the context: vLLM's row cuts token windows client-side (none exceeds it); a server
    without token-id prompts gets the whole text, and its context-length 400 becomes a one-line hint."""
    long = " ".join(TEXTS * 12)  # ~280 tokens
    for url in ref_server(tiny, "--max-len", "64"):
        exact = OpenAIBackend(url, "ref-vllm")
        got = exact.loglikelihood_rolling([RollingRequest(long)])[0]
        want = reference.loglikelihood_rolling([RollingRequest(long, window=63)])[0]
        assert len(got.windows) >= 4 and max(w.tokens for w in got.windows) == 62
        assert got.logprob == pytest.approx(want.logprob, abs=1e-3)
        with pytest.raises(UserError, match=r"window 64 tokens does not fit .* context of 64 tokens .* use a window of at most 63"):
            exact.loglikelihood_rolling([RollingRequest(long, window=64)])
        with pytest.raises(UserError, match=r"refused a request longer than its context of 64 tokens.*--max-model-len") as hint:
            OpenAIBackend(url, "ref").loglikelihood_rolling([RollingRequest(long)])
        assert "\n" not in str(hint.value) and "server is up" not in str(hint.value)


# ------------------------------------------------------------------------- misaligned servers
def test_shifted_server_is_refused_unless_corrected(server: str, reference) -> None:
    raw = OpenAIBackend(server, "ref-shifted")
    alignment = raw.check_alignment(reference)
    assert alignment.shift == 1 and not alignment.ok() and "shifted by +1" in alignment.describe()
    assert alignment.mean_abs_diff[1] < 1e-3 < alignment.mean_abs_diff[0]
    with pytest.raises(UserError, match=r"failed the self-consistency probe.*nothing was scored") as refused:
        raw.loglikelihood(PAIRS)  # no local model needed to refuse it
    assert "\n" not in str(refused.value)
    assert_same_scores(OpenAIBackend(server, "ref-shifted", logprob_shift=1).loglikelihood(PAIRS), reference.loglikelihood(PAIRS))


def test_self_paired_server_fits_no_shift_and_is_refused(server: str, reference) -> None:
    """llama-cpp-python's echo without BOS: each token with the prediction made after it. No shift fits."""
    backend = OpenAIBackend(server, "ref-selfpair")
    alignment = backend.check_alignment(reference)
    assert alignment.shift is None and not alignment.ok() and alignment.describe().startswith("no shift fits")
    with pytest.raises(UserError, match=r"failed the self-consistency probe.*differ by up to"):
        backend.loglikelihood(PAIRS[:1])
    with pytest.raises(UserError, match="self-consistency"):
        backend.loglikelihood_rolling([RollingRequest(TEXTS[0])])
    assert backend.generate([GenerateRequest("Hi", max_tokens=2)])[0].tokens == 2  # generation still runs


def test_vllm_shifted_server_is_detected_and_not_scored(server: str, reference) -> None:
    alignment = OpenAIBackend(server, "ref-vllm-shifted").check_alignment(reference)
    assert alignment.shift == 1 and not alignment.ok()
    assert alignment.mean_abs_diff[1] < 1e-3 < alignment.mean_abs_diff[0]
    # a late prompt_logprobs answer holds nothing for the last prompt token: refused, not scored short
    late = OpenAIBackend(server, "ref-vllm-shifted", logprob_shift=1)
    with pytest.raises(UserError, match=r"self-consistency probe.*gives no log-prob"):
        late.loglikelihood(PAIRS[:1])


def test_a_passing_probe_is_stored_per_server_fingerprint(server: str) -> None:
    OpenAIBackend(server, "ref").verify()
    stored = sorted((Path(os.environ["MOEGATE_CACHE_DIR"]) / "servers").glob("*.json"))
    assert [p.stem for p in stored] == [OpenAIBackend(server, "ref").fingerprint()]
    fresh = OpenAIBackend(server, "ref")
    fresh.capabilities()
    posts = stats(server)["posts"]
    # no consistency probe: read from the cache; one request is the fingerprint's probe of the served weights
    assert fresh.verify().ok and stats(server)["posts"] == posts + 1


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


# --------------------------------------------------------------------- identity and generation
def test_generate_matches_transformers(server: str, reference) -> None:
    backend = OpenAIBackend(server, "ref")
    reqs = [GenerateRequest("Once upon a time", max_tokens=6), GenerateRequest("Hi", max_tokens=5, chat=True)]
    for g, w in zip(backend.generate(reqs), reference.generate(reqs), strict=True):
        assert g.text == w.text


def test_fingerprint_names_server_model_and_engine(server: str) -> None:
    a = OpenAIBackend(server, "ref")
    assert a.fingerprint() == OpenAIBackend(server, "ref", concurrency=1).fingerprint()
    assert a.fingerprint() != OpenAIBackend(server, "ref", logprob_shift=1).fingerprint()
    assert a.fingerprint() != OpenAIBackend(server, "ref-shifted").fingerprint()
    info = a.describe()
    assert (info.engine, info.version, info.model, info.max_context) == ("unknown", None, "ref", 512)
    assert OpenAIBackend(server, "ref-vllm").describe().engine == "vllm"
    with pytest.raises(UserError, match=r"serves 7 models.*choose one with --model-name NAME"):
        OpenAIBackend(server)
    assert a.max_model_len() == 512


# Recorded from the real engines on 127.0.0.1 (README "Serving engines"): /v1/models entry, routes, fingerprint.
DETECTED = [
    ({"id": "moegate-testbed", "object": "model", "owned_by": "vllm", "max_model_len": 2048}, {"/version": {"version": "0.32.0"}},
     None, VLLM, "0.32.0"),
    ({"id": "smollm2", "object": "model", "owned_by": "me", "permissions": []},
     {"/openapi.json": {"openapi": "3.1.0", "info": {"title": "🦙 llama.cpp Python API", "version": "0.3.36"}}}, None,
     LLAMA_CPP_PYTHON, "0.3.36"),
    ({"owned_by": "local", "id": "/models/testbed", "object": "model", "created": 0, "status": {"value": "loaded"}},
     {"/openapi.json": {"info": {"title": "FastAPI", "version": "0.1.0"}}}, None, TRANSFORMERS_SERVE, None),
    ({}, {}, "0.32.2-0.32.4-Linux-6.18.44-x86_64-with-glibc2.36-x86_64", MLX_LM, "0.32.2"),
    ({"id": "m", "owned_by": "someone"}, {"/openapi.json": {"info": {"title": "FastAPI"}}}, None, UNKNOWN, None),
]


@pytest.mark.parametrize(("entry", "routes", "system_fingerprint", "engine", "version"), DETECTED)
def test_engines_are_told_apart_by_what_they_answer(entry, routes, system_fingerprint, engine, version) -> None:
    assert detect(entry, routes.get, system_fingerprint) == (engine, version)
    assert len({e.name for e in ENGINES}) == len(ENGINES)


# ------------------------------------------------------------------------------------ parsers
@given(st.text(max_size=5), st.lists(st.text(max_size=5), max_size=8))
def test_prompt_offsets_from_decoded_tokens(first: str, rest: list[str]) -> None:
    """Pieces that spell the prompt give their start offsets ("" pieces are zero-width); others are refused."""
    prompt = first + "".join(rest)
    ends = [len(first) + sum(len(t) for t in rest[:i]) for i in range(len(rest))]
    assert _offsets(prompt, rest) == (0, *ends)
    if rest:
        with pytest.raises(ValueError, match="do not spell"):
            _offsets(prompt + "x", [*rest[:-1], rest[-1] + "y"])


def test_recorded_vllm_answer_counts_the_zero_width_token() -> None:
    """vLLM 0.32 on the test bed: " Москва" starts with a token that decodes to "" (log-prob -6.39)."""
    recorded = json.loads((HERE / "data" / "engines" / "vllm_prompt_logprobs_moskva.json").read_text())
    answer, prompt = recorded["answer"], recorded["request"]["prompt"]
    scores = parse_prompt_logprobs(answer, prompt, answer["choices"][0]["prompt_token_ids"])
    picked = continuation_tokens(scores, len("The capital of Russia is"), len(prompt))
    assert picked == list(range(5, 11)) and scores.offsets[5] == scores.offsets[6] == 24
    assert sum(scores.logprobs[i] for i in picked) == pytest.approx(-23.76, abs=0.01)  # the local backend's value
    top = prompt_positions(answer)
    assert top[0] is None and top[5][5470].rank == 62 and top[5][6054].rank == 1 and top[5][6054].text == " Russia"


def test_prompt_logprobs_need_the_prompt_token_entry() -> None:
    answer = {"choices": [{"prompt_logprobs": [None, {"7": {"logprob": -1.0, "rank": 1, "decoded_token": "b"}}]}]}
    assert parse_prompt_logprobs(answer, "ab", [3, 7]).logprobs == (None, -1.0)
    with pytest.raises(ValueError, match="no entry for the prompt token id 8"):
        parse_prompt_logprobs(answer, "ab", [3, 8])
    with pytest.raises(ValueError, match="2 prompt_logprobs entries for 3 prompt tokens"):
        parse_prompt_logprobs(answer, "ab", [3, 7, 9])


# ------------------------------------------------------------------ retries, concurrency, drops
def test_retries_on_429_and_503_then_gives_up() -> None:
    for url in ref_server("", "--fail-first", "3"):
        backend = OpenAIBackend(url, sleep=lambda _s: None)
        assert backend.generate([GenerateRequest("x", max_tokens=1)])[0].text == "ok:x"
        assert backend.client.retries_done == 3
    for url in ref_server("", "--fail-first", "10"):
        backend = OpenAIBackend(url, max_retries=2, sleep=lambda _s: None)
        with pytest.raises(UserError, match=r"after 3 attempt.*busy"):
            backend.generate([GenerateRequest("x", max_tokens=1)])


def test_concurrency_is_bounded_and_order_kept() -> None:
    prompts = [f"p{i}" for i in range(40)]
    for url in ref_server("", "--jitter", "0.05"):
        backend = OpenAIBackend(url, concurrency=4)
        texts = [g.text for g in backend.generate([GenerateRequest(p, max_tokens=1) for p in prompts])]
        assert texts == [f"ok:{p}" for p in prompts]
        assert 2 <= stats(url)["max_in_flight"] <= 4


def test_a_slow_server_times_out() -> None:
    for url in ref_server("", "--delay", "2"):
        backend = OpenAIBackend(url, timeout_s=0.2, max_retries=1, sleep=lambda _s: None)
        start = time.monotonic()
        with pytest.raises(UserError, match=r"no response after 2 attempt"):
            backend.generate([GenerateRequest("x", max_tokens=1)])
        assert time.monotonic() - start < 1.5


def test_a_dropped_server_resumes_from_the_cache(tmp_path: Path) -> None:
    """The server dies mid-run: the call fails in one line, the committed chunks stay, a rerun asks only the rest."""
    port, prompts = free_port(), [GenerateRequest(f"q{i}", max_tokens=1) for i in range(12)]
    cache = RequestCache(tmp_path / "requests.sqlite")
    for url in ref_server("", "--exit-after", "10", port=port):  # the probes (capabilities, fingerprint), one chunk of 4, then it dies
        first = CachedBackend(OpenAIBackend(url, concurrency=2, max_retries=1, sleep=lambda _s: None), cache, chunk_size=4)
        with pytest.raises(UserError, match="failed") as dropped:
            first.generate(prompts)
        assert "\n" not in str(dropped.value) and len(cache) == 4
    for url in ref_server("", port=port):
        second = CachedBackend(OpenAIBackend(url, concurrency=2), cache, chunk_size=4)
        assert [g.text for g in second.generate(prompts)] == [f"ok:q{i}" for i in range(12)]
        assert (second.stats.hits, second.stats.misses) == (4, 8)


@given(st.lists(st.integers(), max_size=30), st.integers(1, 8))
def test_ordered_map_keeps_order(items: list[int], concurrency: int) -> None:
    assert ordered_map(lambda x: (time.sleep(random.random() / 1000), x * 2)[1], items, concurrency) == [x * 2 for x in items]


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
    policy = RetryPolicy(base_s=base, cap_s=cap)
    delay = policy.delay(attempt, None, random.Random(attempt))
    assert 0 <= delay <= 1.5 * min(cap, base * 2**attempt)
    assert delay >= 0.5 * min(cap, base * 2**attempt)
    assert policy.delay(attempt, "0", random.Random(0)) == 0


# ------------------------------------------------------------------------------- serve-check
def moegate(*args: str | Path) -> int:
    from harness.cli import main

    with pytest.raises(SystemExit) as info:
        main([str(a) for a in args])
    return int(info.value.code or 0)


def test_serve_check_says_what_runs_and_exits_by_the_gate(server: str, tiny: Path, capsys: pytest.CaptureFixture) -> None:
    gate = HERE.parent / "gates" / "testbed.toml"
    assert moegate("serve-check", server, "--model-name", "ref-vllm", "--gate", gate) == 0  # vLLM's format: every suite
    out = capsys.readouterr().out
    assert "self-consistency" in out and "pass" in out and "arc_challenge" in out and "cannot run" not in out
    assert moegate("serve-check", server, "--model-name", "ref", "--gate", gate) == 2  # an unknown engine: no top-k tables
    out = capsys.readouterr().out
    assert "kld" in out and "token-id prompts" in out and out.count("cannot run") == 1
    assert moegate("serve-check", server, "--model-name", "ref-selfpair", "--gate", gate, "--reference", tiny) == 2
    captured = capsys.readouterr()
    assert "no shift fits" in captured.out and "FAIL" in captured.out
    assert "cannot run 3 suite(s)" in captured.err and captured.err.count("\n") == 1
    assert moegate("serve-check", server, "--model-name", "ref-noecho", "--json") == 0
    found = json.loads(capsys.readouterr().out)
    assert found["engine"]["engine"] == "unknown" and found["consistency"] is None
    assert found["suites"]["collapse"] == [] and "no prompt log-probs" in found["suites"]["wikitext2"][0]
    assert "local tokenizer" in found["suites"]["gsm8k_cot"][0]
    from harness.suites import SUITES

    assert all(SUITES.get(name).request_kinds for name in SUITES.names())  # every built-in suite says what it sends
