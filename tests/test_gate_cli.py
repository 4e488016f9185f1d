"""moegate baseline record / run / verdict end to end on tiny real MoE checkpoints.

The baseline and a copy of it must PASS, a candidate with a broken output head must FAIL, a stored
run must re-decide without a model, and tampering or changed settings must be refused (exit 2).
"""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import pytest

from harness.cli import main

GATE = """
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
ids = ["translate-es-beach", "knowledge-monad"]

[[budgets]]
suite = "wikitext2"
metric = "ppl"
kind = "ratio"
max = 1.05

[[budgets]]
suite = "collapse"
metric = "any"
kind = "new_flags"
max = 0
"""


def _exit_code(args: list[str]) -> int:
    with pytest.raises(SystemExit) as info:
        main(args)
    return int(info.value.code or 0)


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    import torch
    from safetensors.torch import load_file, save_file

    from tests.tiny_models import build_tiny_moe

    root = tmp_path_factory.mktemp("gate")
    base = build_tiny_moe("qwen2_moe", root / "base")
    broken = root / "broken"
    shutil.copytree(base, broken)
    weights = load_file(broken / "model.safetensors")
    weights["lm_head.weight"] = weights["lm_head.weight"] * 8.0
    save_file(weights, broken / "model.safetensors", metadata={"format": "pt"})
    (root / "gates").mkdir()
    gate = root / "gates" / "tiny.toml"
    gate.write_text(GATE.format(model=base, baseline=root / "baselines" / "tiny"))
    assert torch.equal(load_file(base / "model.safetensors")["lm_head.weight"] * 8.0, weights["lm_head.weight"])
    return {"root": root, "base": base, "broken": broken, "gate": gate}


@pytest.fixture(autouse=True)
def _isolated_cache(project: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MOEGATE_CACHE_DIR", str(project["root"] / "cache"))
    monkeypatch.setenv("MOEGATE_QUIET", "1")


@pytest.fixture(scope="module")
def recorded(project: dict[str, Path]) -> Path:
    import os

    os.environ["MOEGATE_CACHE_DIR"] = str(project["root"] / "cache")
    assert _exit_code(["baseline", "record", "--gate", str(project["gate"])]) == 0
    store = project["root"] / "baselines" / "tiny"
    manifest = json.loads((store / "manifest.json").read_text())
    assert set(manifest["suites"]) == {"wikitext2", "collapse"}
    return store


def test_same_model_passes_and_broken_head_fails(project: dict[str, Path], recorded: Path) -> None:
    copy = project["root"] / "copy"
    shutil.copytree(project["base"], copy, dirs_exist_ok=True)
    same = project["root"] / "run-same"
    assert _exit_code(["run", "--gate", str(project["gate"]), "--candidate", str(copy), "--report-dir", str(same)]) == 0
    assert json.loads((same / "report.json").read_text())["overall"] == "PASS"

    bad = project["root"] / "run-broken"
    assert _exit_code(["run", "--gate", str(project["gate"]), "--candidate", str(project["broken"]), "--report-dir", str(bad)]) == 1
    report = json.loads((bad / "report.json").read_text())
    assert report["overall"] == "FAIL"
    ppl = next(c for c in report["verdict"]["capabilities"] if c["metric"] == "ppl")
    assert ppl["status"] == "FAIL" and ppl["candidate_value"] > ppl["baseline_value"] * 1.05
    for name in ("report.md", "report.html"):
        assert (bad / name).stat().st_size > 0

    # re-deciding from stored records needs no model and gives the same verdict
    (bad / "report.json").unlink()
    assert _exit_code(["verdict", str(bad), "--gate", str(project["gate"])]) == 1
    assert json.loads((bad / "report.json").read_text())["overall"] == "FAIL"


def test_hand_edited_baseline_is_refused(project: dict[str, Path], recorded: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tampered = project["root"] / "baselines" / "tampered"
    shutil.copytree(recorded, tampered)
    records = tampered / "records" / "wikitext2.jsonl.gz"
    lines = gzip.decompress(records.read_bytes()).decode().splitlines()
    first = json.loads(lines[0])
    first["scores"]["nll"] *= 0.5
    lines[0] = json.dumps(first)
    records.write_bytes(gzip.compress(("\n".join(lines) + "\n").encode()))
    gate = project["root"] / "gates" / "tampered.toml"
    gate.write_text(project["gate"].read_text().replace(str(recorded), str(tampered)))
    code = _exit_code(["run", "--gate", str(gate), "--candidate", str(project["base"]), "--report-dir", str(project["root"] / "r-t")])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "edited by hand" in err[0]
    assert not (project["root"] / "r-t").exists()


def test_changed_settings_are_refused(project: dict[str, Path], recorded: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gate = project["root"] / "gates" / "longer.toml"
    gate.write_text(project["gate"].read_text().replace("seq_len = 64", "seq_len = 96"))
    code = _exit_code(["run", "--gate", str(gate), "--candidate", str(project["base"]), "--report-dir", str(project["root"] / "r-s")])
    assert code == 2
    err = capsys.readouterr().err
    assert "settings differ from the baseline's (seq_len)" in err
    assert not (project["root"] / "r-s").exists()


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("[gate\nname=1", "not valid TOML"),
        ('[gate]\nname = "x"\n[baseline]\nmodel="m"\ndir="d"\n[suites.wikitxt2]\n[[budgets]]\nsuite="wikitxt2"\nmetric="ppl"\nkind="ratio"\nmax=1.05\n', "did you mean 'wikitext2'"),
        ('[gate]\nname = "x"\n[baseline]\nmodel="m"\ndir="d"\n[suites.wikitext2]\n[[budgets]]\nsuite="wikitext2"\nmetric="ppl"\nkind="ratio"\nmax="five"\n', "budgets.0.max"),
        ('[gate]\nname = "x"\n[baseline]\nmodel="m"\ndir="d"\n[suites.wikitext2]\n[[budgets]]\nsuite="flores"\nmetric="chrf"\nkind="drop"\nmax=1\n', "does not run"),
    ],
)
def test_bad_gate_files(tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, needle: str) -> None:
    gate = tmp_path / "g.toml"
    gate.write_text(text)
    assert _exit_code(["verdict", str(tmp_path), "--gate", str(gate)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0], err


def test_pytest_plugin_one_test_per_capability(pytester: pytest.Pytester, project: dict[str, Path], recorded: Path) -> None:
    import xml.etree.ElementTree as ET

    junit = project["root"] / "junit.xml"
    result = pytester.runpytest_inprocess(
        "--moegate-gate", str(project["gate"]),
        "--moegate-candidate", str(project["broken"]),
        "--moegate-report-dir", str(project["root"] / "run-plugin"),
        f"--junitxml={junit}", "-p", "no:cacheprovider",
    )
    cases = {case.get("name"): case for case in ET.parse(junit).getroot().iter("testcase")}
    assert set(cases) == {"moegate[wikitext2/ppl]", "moegate[collapse/any]"}
    failure = cases["moegate[wikitext2/ppl]"].find("failure")
    assert failure is not None and "budget" in (failure.get("message", "") + (failure.text or ""))
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["*moegate gate*", "FAIL*"])
