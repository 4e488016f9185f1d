"""SIGKILL during ``moegate run``, several times at random points: the rerun reaches the same verdict
as an uninterrupted run, finished items are never sent to the model again, nothing half-written is
left, and two runs at once on the same cache both finish with that verdict.

The suite scores one item per backend call and logs, after each, whether the model was called
(the ``CachedBackend``'s miss counter), so "items lost" is counted, not guessed.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from harness.cli import main
from harness.suites import SUITES
from tests.tiny_models import build_tiny_moe

ROOT = Path(__file__).resolve().parents[1]
N_ITEMS = 8

SUITE = textwrap.dedent(
    """
    import json, os, time
    from typing import ClassVar
    from harness.backends.base import LoglikelihoodRequest
    from harness.records import ItemRecord, MetricSpec, SuiteRun
    from harness.suites import SUITES, SuiteSettings
    from tests.gate_toys import PAIRS

    class StepSuite:
        name = "toy_steps"
        Settings = SuiteSettings
        metrics: ClassVar[list] = [MetricSpec(name="logprob", kind="continuous", higher_is_better=True)]

        def run(self, backend, settings, *, baseline=None):
            records = []
            for i, (context, target) in enumerate(PAIRS):
                time.sleep(float(os.environ.get("STEP_DELAY", "0")))  # a window for the killer: tiny-model calls take ms
                before = getattr(getattr(backend, "stats", None), "misses", 0)
                (result,) = backend.loglikelihood([LoglikelihoodRequest(context, target)])
                computed = getattr(getattr(backend, "stats", None), "misses", 0) > before
                log = os.environ.get("STEP_LOG")
                if log:
                    with open(log, "a") as handle:
                        handle.write(json.dumps({"item": i, "computed": computed}) + "\\n")
                records.append(ItemRecord(suite="toy_steps", item_id=f"s{i}", prompt=context, reference=target,
                                          scores={"logprob": result.logprob}))
            return SuiteRun(suite="toy_steps", settings=settings.model_dump(mode="json"), metrics=self.metrics,
                            records=records, data_sha256={"toy-pairs": "0" * 64})

    SUITES.register("toy_steps", StepSuite)
    """
)
CHILD = SUITE + "\nimport sys\nfrom harness.cli import main\nmain(sys.argv[1:])\n"
GATE = textwrap.dedent(
    """
    [gate]
    name = "crash"
    [baseline]
    model = "{model}"
    dir = "baselines/crash"
    [suites.toy_steps]
    [[budgets]]
    suite = "toy_steps"
    metric = "logprob"
    kind = "drop"
    max = 0.5
    """
)


def _child(args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", CHILD, *args], env=env, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _log(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    from harness.compress import prune

    base = build_tiny_moe("qwen2_moe", tmp_path / "base")
    candidate = prune(base, tmp_path / "cand", fraction=0.5, mode="mask",
                      scores=np.array([[4.0, 1.0, 3.0, 2.0], [1.0, 2.0, 3.0, 4.0]]))
    (tmp_path / "gates").mkdir()
    gate = tmp_path / "gates" / "crash.toml"
    gate.write_text(GATE.format(model=base), encoding="utf-8")
    saved = SUITES.snapshot()
    exec(compile(SUITE, "step_suite", "exec"), {})
    monkeypatch.setenv("MOEGATE_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(SystemExit) as info:
        main(["baseline", "record", "--gate", str(gate)])
    assert info.value.code == 0
    yield {"root": tmp_path, "gate": gate, "candidate": candidate}
    SUITES.restore(saved)


@pytest.mark.slow
def test_sigkill_at_random_points_then_rerun(project: dict[str, Path]) -> None:
    root, gate, candidate = project["root"], project["gate"], project["candidate"]
    # reference: an uninterrupted run with its own cache
    os.environ["MOEGATE_CACHE_DIR"] = str(root / "cache-reference")
    with pytest.raises(SystemExit) as info:
        main(["run", "--gate", str(gate), "--candidate", str(candidate), "--report-dir", str(root / "reference")])
    reference = json.loads((root / "reference" / "report.json").read_text())
    os.environ["MOEGATE_CACHE_DIR"] = str(root / "cache")

    env = dict(os.environ, PYTHONPATH=str(ROOT), MOEGATE_QUIET="1", STEP_LOG=str(root / "steps.jsonl"), STEP_DELAY="0.1")
    run_args = ["run", "--gate", str(gate), "--candidate", str(candidate), "--report-dir", str(root / "run")]
    rng = random.Random(8)
    faults = 0
    for _ in range(3):
        target = len([e for e in _log(root / "steps.jsonl") if e["computed"]]) + rng.randint(1, 2)
        child = _child(run_args, env)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and child.poll() is None:
            if len([e for e in _log(root / "steps.jsonl") if e["computed"]]) >= target:
                break
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 0.05))  # land anywhere: mid-call, mid-commit, between items
        if child.poll() is None:
            os.kill(child.pid, signal.SIGKILL)
            faults += 1
        child.wait()
        assert not (root / "run" / "report.json").exists()  # a killed run leaves no report
    assert faults >= 2
    before = [e["item"] for e in _log(root / "steps.jsonl") if e["computed"]]
    assert len(before) == len(set(before)), before  # no committed item was computed twice across the kills

    runs = [_child([*run_args[:-1], str(root / name)], env) for name in ("run", "run-twin")]  # two at once
    codes = [c.wait(timeout=300) for c in runs]
    errors = [c.stderr.read().decode() for c in runs if c.stderr]
    assert codes == [info.value.code] * 2, errors
    for name in ("run", "run-twin"):
        report = json.loads((root / name / "report.json").read_text())
        assert report["overall"] == reference["overall"]
        assert [c["candidate_value"] for c in report["verdict"]["capabilities"]] == [
            c["candidate_value"] for c in reference["verdict"]["capabilities"]]
    after = [e["item"] for e in _log(root / "steps.jsonl") if e["computed"]][len(before):]
    assert not set(after) & set(before), (before, after)  # finished items never reach the model again
    assert set(before) | set(after) == set(range(N_ITEMS))
    print(f"tally: faults={faults} survived={faults} items_lost=0 finished_before_kill={len(set(before))}")
