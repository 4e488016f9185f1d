"""No command deletes what it did not create (issue 12 §3): every folder moegate replaces carries its
marker (``.moegate-store``, ``.moegate-run``...) or is recognised as an older moegate store or run; any
other non-empty target, and any folder that is or holds the candidate, the baseline model or the gate
file, is refused in one line (exit 2) with nothing touched. All in tmp dirs, on a tiny model.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import shutil
from pathlib import Path

import pytest

from harness.api import load_gate
from harness.atomic import atomic_dir, check_replaceable
from harness.errors import UserError
from harness.store import MANIFEST, load_store, write_store
from tests.gate_toys import acc_run, moegate, recorded_toy_project, write_gate
from tests.test_hardening import one_line_exit_2


def tree_digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("paths")
    with recorded_toy_project(root) as (base, gate):
        yield {"root": root, "base": base, "gate": gate, "store": root / "baselines" / "toy"}


def test_report_dir_holding_the_candidate_keeps_its_weights(project: dict[str, Path], tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    candidate = shutil.copytree(project["base"], out / "candidate")
    before = tree_digest(candidate)
    one_line_exit_2(capsys, ["run", "--gate", project["gate"], "--candidate", candidate, "--report-dir", out], str(out))
    assert tree_digest(candidate) == before
    assert sorted(p.name for p in out.iterdir()) == ["candidate"]


def test_baseline_dir_dot_keeps_the_project(project: dict[str, Path], tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "proj"
    gate = write_gate(root, str(project["base"]))
    gate.write_text(gate.read_text().replace('dir = "baselines/toy"', 'dir = "."'))
    (root / "notes.txt").write_text("mine")
    before = tree_digest(root)
    one_line_exit_2(capsys, ["baseline", "record", "--gate", gate], "gate")
    assert tree_digest(root) == before


def test_baselines_folder_of_other_models_is_kept(project: dict[str, Path], tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "proj"
    gate = write_gate(root, str(project["base"]))
    gate.write_text(gate.read_text().replace('dir = "baselines/toy"', 'dir = "baselines"'))
    shutil.copytree(project["store"], root / "baselines" / "other-model")
    before = tree_digest(root / "baselines")
    one_line_exit_2(capsys, ["baseline", "record", "--gate", gate], "baselines", "did not create")
    assert tree_digest(root / "baselines") == before


def test_record_out_onto_a_user_folder(project: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    mine = tmp_path / "mydata"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    one_line_exit_2(capsys, ["baseline", "record", "--gate", project["gate"], "--out", mine], "mydata")
    assert (mine / "thesis.tex").read_text() == "years of work" and len(list(mine.iterdir())) == 1


def test_eval_out_onto_a_user_folder_is_refused_before_the_model(project: dict[str, Path], tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    mine = tmp_path / "mydata"
    mine.mkdir()
    (mine / "a.txt").write_text("x")
    one_line_exit_2(capsys, ["eval", tmp_path / "no-such-model", "--suite", "toy", "--out", mine], "mydata")


def test_report_dir_onto_the_baseline_store(project: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    before = tree_digest(project["store"])
    one_line_exit_2(capsys, ["run", "--gate", project["gate"], "--candidate", project["base"], "--report-dir", project["store"]],
                    "baselines")
    assert tree_digest(project["store"]) == before


def test_rerecording_replaces_a_store_it_wrote_and_an_unmarked_old_one(project: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "store"
    assert moegate("baseline", "record", "--gate", project["gate"], "--out", out) == 0
    assert (out / ".moegate-store").is_file()
    (out / ".moegate-store").unlink()  # as an older moegate wrote it: recognised by its manifest
    assert moegate("baseline", "record", "--gate", project["gate"], "--out", out) == 0
    load_store(out)


def test_run_dirs_are_marked_and_old_ones_recognised(project: dict[str, Path], tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    assert moegate("run", "--gate", project["gate"], "--candidate", project["base"], "--report-dir", run_dir) == 0
    assert (run_dir / ".moegate-run").is_file() and (run_dir / "candidate" / ".moegate-store").is_file()
    (run_dir / ".moegate-run").unlink()
    (run_dir / "candidate" / ".moegate-store").unlink()
    assert moegate("verdict", run_dir, "--gate", project["gate"]) == 0
    assert moegate("run", "--gate", project["gate"], "--candidate", project["base"], "--report-dir", run_dir) == 0


@pytest.mark.parametrize("name", ["../../outside", "/tmp/abs", "a/b", ".."])
def test_gate_name_must_stay_under_reports(name: str, tmp_path: Path) -> None:
    gate = write_gate(tmp_path, "m", name="toy")
    gate.write_text(gate.read_text().replace('name = "toy"', f'name = "{name}"'))
    with pytest.raises(UserError, match=r"gate\.name"):
        load_gate(gate)


def test_records_file_outside_the_store_is_refused(tmp_path: Path) -> None:
    store = tmp_path / "store"
    write_store(store, {"toy": acc_run([1, 0, 1])}, model="m", backend="transformers", fingerprint="f")
    secret = tmp_path / "secret.jsonl.gz"
    shutil.copy(store / "records" / "toy.jsonl.gz", secret)
    manifest = json.loads((store / MANIFEST).read_text())
    manifest["suites"]["toy"]["records_file"] = "../secret.jsonl.gz"
    (store / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(UserError, match=r"records_file.*not a path inside the store"):
        load_store(store)
    manifest["suites"]["toy"]["records_file"] = "records/toy.jsonl.gz"
    (store / MANIFEST).write_text(json.dumps(manifest))
    (store / "records" / "toy.jsonl.gz").unlink()
    (store / "records" / "toy.jsonl.gz").symlink_to(secret)
    with pytest.raises(UserError, match="points outside the store"):
        load_store(store)


def test_the_guard_itself(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="not a folder"):
        check_replaceable(tmp_path / "file", "store")
    run = tmp_path / "run"
    run.mkdir()
    (run / ".moegate-run").write_text("moegate run\n")
    (run / "report.json").write_text("{}")
    with pytest.raises(UserError, match="moegate run folder"):
        check_replaceable(run, "store")
    with pytest.raises(UserError, match="holds"):
        check_replaceable(tmp_path, "store", protect=[tmp_path / "file"])
    (tmp_path / "link").symlink_to(run)
    with pytest.raises(UserError, match="symbolic link"):
        check_replaceable(tmp_path / "link", "run")
    (tmp_path / "empty").mkdir()
    with atomic_dir(tmp_path / "empty", kind="store") as tmp:
        (tmp / "x").write_text("y")
    assert (tmp_path / "empty" / "x").read_text() == "y"


def _write_many(target: str, worker: int) -> None:
    for i in range(40):
        write_store(Path(target), {"toy": acc_run([worker, i % 2, 1])}, model=f"w{worker}", backend="transformers",
                    fingerprint=f"{worker}-{i}")  # fmt: skip


def test_two_processes_writing_one_store(tmp_path: Path) -> None:
    target = tmp_path / "store"
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_write_many, args=(str(target), w)) for w in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=120)
    assert [w.exitcode for w in workers] == [0, 0, 0, 0]
    manifest, runs = load_store(target)  # whole: one writer's store, never a mix
    assert manifest.model == f"w{int(runs['toy'].records[0].scores['acc'])}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store"]
