"""``moegate baseline record``, ``run`` and ``verdict`` end to end: exit codes, stored runs, refusals.

Two setups over the shared tiny MoE: the toy suites of tests/gate_toys.py for the CLI's paths, and real
suites (wikitext2, collapse) against a candidate whose output head is scaled by 8, which must FAIL.
The trustworthiness check goes through ``moegate verdict`` on stored records: over 10 seeds a benign
candidate (the baseline's records copied) never FAILs and a clearly broken one FAILs every time.
Bad gate files and hand-edited baselines through the CLI are in test_hardening.py; the pytest plugin
in test_pytest_plugin.py.
"""

from __future__ import annotations

import json
import shutil
import textwrap
from pathlib import Path

import numpy as np
import pytest

from harness.cli import main
from harness.store import load_store, write_store
from tests.gate_toys import acc_run, write_gate

pytestmark = pytest.mark.usefixtures("gate_toys")


def moegate(*args: str | Path) -> int:
    with pytest.raises(SystemExit) as info:
        main([str(a) for a in args])
    return int(info.value.code or 0)


# ---------------------------------------------------------------------------------------- toy suites
def test_record_run_verdict_on_a_tiny_model(tiny: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    gate = write_gate(tmp_path, str(tiny))
    assert moegate("baseline", "record", "--gate", gate) == 0
    assert (tmp_path / "baselines" / "toy" / "manifest.json").is_file()

    candidate = tmp_path / "candidate-copy"
    shutil.copytree(tiny, candidate)
    run_dir = tmp_path / "run"
    capsys.readouterr()
    assert moegate("run", "--gate", gate, "--candidate", candidate, "--report-dir", run_dir) == 0
    out = capsys.readouterr().out
    assert "PASS" in out and "report.html" in out
    assert (run_dir / "candidate" / "manifest.json").is_file()
    report = json.loads((run_dir / "report.json").read_text())
    assert report["overall"] == "PASS" and report["exit_code"] == 0

    shutil.rmtree(candidate)  # verdict needs the stored records only, never the model
    assert moegate("verdict", run_dir, "--gate", gate) == 0
    warned = json.loads((run_dir / "report.json").read_text())["run"]["warnings"]
    assert len(warned) == 1 and "identical to the baseline" in warned[0]  # a copy of the baseline, said once

    # generated code that ran under the audit hook alone (--allow-unsandboxed): the report says so
    manifest, runs = load_store(run_dir / "candidate")
    for run in runs.values():
        run.records[0].meta["sandbox"] = "UNSANDBOXED:none+seccomp+audit-hook"
    write_store(run_dir / "candidate", runs, model=manifest.model, backend=manifest.backend,
                fingerprint=manifest.fingerprint, options=manifest.options, engine=manifest.engine)  # fmt: skip
    capsys.readouterr()
    assert moegate("verdict", run_dir, "--gate", gate) == 0
    warned = [w for w in json.loads((run_dir / "report.json").read_text())["run"]["warnings"] if "isolation" in w]
    assert warned == ["generated code ran without kernel isolation for the candidate's suite 'toy' "
                      "(UNSANDBOXED:none+seccomp+audit-hook; --allow-unsandboxed)"]  # fmt: skip
    assert "warning: generated code ran without kernel isolation" in capsys.readouterr().out
    stricter = gate.read_text().replace("max = 0.5", "max = -1.0")
    gate.write_text(stricter)
    assert moegate("verdict", run_dir, "--gate", gate) == 2  # a negative drop budget is refused


def test_refusals_are_one_line_exit_2(tiny: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    gate = write_gate(tmp_path, str(tiny))
    assert moegate("run", "--gate", gate, "--candidate", tiny, "--report-dir", tmp_path / "r0") == 2
    assert "baseline record" in capsys.readouterr().err
    assert moegate("baseline", "record", "--gate", gate) == 0
    gate.write_text(gate.read_text().replace("n_items = 6", "n_items = 5"))
    capsys.readouterr()
    assert moegate("run", "--gate", gate, "--candidate", tiny, "--report-dir", tmp_path / "r1") == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "settings differ from the baseline's (n_items)" in err
    assert not (tmp_path / "r1").exists()  # nothing half-written


def test_a_crashing_suite_fails_the_gate(tiny: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    body = textwrap.dedent(
        """
        [suites.toy_crash]
        [[budgets]]
        suite = "toy_crash"
        metric = "logprob"
        kind = "drop"
        max = 1.0
        """
    )
    gate = write_gate(tmp_path, str(tiny), body=body)
    assert moegate("baseline", "record", "--gate", gate) == 0
    capsys.readouterr()
    assert moegate("run", "--gate", gate, "--candidate", tiny, "--report-dir", tmp_path / "run") == 1
    assert "toy suite exploded" in capsys.readouterr().out


TRUST_BODY = textwrap.dedent(
    """
    [suites.toy]
    n_items = 6
    [[budgets]]
    suite = "toy"
    metric = "acc"
    kind = "drop"
    max = 2.0
    """
)


@pytest.mark.parametrize("seed", range(10))
def test_stored_verdicts_are_trustworthy(seed: int, tmp_path: Path) -> None:
    gate = write_gate(tmp_path, "stored-only", body=TRUST_BODY)
    rng = np.random.default_rng(seed)
    base = (rng.random(300) < 0.7).astype(int).tolist()
    broken = [c if rng.random() < 0.6 else 0 for c in base]  # loses ~40% of its right answers
    write_store(tmp_path / "baselines" / "toy", {"toy": acc_run(base)}, model="b", backend="transformers", fingerprint="b")
    for name, records in {"benign": base, "broken": broken}.items():
        write_store(tmp_path / name / "candidate", {"toy": acc_run(records)}, model=name, backend="transformers",
                    fingerprint=name)
    assert moegate("verdict", tmp_path / "benign", "--gate", gate) == 0
    assert moegate("verdict", tmp_path / "broken", "--gate", gate) == 1


# ---------------------------------------------------------------------------------------- real suites
REAL_GATE = """
[gate]
name = "tiny"

[baseline]
model = "{model}"
dir = "{baseline}"

[suites.wikitext2]
profile = "ci"
limit = 3
seq_len = 64

[suites.collapse]
profile = "ci"
max_tokens = 8
item_ids = ["translate-es-beach", "knowledge-monad"]

[[budgets]]
suite = "wikitext2"
metric = "ppl"
kind = "ratio"
max = 1.05

[[budgets]]
suite = "collapse"
metric = "any"
kind = "new_flags_count"
max = 0
"""


@pytest.fixture(scope="module")
def project(tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A gate over real suites with its baseline recorded on ``tiny``, and ``tiny`` with a broken head."""
    import torch
    from safetensors.torch import load_file, save_file

    root = tmp_path_factory.mktemp("gate")
    broken = root / "broken"
    shutil.copytree(tiny, broken)
    weights = load_file(broken / "model.safetensors")
    weights["lm_head.weight"] = weights["lm_head.weight"] * 8.0
    save_file(weights, broken / "model.safetensors", metadata={"format": "pt"})
    assert torch.equal(load_file(tiny / "model.safetensors")["lm_head.weight"] * 8.0, weights["lm_head.weight"])
    (root / "gates").mkdir()
    store = root / "baselines" / "tiny"
    gate = root / "gates" / "tiny.toml"
    gate.write_text(REAL_GATE.format(model=tiny, baseline=store))
    with pytest.MonkeyPatch.context() as env:
        env.setenv("MOEGATE_CACHE_DIR", str(root / "cache"))
        assert moegate("baseline", "record", "--gate", gate) == 0
    assert set(json.loads((store / "manifest.json").read_text())["suites"]) == {"wikitext2", "collapse"}
    return {"root": root, "base": tiny, "broken": broken, "gate": gate, "store": store}


def test_broken_head_fails_and_stored_run_redecides(project: dict[str, Path]) -> None:
    bad = project["root"] / "run-broken"
    assert moegate("run", "--gate", project["gate"], "--candidate", project["broken"], "--report-dir", bad) == 1
    report = json.loads((bad / "report.json").read_text())
    assert report["overall"] == "FAIL"
    ppl = next(c for c in report["verdict"]["capabilities"] if c["metric"] == "ppl")
    assert ppl["status"] == "FAIL" and ppl["candidate_value"] > ppl["baseline_value"] * 1.05
    for name in ("report.md", "report.html"):
        assert (bad / name).stat().st_size > 0

    # re-deciding from stored records needs no model and gives the same verdict
    (bad / "report.json").unlink()
    assert moegate("verdict", bad, "--gate", project["gate"]) == 1
    assert json.loads((bad / "report.json").read_text())["overall"] == "FAIL"
