"""Bad inputs through the real CLI: each ends in one line naming the problem and the fix, exit 2, and
nothing half-written (no report folder, no temp files beside the outputs).

One recorded toy baseline on a tiny real MoE serves every case; each case breaks one thing.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.gate_toys import moegate, recorded_toy_project, write_gate
from tests.tiny_models import build_tiny_moe

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hardening")
    with recorded_toy_project(root) as (base, gate):
        assert moegate("run", "--gate", gate, "--candidate", base, "--report-dir", root / "good-run") == 0
        yield {"root": root, "base": base, "gate": gate}


def one_line_exit_2(capsys: pytest.CaptureFixture[str], args: list[object], *needles: str) -> str:
    capsys.readouterr()
    code = moegate(*args)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    lines = err.splitlines()
    errors = [line for line in lines if line.startswith("moegate: error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0] and " — " in errors[0] and "Traceback" not in err, err
    for needle in needles:
        assert needle in errors[0], err
    return errors[0]


def no_leftovers(folder: Path) -> None:
    assert not folder.exists() or not any(p.name.startswith(".") and "tmp" in p.name for p in folder.rglob("*"))


def broken_copy(recorded: dict[str, Path], tmp_path: Path, edit: Callable[[Path], None]) -> Path:
    folder = shutil.copytree(recorded["base"], tmp_path / "candidate")
    edit(folder)
    return folder


def _truncate(folder: Path) -> None:
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1000])


def _bad_index(folder: Path) -> None:
    (folder / "model-00001-of-00002.safetensors").write_bytes((folder / "model.safetensors").read_bytes())
    (folder / "model.safetensors").unlink()
    names = {"model.embed_tokens.weight": "model-00001-of-00002.safetensors", "lm_head.weight": "model-00002-of-00002.safetensors"}
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": names}))


def _no_tokenizer(folder: Path) -> None:
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        (folder / name).unlink(missing_ok=True)


def _other_tokenizer(folder: Path) -> None:
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config["eos_token"] = "<|im_start|>"
    (folder / "tokenizer_config.json").write_text(json.dumps(config))


def _latin1_config(folder: Path) -> None:
    (folder / "config.json").write_bytes((folder / "config.json").read_bytes().replace(b"{", b'{"note": "caf\xe9",', 1))


CHECKPOINTS = {
    "truncated shard": (_truncate, ("truncated",)),
    "index names a missing shard": (_bad_index, ("missing shard",)),
    "missing tokenizer": (_no_tokenizer, ("tokenizer",)),
    "tokenizer differs from the baseline's": (_other_tokenizer, ("tokenizer", "baseline")),
    "non-UTF-8 config.json": (_latin1_config, ("config.json",)),
}


@pytest.mark.parametrize("case", list(CHECKPOINTS))
def test_bad_candidate_checkpoints(case: str, recorded: dict[str, Path], tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    edit, needles = CHECKPOINTS[case]
    candidate = broken_copy(recorded, tmp_path, edit)
    run_dir = tmp_path / "run"
    one_line_exit_2(capsys, ["run", "--gate", recorded["gate"], "--candidate", candidate, "--report-dir", run_dir], *needles)
    assert not run_dir.exists()
    no_leftovers(tmp_path)


def test_baseline_of_another_model(recorded: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    other = build_tiny_moe("mixtral", tmp_path / "mixtral")
    run_dir = tmp_path / "run"
    one_line_exit_2(capsys, ["run", "--gate", recorded["gate"], "--candidate", other, "--report-dir", run_dir], "baseline")
    assert not run_dir.exists()


def test_baseline_edited_by_hand_or_other_settings(recorded: dict[str, Path], tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    project = shutil.copytree(recorded["root"], tmp_path / "project", ignore=shutil.ignore_patterns("cache", "good-run"))
    gate = project / "gates" / "toy.toml"
    gate.write_text(gate.read_text().replace(str(recorded["base"]), str(project / "base")))
    records = next((project / "baselines" / "toy" / "records").glob("*"))
    other = gate.with_name("other.toml")
    other.write_text(gate.read_text().replace("n_items = 6", "n_items = 4"))
    one_line_exit_2(capsys, ["run", "--gate", other, "--candidate", project / "base", "--report-dir", tmp_path / "r0"],
                    "settings differ")
    records.write_bytes(records.read_bytes()[:-3] + b"abc")
    one_line_exit_2(capsys, ["run", "--gate", gate, "--candidate", project / "base", "--report-dir", tmp_path / "r1"],
                    "edited by hand")
    assert not (tmp_path / "r0").exists() and not (tmp_path / "r1").exists()


GATES = {
    "malformed TOML": ("[gate\nname = 'x'\n", "not valid TOML"),
    "unknown suite": ("[suites.wikitext3]\n[[budgets]]\nsuite='wikitext3'\nmetric='ppl'\nkind='ratio'\nmax=1.1\n", "wikitext3"),
    "budget of the wrong type": ("[suites.toy]\n[[budgets]]\nsuite='toy'\nmetric='logprob'\nkind='drop'\nmax='half'\n", "max"),
    "no budgets": ("[suites.toy]\n", "budgets"),
}


@pytest.mark.parametrize("case", list(GATES))
def test_bad_gate_files(case: str, recorded: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    body, needle = GATES[case]
    gate = write_gate(tmp_path, str(recorded["base"]), body=body)
    if case == "malformed TOML":
        gate.write_text(body)
    one_line_exit_2(capsys, ["run", "--gate", gate, "--candidate", recorded["base"], "--report-dir", tmp_path / "r"], needle)
    assert not (tmp_path / "r").exists()


def test_non_utf8_gate_and_detect_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gate = tmp_path / "gate.toml"
    gate.write_bytes(b"[gate]\nname = \"caf\xe9\"\n")
    one_line_exit_2(capsys, ["run", "--gate", gate, "--candidate", tmp_path, "--report-dir", tmp_path / "r"], "UTF-8")
    lines = tmp_path / "outputs.jsonl"
    lines.write_bytes(b'{"id": "a", "prompt": "p", "response": "caf\xe9"}\n')
    one_line_exit_2(capsys, ["detect", "--candidate", lines], "outputs.jsonl")


def test_empty_suite(recorded: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    body = "[suites.toy]\nn_items = 0\n[[budgets]]\nsuite='toy'\nmetric='logprob'\nkind='drop'\nmax=0.5\n"
    gate = write_gate(tmp_path, str(recorded["base"]), body=body, name="empty")
    one_line_exit_2(capsys, ["baseline", "record", "--gate", gate], "no items")
    assert not (tmp_path / "baselines").exists()


FULL_DISK_CHILD = textwrap.dedent(
    """
    import resource, signal, sys
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)          # EFBIG instead of death, like ENOSPC
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
    from tests.gate_toys import register_toys
    register_toys()
    from harness.cli import main
    main(sys.argv[1:])
    """
)


def test_full_disk_while_writing_the_report(recorded: dict[str, Path], tmp_path: Path) -> None:
    run_dir = shutil.copytree(recorded["root"] / "good-run", tmp_path / "run")
    for name in ("report.json", "report.md", "report.html"):
        (run_dir / name).unlink(missing_ok=True)
    env = dict(os.environ, PYTHONPATH=str(ROOT), MOEGATE_QUIET="1")
    done = subprocess.run([sys.executable, "-c", FULL_DISK_CHILD, "verdict", str(run_dir), "--gate", str(recorded["gate"])],
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    err = done.stderr.strip()
    assert done.returncode == 2, err
    assert err.count("\n") == 0 and "could not write" in err, err
    no_leftovers(run_dir)
    if (run_dir / "report.json").exists():  # written whole before the limit hit, or not at all
        json.loads((run_dir / "report.json").read_text())


def test_gate_audits_the_weights_before_any_suite(recorded: dict[str, Path], tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    import torch
    from safetensors.torch import load_file, save_file

    def poison(folder: Path) -> None:
        tensors = load_file(folder / "model.safetensors")
        tensors["model.norm.weight"][0] = float("nan")
        save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
        assert torch.isnan(load_file(folder / "model.safetensors")["model.norm.weight"]).any()

    candidate = broken_copy(recorded, tmp_path, poison)
    run_dir = tmp_path / "run"
    assert moegate("run", "--gate", recorded["gate"], "--candidate", candidate, "--report-dir", run_dir) == 1
    report = json.loads((run_dir / "report.json").read_text())
    (capability,) = report["verdict"]["capabilities"]
    assert report["overall"] == "FAIL" and capability["suite"] == "inspect" and "NaN" in capability["reason"]
    assert not (run_dir / "candidate").exists()  # no suite ran
    good = json.loads((recorded["root"] / "good-run" / "report.json").read_text())
    assert good["inspect"]["must_fail"] is False and good["inspect"]["changed"] == []


def test_damaged_norm_fails_next_to_the_suites(recorded: dict[str, Path], tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    def nudge(folder: Path) -> None:
        tensors = load_file(folder / "model.safetensors")
        tensors["model.layers.0.input_layernorm.weight"][:4] += 1e-3
        save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})

    candidate = broken_copy(recorded, tmp_path, nudge)
    run_dir = tmp_path / "run"
    assert moegate("run", "--gate", recorded["gate"], "--candidate", candidate, "--report-dir", run_dir) == 1
    suites = [c["suite"] for c in json.loads((run_dir / "report.json").read_text())["verdict"]["capabilities"]]
    assert suites == ["toy", "inspect"]
    (run_dir / "report.json").unlink()
    assert moegate("verdict", run_dir, "--gate", recorded["gate"]) == 1  # re-deciding keeps the audit
    assert json.loads((run_dir / "report.json").read_text())["overall"] == "FAIL"
