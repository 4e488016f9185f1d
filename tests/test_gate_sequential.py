"""Sequential early stopping in gate runs: decisions from stored records, chunked runs, re-deciding.

The chunked runs use a scripted backend whose answers are set per item, so a clear PASS, a clear FAIL
and a borderline candidate are exact and cheap; the slow test does the same on a tiny real model.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from harness.api import decide, gate_candidate, load_gate, record_baseline
from harness.backends.base import Loglikelihood, LoglikelihoodRequest
from harness.cli import main
from harness.gate import Budget, GatePolicy, evaluate_gate
from harness.records import SequentialInfo
from harness.suites import SUITES
from tests.gate_toys import acc_run
from tests.sequential_toys import QuizSuite, quiz_items

N = 200


@pytest.fixture
def quiz(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("MOEGATE_CACHE_DIR", str(tmp_path / "cache"))
    saved = SUITES.snapshot()
    SUITES.register("quiz", QuizSuite)
    yield
    SUITES.restore(saved)


def moegate(*args: object) -> int:
    with pytest.raises(SystemExit) as info:
        main([str(a) for a in args])
    return int(info.value.code)


# --- deciding from stored records (pure) ---------------------------------------------------------


def _info(used: int, alpha: float = 0.05) -> SequentialInfo:
    return SequentialInfo(items_total=N, items_used=used, looks=5, alpha=alpha)


BUDGET = Budget(suite="toy", metric="acc", kind="drop", max=10.0)


def test_a_stored_prefix_is_decided_by_its_looks() -> None:
    base = acc_run([1] * N)
    cand = acc_run([1] * 80).model_copy(update={"sequential": _info(80)})
    cap = evaluate_gate({"toy": base}, {"toy": cand}, [BUDGET]).capabilities[0]
    assert cap.status == "PASS" and cap.sequential is not None
    assert (cap.sequential.items_used, cap.sequential.items_total, cap.sequential.items_saved) == (80, N, 120)
    assert [look.n for look in cap.sequential.looks] == [40, 80]
    assert "80/200 items (saved 120)" in cap.reason and cap.ci_high is not None and cap.ci_high <= 10
    # the same look with a margin it cannot clear: undecided when the suite stopped, never a naive test
    tight = Budget(suite="toy", metric="acc", kind="drop", max=1.0)
    cap = evaluate_gate({"toy": base}, {"toy": cand}, [tight]).capabilities[0]
    assert cap.status == "INCONCLUSIVE" and "not decided when the suite stopped" in cap.reason


def test_a_clear_regression_fails_within_half_the_items() -> None:
    broken = [0 if i % 2 else 1 for i in range(80)]  # O'Brien-Fleming spends almost nothing at the first look
    cand = acc_run(broken).model_copy(update={"sequential": _info(80)})
    cap = evaluate_gate({"toy": acc_run([1] * N)}, {"toy": cand}, [BUDGET]).capabilities[0]
    assert cap.status == "FAIL" and cap.flips is not None and cap.flips.right_to_wrong == 40
    assert cap.ci_low is not None and cap.ci_low > 10 and cap.n_items == 80


def test_a_prefix_is_refused_without_a_sequential_block_or_out_of_order() -> None:
    base = acc_run([1] * N)
    plain = acc_run([1] * 80)
    cap = evaluate_gate({"toy": base}, {"toy": plain}, [BUDGET]).capabilities[0]
    assert cap.status == "FAIL" and "missing" in cap.reason
    shifted = acc_run([1] * 81)
    shifted.records = shifted.records[1:]
    shifted.sequential = _info(80)
    cap = evaluate_gate({"toy": base}, {"toy": shifted}, [BUDGET]).capabilities[0]
    assert cap.status == "FAIL" and "not the baseline's first 80" in cap.reason


def test_a_budget_needing_every_item_is_refused_on_a_stopped_suite() -> None:
    cand = acc_run([1] * 80).model_copy(update={"sequential": _info(80)})
    flags = Budget(suite="toy", metric="any", kind="new_flags_count", max=0)
    caps = evaluate_gate({"toy": acc_run([1] * N)}, {"toy": cand}, [BUDGET, flags]).capabilities
    assert caps[0].status == "PASS"
    assert caps[1].status == "FAIL" and "needs every item" in caps[1].reason


def test_sequential_capabilities_get_bonferroni_alpha_and_the_rest_holm_on_what_is_left() -> None:
    base, other = acc_run([1] * N), acc_run([1, 0] * 50, suite="other")
    cand = acc_run([1] * 80).model_copy(update={"sequential": _info(80, alpha=0.025)})
    budgets = [BUDGET, Budget(suite="other", metric="acc", kind="drop", max=30.0)]
    caps = evaluate_gate({"toy": base, "other": other}, {"toy": cand, "other": other}, budgets, GatePolicy()).capabilities
    assert caps[0].sequential is not None and caps[0].sequential.alpha == pytest.approx(0.025)
    assert caps[1].sequential is None and caps[1].adjusted_alpha == pytest.approx(0.025)  # Holm over 1 at 0.05 / 2


def test_continuous_scores_use_the_z_test_in_display_units() -> None:
    from harness.records import ItemRecord, SuiteRun
    from tests.gate_toys import LOGPROB

    def run(values: list[float]) -> SuiteRun:
        records = [ItemRecord(suite="toy", item_id=f"q{i}", scores={"logprob": v}) for i, v in enumerate(values)]
        return SuiteRun(suite="toy", settings={}, metrics=[LOGPROB], records=records)

    base = run([-1.0 - 0.01 * (i % 7) for i in range(N)])
    budget = Budget(suite="toy", metric="logprob", kind="drop", max=0.5)
    same = run([r.scores["logprob"] for r in base.records[:80]]).model_copy(update={"sequential": _info(80)})
    cap = evaluate_gate({"toy": base}, {"toy": same}, [budget]).capabilities[0]
    assert cap.status == "PASS" and "z-test" in cap.method and cap.sequential is not None
    worse = run([r.scores["logprob"] - 2.0 for r in base.records[:80]]).model_copy(update={"sequential": _info(80)})
    cap = evaluate_gate({"toy": base}, {"toy": worse}, [budget]).capabilities[0]
    assert cap.status == "FAIL" and cap.change == pytest.approx(2.0)


# --- chunked gate runs with a scripted backend ---------------------------------------------------


class ScriptedBackend:
    """Prefers each quiz item's first continuation, except on the items in ``wrong``."""

    name = "scripted"

    def __init__(self, tag: str, wrong: Sequence[int] = ()) -> None:
        self.tag, self.wrong = tag, {f"q{i:03d}" for i in wrong}
        self.pairs = {question: (item_id, pair) for item_id, question, pair in quiz_items(N)}
        self.asked = 0

    def fingerprint(self) -> str:
        return f"scripted-{self.tag}"

    def loglikelihood(self, requests: Sequence[LoglikelihoodRequest]) -> list[Loglikelihood]:
        self.asked += len(requests)
        out = []
        for r in requests:
            item_id, pair = self.pairs[r.context]
            first = r.continuation == pair[0]
            out.append(Loglikelihood(0.0 if first != (item_id in self.wrong) else -1.0, True))
        return out


