"""The kld suite end to end on tiny random MoE models: the baseline's top-k tables stored as hashed artifacts,
the candidate scored against them, renumbered experts at KL exactly 0, and every bad input in one line."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pytest

from harness.api import gate_candidate, load_gate, record_baseline
from harness.cli import main
from harness.compress._perturb import renumber_experts
from harness.divergence import decode_topk
from harness.errors import UserError
from harness.store import load_store
from harness.suites import SUITES
from tests.tiny_models import (
    build_tiny_moe,
    drift_experts,
    smollm2_tokenizer_dir,
    tiny_config,
)

QUIET = lambda _m: None  # noqa: E731
KLD = """
[suites.kld]
profile = "ci"
seq_len = 32
limit = 3
corpora = ["text", "c4", "generations"]
c4_windows = 2
max_tokens = 8
generation_ids = ["translate-es-beach", "knowledge-monad"]
{extra}
[[budgets]]
label = "mean KLD"
suite = "kld"
metric = "kl_mean"
kind = "max_mean"
max = {mean}

[[budgets]]
label = "p99 KLD"
suite = "kld"
metric = "kl_p99"
kind = "max_quantile"
max = {p99}

[[budgets]]
label = "same top token"
suite = "kld"
metric = "same_top"
kind = "drop"
max = 10
"""


def gate_file(folder: Path, model: Path, *, mean: float = 0.001, p99: float = 0.01, extra: str = "",
              suites: str | None = None, baseline: str = "baseline", cross_engine: bool = False) -> Path:  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    body = suites if suites is not None else KLD.format(mean=mean, p99=p99, extra=extra)
    head = (f'[gate]\nname = "kldtiny"\n{"allow_cross_engine = true" if cross_engine else ""}\n[baseline]\n'
            f'model = "{model}"\noptions = {{ max_length = 256 }}\ndir = "{baseline}"\n')
    path = folder / "kld.toml"
    path.write_text(head + textwrap.dedent(body), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("kld-models")
    base = build_tiny_moe("qwen2_moe", root / "base")
    renumber_experts(base, root / "permuted", seed=1)  # the product's own renumbering (moegate baseline calibrate)
    return {"base": base, "drift": drift_experts(base, root / "drift"), "permuted": root / "permuted"}


@pytest.fixture(scope="module")
def recorded(models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A baseline with the kld suite, recorded once (its own request cache)."""
    folder = tmp_path_factory.mktemp("kld-gate")
    path = gate_file(folder, models["base"])
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MOEGATE_CACHE_DIR", str(folder / "cache"))
        record_baseline(load_gate(path), log=QUIET)
    return path


def test_kld_is_registered_with_the_gate_metrics() -> None:
    from harness.stats.kld import GATE_METRICS

    suite = SUITES.get("kld")
    assert {m.name for m in suite.metrics} == set(GATE_METRICS)
    assert "next_token_topk" in suite.request_kinds


def test_the_baseline_stores_its_top_k_tables_hashed(recorded: Path) -> None:
    config = load_gate(recorded)
    manifest, runs = load_store(config.baseline_dir)
    run = runs["kld"]
    assert {"generations.topk", "text.topk", "c4.topk"} <= set(run.artifacts)  # besides the diagnosis's route_mass.npz
    text, c4, gens = (decode_topk(run.artifacts[name]) for name in ("text.topk", "c4.topk", "generations.topk"))
    assert text.k == gens.k == c4.k == 64 and len(text.window_sizes) == 3 and set(text.window_sizes) == {31}
    assert len(c4.window_sizes) == 2 and set(c4.window_sizes) == {31} and c4.targets[:31].tolist() != text.targets[:31].tolist()
    assert len(gens.window_sizes) == 2 and manifest.suites["kld"].artifacts["text.topk"].size == len(run.artifacts["text.topk"])
    for r in run.records:  # the baseline against itself
        assert r.scores["kl_max"] == 0 and r.scores["same_top"] == 1 and r.scores["ppl_ratio"] == 1
        assert len(r.per_token["kl"]) == r.scores["tokens"] and len(r.meta["tokens"]) == r.scores["tokens"]
    gen = next(r for r in run.records if r.item_id == "gen-knowledge-monad")
    assert gen.output and sum(gens.window_sizes) == sum(r.scores["tokens"] for r in run.records if r.group == "generation")


