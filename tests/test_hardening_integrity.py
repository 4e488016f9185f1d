"""What a stored baseline's hashes prove, and what proves more (issue 12 §4).

A records file edited together with its ``records_sha256`` passes the hash check (the hash catches
accidents only); the pinned ``[baseline] manifest_sha256``, the HMAC signature under
``MOEGATE_BASELINE_KEY`` and the impossible-value check catch it.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import math
import re
from pathlib import Path

import pytest

from harness.errors import UserError
from harness.integrity import KEY_ENV, SIGNATURE
from harness.records import ItemRecord, MetricSpec, SuiteRun
from harness.store import MANIFEST, load_baseline, load_store, manifest_sha256, write_store
from harness.suites import SUITES
from tests.gate_toys import register_toys, write_gate
from tests.test_hardening import moegate, one_line_exit_2

PPL = MetricSpec(name="ppl", kind="perplexity", higher_is_better=False)


def rewrite_records(store: Path, suite: str, edit) -> None:  # type: ignore[no-untyped-def]
    """Edit a suite's records *and* its records_sha256: what a deliberate edit does."""
    manifest = json.loads((store / MANIFEST).read_text())
    entry = manifest["suites"][suite]
    path = store / entry["records_file"]
    lines = [json.loads(line) for line in gzip.decompress(path.read_bytes()).decode().splitlines()]
    blob = gzip.compress("".join(json.dumps(edit(r)) + "\n" for r in lines).encode(), mtime=0)
    path.write_bytes(blob)
    entry["records_sha256"] = hashlib.sha256(blob).hexdigest()
    (store / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny: Path) -> dict[str, Path]:
    saved = register_toys()
    monkeypatch.setenv("MOEGATE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv(KEY_ENV, raising=False)
    gate = write_gate(tmp_path, str(tiny))
    yield {"root": tmp_path, "gate": gate, "store": tmp_path / "baselines" / "toy", "model": tiny}
    SUITES.restore(saved)


def _pin(gate: Path, sha: str, extra: str = "") -> None:
    gate.write_text(gate.read_text().replace('dir = "baselines/toy"', f'dir = "baselines/toy"\nmanifest_sha256 = "{sha}"{extra}'))


def test_a_deliberate_edit_passes_the_hash_but_not_the_pin(project: dict[str, Path], tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert moegate("baseline", "record", "--gate", project["gate"]) == 0
    printed = re.search(r'^manifest_sha256 = "([0-9a-f]{64})"$', capsys.readouterr().out, re.M)
    assert printed and printed.group(1) == manifest_sha256(project["store"])
    _pin(project["gate"], printed.group(1))
    assert moegate("run", "--gate", project["gate"], "--candidate", project["model"], "--report-dir", tmp_path / "r0") == 0

    def worse(record: dict) -> dict:
        record["scores"]["logprob"] *= 3
        return record

    rewrite_records(project["store"], "toy", worse)
    load_store(project["store"])  # the hash check alone accepts the edit: it proves no more than that
    one_line_exit_2(capsys, ["run", "--gate", project["gate"], "--candidate", project["model"], "--report-dir", tmp_path / "r1"],
                    "manifest sha256", "pins")
    assert not (tmp_path / "r1").exists()


def test_bad_pin_value_is_refused_when_the_gate_loads(project: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    _pin(project["gate"], "abc")
    one_line_exit_2(capsys, ["baseline", "record", "--gate", project["gate"]], "manifest_sha256")


def test_signed_baselines(project: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                          capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv(KEY_ENV, "s3cret")
    assert moegate("baseline", "record", "--gate", project["gate"]) == 0
    assert (project["store"] / SIGNATURE).is_file()
    run = ["run", "--gate", project["gate"], "--candidate", project["model"], "--report-dir"]
    assert moegate(*run, tmp_path / "r0") == 0
    monkeypatch.setenv(KEY_ENV, "another key")
    one_line_exit_2(capsys, [*run, tmp_path / "r1"], "signature", KEY_ENV)
    monkeypatch.setenv(KEY_ENV, "s3cret")
    rewrite_records(project["store"], "toy", lambda r: {**r, "prompt": r["prompt"] + "!"})
    one_line_exit_2(capsys, [*run, tmp_path / "r2"], "signature")
    (project["store"] / SIGNATURE).unlink()
    one_line_exit_2(capsys, [*run, tmp_path / "r3"], "not signed")
    monkeypatch.delenv(KEY_ENV)
    gate = project["gate"]
    gate.write_text(gate.read_text().replace('dir = "baselines/toy"', 'dir = "baselines/toy"\nrequire_signature = true'))
    one_line_exit_2(capsys, [*run, tmp_path / "r4"], "requires a signed baseline", KEY_ENV)
    assert not any((tmp_path / f"r{i}").exists() for i in range(1, 5))


def _ppl_store(tmp_path: Path, nll: float, tokens: float = 10.0) -> Path:
    records = [ItemRecord(suite="wt", item_id=f"w{i}", scores={"nll": 20.0 + i, "tokens": 10.0}) for i in range(3)]
    records.append(ItemRecord(suite="wt", item_id="w3", scores={"nll": nll, "tokens": tokens}))
    store = tmp_path / f"store-{len(list(tmp_path.iterdir()))}"
    write_store(store, {"wt": SuiteRun(suite="wt", settings={}, metrics=[PPL], records=records)},
                model="m", backend="transformers", fingerprint="f")  # fmt: skip
    return store


@pytest.mark.parametrize(("nll", "tokens"), [(-5.0, 10.0), (math.nan, 10.0), (math.inf, 10.0), (5.0, 0.0)])
def test_impossible_values_in_a_baseline_are_refused(tmp_path: Path, nll: float, tokens: float) -> None:
    store = _ppl_store(tmp_path, nll, tokens)
    load_store(store)  # readable...
    with pytest.raises(UserError, match="impossible"):
        load_baseline(store)  # ...but no model produces it


def test_a_binary_score_of_two_is_impossible(tmp_path: Path) -> None:
    from tests.gate_toys import acc_run

    write_store(tmp_path / "s", {"toy": acc_run([1, 0, 2])}, model="m", backend="transformers", fingerprint="f")
    with pytest.raises(UserError, match=r"item q2 score acc = 2\.0"):
        load_baseline(tmp_path / "s")
    assert load_baseline(_ppl_store(tmp_path, 12.0))[0].model == "m"


def test_a_signature_covers_the_calibration_too(project: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    """``calibration.json`` is written after the manifest is pinned, and its churn widens a budget set
    with ``churn_multiple``: an edit there loosened the gate under a signed baseline until it was signed too."""
    from harness.api.calibrate import CALIBRATION_FILE, write_calibration
    from harness.gate.churn import Calibration, ObservedChange, Perturbation

    monkeypatch.setenv(KEY_ENV, "s3cret")
    assert moegate("baseline", "record", "--gate", project["gate"]) == 0
    store, gate = project["store"], project["gate"]
    gate.write_text(gate.read_text().replace("max = 0.5", "max = 0.5\nchurn_multiple = 2"))
    seen = ObservedChange(status="PASS", change=0.1, ci_low=0.05, budget=0.5)
    write_calibration(store, Calibration(manifest_sha256=manifest_sha256(store), created_utc="now", perturbations=[
        Perturbation(name="bf16", description="bf16", fingerprint="f", capabilities={"toy/logprob": seen})]))  # fmt: skip
    assert (store / f"{CALIBRATION_FILE}.hmac").is_file()
    run = ["run", "--gate", gate, "--candidate", project["model"], "--report-dir"]
    assert moegate(*run, tmp_path / "r0") == 0
    path = store / CALIBRATION_FILE
    path.write_text(path.read_text().replace('"change": 0.1', '"change": 50.0'))  # a budget of 100 points
    one_line_exit_2(capsys, [*run, tmp_path / "r1"], CALIBRATION_FILE, "signature")
    (store / f"{CALIBRATION_FILE}.hmac").unlink()
    one_line_exit_2(capsys, [*run, tmp_path / "r2"], "not signed")
    assert not (tmp_path / "r1").exists() and not (tmp_path / "r2").exists()