GATE = """
[gate]
name = "quiz"
sequential = true
[baseline]
model = "scripted-base"
dir = "baselines/quiz"
[suites.quiz]
n_items = 200
[[budgets]]
suite = "quiz"
metric = "acc"
kind = "drop"
max = 10
"""

CANDIDATES = {
    "same": ([], "PASS"),
    "broken": (range(0, N, 2), "FAIL"),  # half the items wrong: a 50-point drop against a 10-point budget
    "borderline": (range(0, N, 10), "INCONCLUSIVE"),  # exactly the 10-point budget
}


def _open(backends: dict[str, ScriptedBackend]):
    return lambda spec, **kw: backends[spec.model]


def test_gate_runs_stop_early_when_clear_and_verdict_redecides(
    quiz: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "gates").mkdir()
    gate = tmp_path / "gates" / "quiz.toml"
    gate.write_text(GATE)
    config = load_gate(gate)
    backends = {"scripted-base": ScriptedBackend("base")}
    backends |= {name: ScriptedBackend(name, wrong) for name, (wrong, _) in CANDIDATES.items()}
    monkeypatch.setattr("harness.api.gating.open_model", _open(backends))
    record_baseline(config, log=lambda m: None)
    for name, (_, expected) in CANDIDATES.items():
        run_dir = tmp_path / name
        outcome = gate_candidate(config, backends[name], run_dir, log=lambda m: None)  # an open backend
        cap = outcome.verdict.capabilities[0]
        assert cap.status == expected and cap.sequential is not None, cap.reason
        asked = backends[name].asked // 2
        assert asked == cap.sequential.items_used
        if name == "borderline":
            assert asked == N
        else:
            assert asked <= N // 2
        report = json.loads((run_dir / "report.json").read_text())
        assert report["verdict"]["capabilities"][0]["sequential"]["items_saved"] == N - asked
        assert report["sequential"]["items_saved"] == N - asked
        assert f"items used {asked}/{N} (saved {N - asked})" in (run_dir / "report.md").read_text()
        assert f"Items saved by sequential stopping: {N - asked} of {N}" in (run_dir / "report.html").read_text()
        again = decide(config, run_dir).verdict.capabilities[0]
        assert again.model_dump() == cap.model_dump()
        code = {"PASS": 0, "FAIL": 1, "INCONCLUSIVE": 3}[expected]
        assert moegate("verdict", run_dir, "--gate", gate) == code

    # --no-sequential overrides the gate file: every item, the usual fixed-sample test
    monkeypatch.setattr("harness.api.gating.open_model", _open(backends))
    backends["broken"].asked = 0
    assert moegate("run", "--gate", gate, "--candidate", "broken", "--report-dir", tmp_path / "full",
                   "--no-sequential") == 1  # fmt: skip
    assert backends["broken"].asked == 2 * N
    cap = json.loads((tmp_path / "full" / "report.json").read_text())["verdict"]["capabilities"][0]
    assert cap["sequential"] is None and cap["n_items"] == N