def test_text_windows_are_the_perplexity_suites_windows(recorded: Path, models: dict[str, Path]) -> None:
    """kld's text and c4 windows score the same tokens as the wikitext2 and c4 suites: equal per-window NLL."""
    from harness.backends import open_backend

    _, runs = load_store(load_gate(recorded).baseline_dir)
    backend = open_backend(str(models["base"]), max_length=256)
    for group, suite in (("text", "wikitext2"), ("c4", "c4")):
        stored = [r for r in runs["kld"].records if r.group == group]
        ppl_suite = SUITES.get(suite)()
        ppl = ppl_suite.run(backend, ppl_suite.Settings(seq_len=32, limit=len(stored)))
        assert [r.scores["tokens"] for r in ppl.records] == [r.scores["tokens"] for r in stored]
        assert np.allclose([r.scores["nll"] for r in ppl.records], [r.scores["nll"] for r in stored], rtol=1e-4)


def test_a_drifted_candidate_is_scored_against_the_stored_tables(recorded: Path, models: dict[str, Path],
                                                                 tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    monkeypatch.setenv("MOEGATE_CACHE_DIR", str(recorded.parent / "cache"))
    outcome = gate_candidate(load_gate(recorded), str(models["drift"]), tmp_path / "run", log=QUIET)
    caps = {c.label: c for c in outcome.verdict.capabilities}
    assert caps["mean KLD"].status == "FAIL" and caps["mean KLD"].candidate_value > 0.001  # type: ignore[operator]
    _, runs = load_store(tmp_path / "run" / "candidate")
    records = runs["kld"].records
    assert {r.meta["method"] for r in records} == {"tail_bucket"}
    worst = max((w for r in records for w in r.meta["worst"]), key=lambda w: w["kl"])
    assert worst["kl"] == max(max(r.per_token["kl"]) for r in records) and len(worst["base_top"]) == 5
    gen = next(r for r in records if r.item_id == "gen-knowledge-monad")
    base_gen = next(r for r in load_store(load_gate(recorded).baseline_dir)[1]["kld"].records if r.item_id == gen.item_id)
    assert gen.output == base_gen.output  # teacher-forced on the baseline's own generation
    html = (tmp_path / "run" / "report.html").read_text(encoding="utf-8")
    assert "KLD per token" in html and "worst tokens" in html.lower()
    assert "kld:" in (tmp_path / "run" / "report.md").read_text(encoding="utf-8")


def test_renumbered_experts_give_kl_exactly_zero_and_pass(recorded: Path, models: dict[str, Path], tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    monkeypatch.setenv("MOEGATE_CACHE_DIR", str(recorded.parent / "cache"))
    outcome = gate_candidate(load_gate(recorded), str(models["permuted"]), tmp_path / "run", log=QUIET)
    _, runs = load_store(tmp_path / "run" / "candidate")
    records = runs["kld"].records
    assert all(x == 0.0 for r in records for x in r.per_token["kl"]) and all(r.scores["same_top"] == 1 for r in records)
    assert {c.status for c in outcome.verdict.capabilities} == {"PASS"} and outcome.verdict.overall == "PASS"


def test_tampered_tables_are_refused(recorded: Path, models: dict[str, Path], tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    monkeypatch.setenv("MOEGATE_CACHE_DIR", str(recorded.parent / "cache"))
    copy = tmp_path / "gate"
    import shutil

    shutil.copytree(recorded.parent / "baseline", copy / "baseline")
    path = gate_file(copy, models["base"])
    blob = copy / "baseline" / "artifacts" / "kld" / "text.topk"
    data = bytearray(blob.read_bytes())
    data[-1] ^= 1
    blob.write_bytes(bytes(data))
    with pytest.raises(UserError, match="edited by hand"):
        gate_candidate(load_gate(path), str(models["base"]), tmp_path / "run", log=QUIET)
    assert not (tmp_path / "run").exists()


def cli_gate(path: Path, candidate: Path, run_dir: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exc:
        main(["run", "--gate", str(path), "--candidate", str(candidate), "--report-dir", str(run_dir)])
    err = capsys.readouterr().err.strip().splitlines()
    return int(exc.value.code or 0), err[-1] if err else ""


def test_bad_inputs_are_one_line_exit_2(recorded: Path, models: dict[str, Path], tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    monkeypatch.setenv("MOEGATE_CACHE_DIR", str(recorded.parent / "cache"))
    import shutil

    # a baseline recorded without kld
    other = tmp_path / "nokld"
    path = gate_file(other, models["base"], suites='[suites.wikitext2]\nlimit = 1\nseq_len = 32\n[[budgets]]\nsuite = "wikitext2"\n'
                     'metric = "ppl"\nkind = "ratio"\nmax = 1.1\n')  # fmt: skip
    record_baseline(load_gate(path), log=QUIET)
    path = gate_file(other, models["base"])
    code, out = cli_gate(path, models["base"], tmp_path / "r1", capsys)
    assert code == 2 and "no records for suite 'kld'" in out and "moegate baseline record" in out
    assert not (tmp_path / "r1").exists()

    # the stored top-k does not match the suite's settings
    shutil.copytree(recorded.parent / "baseline", tmp_path / "k32" / "baseline")
    path = gate_file(tmp_path / "k32", models["base"], extra="top_k = 32")
    code, out = cli_gate(path, models["base"], tmp_path / "r2", capsys)
    assert code == 2 and "settings differ from the baseline's (top_k)" in out and not (tmp_path / "r2").exists()

    # a candidate with another vocabulary
    from transformers import AutoModelForCausalLM, AutoTokenizer

    wide = tmp_path / "wide"
    config = tiny_config("qwen2_moe", len(AutoTokenizer.from_pretrained(smollm2_tokenizer_dir())) + 64)
    AutoModelForCausalLM.from_config(config).save_pretrained(wide)
    AutoTokenizer.from_pretrained(models["base"]).save_pretrained(wide)
    code, out = cli_gate(recorded, wide, tmp_path / "r3", capsys)
    assert code == 2 and "vocabulary has 49216 tokens, the baseline's 49152" in out
    assert not (tmp_path / "r3" / "candidate").exists()


def test_stored_tables_of_another_width_are_refused(recorded: Path, models: dict[str, Path]) -> None:
    """A stored table whose k differs from the settings (a store written by hand around the settings check)."""
    from harness.backends import open_backend
    from harness.divergence import encode_topk

    _, runs = load_store(load_gate(recorded).baseline_dir)
    run = runs["kld"]
    narrow = {name: encode_topk(decode_topk(run.artifacts[name]).truncate(8)) if name.endswith(".topk")
              else run.artifacts[name] for name in run.artifacts}  # fmt: skip
    run.artifacts = type(run.artifacts)(narrow)
    settings = SUITES.get("kld").Settings.model_validate(run.settings)
    backend = open_backend(str(models["base"]), device="cpu", dtype="float32", max_length=256)
    with pytest.raises(UserError, match="stored top-k is 8 wide"):
        SUITES.get("kld")().run(backend, settings, baseline=run)


def test_pooled_statistics_match_llama_cpp_definitions(recorded: Path) -> None:
    """What the gate reads from the records equals harness.stats.kld over the same tokens."""
    from harness.records import metric_value

    _, runs = load_store(load_gate(recorded).baseline_dir)
    run = runs["kld"]
    specs = {m.name: m for m in run.metrics}
    assert metric_value(run.records, specs["kl_mean"]) == 0 and metric_value(run.records, specs["same_top"]) == 100
    kl = np.concatenate([r.per_token["kl"] for r in run.records])
    assert metric_value(run.records, specs["kl_p99"]) == float(np.quantile(kl, 0.99))


@pytest.fixture(scope="module")
def served(models: dict[str, Path]):
    """The reference server (vLLM's prompt_logprobs format) over the baseline's own weights."""
    import sys

    from tests.servers import free_port, start_server, stop_server

    port = free_port()
    proc = start_server([sys.executable, str(Path(__file__).parent / "openai_ref_server.py"), "--model", str(models["base"]),
                         "--port", str(port)], port)  # fmt: skip
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        stop_server(proc)


def test_a_served_candidate_gets_both_sides_top_k(recorded: Path, served: str, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """The same weights behind vLLM-style prompt_logprobs=k: the both-top-k estimate finds no divergence."""
    monkeypatch.setenv("MOEGATE_CACHE_DIR", str(tmp_path / "cache"))
    path = gate_file(tmp_path / "gate", Path("unused"), baseline=str(recorded.parent / "baseline"), cross_engine=True)
    outcome = gate_candidate(load_gate(path), "ref-vllm", tmp_path / "run", backend="openai",
                             options={"base_url": served}, log=QUIET)  # fmt: skip
    _, runs = load_store(tmp_path / "run" / "candidate")
    records = runs["kld"].records
    assert {r.meta["method"] for r in records} == {"both_top_k"} and len(records) == 7  # 3 + 2 windows, 2 generations
    assert max(r.scores["kl_max"] for r in records) < 1e-4 and min(r.scores["same_top"] for r in records) == 1
    assert outcome.verdict.overall == "PASS"


def test_a_server_without_top_k_prompt_logprobs_is_refused(recorded: Path, served: str, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    monkeypatch.setenv("MOEGATE_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(UserError, match=r"cannot return next-token top-k tables: it lacks top-k prompt log-probs") as err:
        path = gate_file(tmp_path / "gate", Path("unused"), baseline=str(recorded.parent / "baseline"), cross_engine=True)
        gate_candidate(load_gate(path), "ref-noecho", tmp_path / "run", backend="openai",
                       options={"base_url": served}, log=QUIET)  # fmt: skip
    assert "\n" not in err.value.line() and not (tmp_path / "run" / "candidate").exists()


def test_an_mlx_candidate_is_probed_like_a_local_one(recorded: Path, models: dict[str, Path], tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """The baseline's own weights through mlx-lm (CPU): the tail-bucket estimate, KL at float32 noise."""
    pytest.importorskip("mlx_lm")
    monkeypatch.setenv("MOEGATE_CACHE_DIR", str(tmp_path / "cache"))
    path = gate_file(tmp_path / "gate", Path("unused"), baseline=str(recorded.parent / "baseline"), cross_engine=True)
    outcome = gate_candidate(load_gate(path), str(models["base"]), tmp_path / "run", backend="mlx", log=QUIET)
    _, runs = load_store(tmp_path / "run" / "candidate")
    records = runs["kld"].records
    assert {r.meta["method"] for r in records} == {"tail_bucket"} and len(records) == 7
    assert max(r.scores["kl_max"] for r in records) < 1e-4 and outcome.verdict.overall == "PASS"


class RollingCounter:
    """A backend that counts the rolling requests it is asked to compute (everything else passes through)."""

    def __init__(self, inner: object) -> None:
        self.inner = inner
        self.rolling = 0

    def __getattr__(self, attr: str) -> object:
        return getattr(self.inner, attr)

    def loglikelihood_rolling(self, requests):  # type: ignore[no-untyped-def]
        self.rolling += len(requests)
        return self.inner.loglikelihood_rolling(requests)  # type: ignore[attr-defined]


WITH_WIKITEXT2 = """
[suites.wikitext2]
seq_len = 32
limit = 3

[suites.kld]
seq_len = 32
limit = 3
corpora = ["text"]

[[budgets]]
suite = "wikitext2"
metric = "ppl"
kind = "ratio"
max = 1.1

[[budgets]]
suite = "kld"
metric = "kl_mean"
kind = "max_mean"
max = 0.01
"""


def test_wikitext2_reads_the_kld_suites_forward_passes(models: dict[str, Path], tmp_path: Path) -> None:
    """In one gate the wikitext2 windows come from the kld suite's top-k tables (no rolling forward of their own,
    baseline or candidate), with the numbers the wikitext2 suite computes alone."""
    from harness.backends import open_backend
    from harness.cache import CachedBackend

    config = load_gate(gate_file(tmp_path, models["base"], suites=WITH_WIKITEXT2))
    alone = SUITES.get("wikitext2")()
    for name, baseline in (("base", None), ("drift", tmp_path / "baseline")):
        counter = RollingCounter(open_backend(str(models[name]), device="cpu", max_length=256))
        cached = CachedBackend(counter, tmp_path / f"{name}.sqlite")  # type: ignore[arg-type]
        if baseline is None:
            record_baseline(config, model=cached, out=tmp_path / "baseline", log=QUIET)
            runs = load_store(tmp_path / "baseline")[1]
        else:
            gate_candidate(config, cached, tmp_path / "run", baseline_dir=baseline, log=QUIET)
            runs = load_store(tmp_path / "run" / "candidate")[1]
        assert counter.rolling == 0
        own = alone.run(counter.inner, config.settings["wikitext2"])  # type: ignore[arg-type]
        assert [r.scores["tokens"] for r in runs["wikitext2"].records] == [r.scores["tokens"] for r in own.records]
        assert np.allclose([r.scores["nll"] for r in runs["wikitext2"].records], [r.scores["nll"] for r in own.records],
                           rtol=1e-6, atol=0)  # fmt: skip
        kld_nll = [r.scores["nll"] for r in runs["kld"].records]
        assert np.allclose(kld_nll, [r.scores["nll"] for r in runs["wikitext2"].records], rtol=1e-6, atol=0)
