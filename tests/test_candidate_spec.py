"""The candidate runs with the baseline's backend settings, on every entry point: ``moegate run``, the
pytest plugin and ``moegate demo`` (its gating step), against a baseline recorded at ``dtype = "bfloat16"``.

The candidate is a copy of the baseline's weights, so with the same settings its fingerprint (which
hashes the dtype) equals the baseline's; a user's explicit override is honoured and shown in the report.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from harness.api import derived_spec, load_gate, spec_differences
from harness.api.config import ModelSpec
from harness.cli import main
from harness.cli.demo import gate_demo_candidates
from harness.store import read_manifest
from tests.gate_toys import register_toys, write_gate

BF16 = {"dtype": "bfloat16"}


def moegate(*args: object) -> int:
    with pytest.raises(SystemExit) as info:
        main([str(a) for a in args])
    return int(info.value.code or 0)


@pytest.fixture(scope="module")
def project(tiny: Path, tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("bf16")
    saved = register_toys()
    patch = pytest.MonkeyPatch()
    patch.setenv("MOEGATE_CACHE_DIR", str(root / "cache"))
    gate = write_gate(root, str(tiny))
    gate.write_text(gate.read_text().replace('dir = "baselines/toy"', 'dir = "baselines/toy"\noptions = {dtype = "bfloat16"}'))
    candidate = shutil.copytree(tiny, root / "candidate")
    assert moegate("baseline", "record", "--gate", gate) == 0
    baseline = read_manifest(root / "baselines" / "toy")
    assert baseline.options == BF16
    yield {"root": root, "gate": gate, "candidate": candidate, "baseline": baseline}
    patch.undo()
    from harness.suites import SUITES

    SUITES.restore(saved)


def _same_settings_as_the_baseline(run_dir: Path, baseline) -> None:
    stored = read_manifest(run_dir / "candidate")
    assert stored.options == BF16 and stored.fingerprint == baseline.fingerprint
    report = json.loads((run_dir / "report.json").read_text())
    assert report["run"]["candidate"]["options"] == BF16 and report["run"]["backend_differences"] == []


def test_moegate_run_keeps_the_baseline_dtype_and_shows_an_override(project) -> None:
    run_dir = project["root"] / "run"
    assert moegate("run", "--gate", project["gate"], "--candidate", project["candidate"], "--report-dir", run_dir) == 0
    _same_settings_as_the_baseline(run_dir, project["baseline"])
    asked = project["root"] / "run-fp32"
    assert moegate("run", "--gate", project["gate"], "--candidate", project["candidate"], "--report-dir", asked,
                   "--dtype", "float32") in (0, 1)  # fmt: skip
    report = json.loads((asked / "report.json").read_text())
    assert report["run"]["candidate"]["options"] == {"dtype": "float32"}
    assert report["run"]["backend_differences"] == ["backend option dtype: baseline 'bfloat16', candidate 'float32' (as asked)"]


def test_pytest_plugin_keeps_the_baseline_dtype(project, pytester: pytest.Pytester) -> None:
    run_dir = project["root"] / "run-plugin"
    result = pytester.runpytest_inprocess(
        "--moegate-gate", str(project["gate"]), "--moegate-candidate", str(project["candidate"]),
        "--moegate-report-dir", str(run_dir), "-p", "no:cacheprovider",
    )  # fmt: skip
    result.assert_outcomes(passed=1)
    _same_settings_as_the_baseline(run_dir, project["baseline"])


def test_demo_gating_keeps_the_gate_files_baseline_dtype(project, tiny: Path) -> None:
    config = load_gate(project["gate"])
    report_dir = project["root"] / "demo"
    outcomes = gate_demo_candidates(config, str(tiny), {"copy": project["candidate"]}, report_dir, lambda _m: None)
    assert outcomes["copy"].verdict.overall == "PASS" and outcomes["copy"].backend_differences == []
    assert read_manifest(report_dir / "baseline").options == BF16
    _same_settings_as_the_baseline(report_dir / "copy", read_manifest(report_dir / "baseline"))


def test_the_one_spec_builder() -> None:
    baseline = ModelSpec(model="b", options={"dtype": "bfloat16", "batch_size": 4})
    assert derived_spec(baseline, "c").options == {"dtype": "bfloat16", "batch_size": 4}
    assert derived_spec(baseline, "c", options={"dtype": "float32"}).options == {"dtype": "float32", "batch_size": 4}
    served = derived_spec(baseline, "c", backend="openai", options={"base_url": "http://127.0.0.1:1/v1"})
    assert served.options == {"base_url": "http://127.0.0.1:1/v1"}  # transformers options do not carry over
    unasked = ModelSpec(model="c", options={"batch_size": 4})
    assert spec_differences(baseline, unasked) == [
        "backend option dtype: baseline 'bfloat16', candidate None (NOT asked for: numbers may differ for that reason alone)"
    ]