def test_a_suite_with_an_uncovered_budget_runs_in_full(quiz: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "gates").mkdir()
    gate = tmp_path / "gates" / "quiz.toml"
    gate.write_text(GATE + '[[budgets]]\nsuite = "quiz"\nmetric = "any"\nkind = "new_flags_count"\nmax = 0\n')
    config = load_gate(gate)
    backends = {"scripted-base": ScriptedBackend("base"), "same": ScriptedBackend("same")}
    monkeypatch.setattr("harness.api.gating.open_model", _open(backends))
    record_baseline(config, log=lambda m: None)
    logged: list[str] = []
    outcome = gate_candidate(config, "same", tmp_path / "run", log=logged.append)
    assert backends["same"].asked == 2 * N and outcome.verdict.overall == "PASS"
    assert any("sequential stopping off" in line and "needs every item" in line for line in logged)


# --- the same on a tiny real model, through the CLI ----------------------------------------------


def _expert_noise(source: Path, target: Path, scale: float) -> Path:
    """A copy of ``source`` with seeded noise on the routed experts (what compression may touch)."""
    import torch
    from safetensors.torch import load_file, save_file

    shutil.copytree(source, target)
    tensors = load_file(source / "model.safetensors")
    generator = torch.Generator().manual_seed(0)
    for name, value in tensors.items():
        if ".experts." in name:
            tensors[name] = value + scale * torch.randn(value.shape, generator=generator)
    save_file(tensors, target / "model.safetensors", metadata={"format": "pt"})
    return target


@pytest.mark.slow
def test_moegate_run_sequential_on_a_tiny_model(quiz: None, tiny: Path, tmp_path: Path) -> None:
    from harness.backends import open_backend

    reference = QuizSuite().run(open_backend(str(tiny), "transformers"), QuizSuite.Settings(n_items=N))
    answers = tmp_path / "answers.json"  # the baseline's own preferences: it scores 100%
    answers.write_text(json.dumps({r.item_id: int(r.meta["loglikelihoods"][1] > r.meta["loglikelihoods"][0])
                                   for r in reference.records}))  # fmt: skip
    (tmp_path / "gates").mkdir()
    gate = tmp_path / "gates" / "quiz.toml"
    gate.write_text(
        GATE.replace("scripted-base", str(tiny)).replace("n_items = 200", f'n_items = 200\nanswers = "{answers}"')
    )
    assert moegate("baseline", "record", "--gate", gate) == 0
    same = tmp_path / "same"
    shutil.copytree(tiny, same)
    broken = _expert_noise(tiny, tmp_path / "broken", 0.3)
    for model, code in ((same, 0), (broken, 1)):
        run_dir = tmp_path / f"run-{model.name}"
        assert moegate("run", "--gate", gate, "--candidate", model, "--report-dir", run_dir) == code
        cap = json.loads((run_dir / "report.json").read_text())["verdict"]["capabilities"][0]
        assert cap["sequential"]["items_used"] <= N // 2, cap["reason"]
        assert moegate("verdict", run_dir, "--gate", gate) == code
