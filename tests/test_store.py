"""Stored runs: round trip, hand-edit detection, artifacts, schema versions, comparability checks, atomic replacement."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from harness.errors import UserError
from harness.store import (
    MANIFEST,
    check_comparable,
    check_same_data,
    environment,
    load_store,
    read_manifest,
    write_store,
)
from harness.suites import SUITES
from tests.gate_toys import ToySettings, acc_run, register_toys


@pytest.fixture(autouse=True)
def toys():
    saved = register_toys()
    yield
    SUITES.restore(saved)


def _store(tmp_path: Path) -> Path:
    run = acc_run([1, 0, 1, 1])
    run.settings = ToySettings().model_dump(mode="json")
    run.data_sha256 = {"toy.jsonl": "a" * 64}
    write_store(tmp_path / "b", {"toy": run}, model="m", backend="transformers", fingerprint="f" * 64)
    return tmp_path / "b"


def test_round_trip_keeps_every_field(tmp_path: Path) -> None:
    store = _store(tmp_path)
    manifest, runs = load_store(store)
    assert manifest.fingerprint == "f" * 64
    assert manifest.environment == environment()
    assert {"python", "torch", "transformers", "platform"} <= set(manifest.environment)
    assert manifest.suites["toy"].n_items == 4
    assert runs["toy"] == acc_run([1, 0, 1, 1]).model_copy(
        update={"settings": ToySettings().model_dump(mode="json"), "data_sha256": {"toy.jsonl": "a" * 64}}
    )
    assert (store / "records" / "toy.jsonl.gz").is_file()


def test_hand_edit_is_detected(tmp_path: Path) -> None:
    store = _store(tmp_path)
    path = store / "records" / "toy.jsonl.gz"
    lines = gzip.decompress(path.read_bytes()).decode().replace('"acc": 0.0', '"acc": 1.0')
    path.write_bytes(gzip.compress(lines.encode()))
    with pytest.raises(UserError, match="edited by hand"):
        load_store(store)


def test_missing_or_corrupt_manifest(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="baseline record"):
        load_store(tmp_path)
    store = _store(tmp_path)
    (store / MANIFEST).write_text("{not json", encoding="utf-8")
    with pytest.raises(UserError, match="not a valid moegate manifest"):
        read_manifest(store)


def test_settings_mismatch_is_refused_environment_is_warned(tmp_path: Path) -> None:
    store = _store(tmp_path)
    manifest = read_manifest(store)
    assert check_comparable(manifest, {"toy": ToySettings()}, store=store) == []
    with pytest.raises(UserError, match=r"'toy' settings differ from the baseline's \(n_items\)"):
        check_comparable(manifest, {"toy": ToySettings(n_items=3)}, store=store)
    with pytest.raises(UserError, match="no records for suite 'toy_crash'"):
        check_comparable(manifest, {"toy_crash": ToySettings()}, store=store)
    manifest.environment["torch"] = "0.0.1"
    warnings = check_comparable(manifest, {"toy": ToySettings()}, store=store)
    assert len(warnings) == 1 and "torch 0.0.1 ->" in warnings[0]


def test_different_data_is_refused(tmp_path: Path) -> None:
    manifest = read_manifest(_store(tmp_path))
    run = acc_run([1])
    run.data_sha256 = {"toy.jsonl": "b" * 64}
    with pytest.raises(UserError, match="read different data"):
        check_same_data(manifest, {"toy": run})
    run.data_sha256 = {"toy.jsonl": "a" * 64}
    check_same_data(manifest, {"toy": run})


def test_rewrite_replaces_the_store_whole(tmp_path: Path) -> None:
    store = _store(tmp_path)
    write_store(store, {"other": acc_run([1], suite="other")}, model="m2", backend="openai", fingerprint="g")
    manifest, runs = load_store(store)
    assert set(runs) == {"other"} and manifest.model == "m2"
    assert not (store / "records" / "toy.jsonl.gz").exists()
    assert json.loads((store / MANIFEST).read_text())["suites"]["other"]["n_items"] == 1


def test_keys_a_suite_records_beside_its_settings_are_compared_after_the_run(tmp_path: Path) -> None:
    """lm-eval suites record task versions beside their settings; a baseline with them stays comparable,
    and a candidate run with other versions is refused."""
    from harness.records import SuiteRun
    from harness.store import check_comparable, check_same_data, read_manifest, write_store
    from harness.suites.base import SuiteSettings

    settings = SuiteSettings(limit=3)
    recorded = {**settings.model_dump(mode="json"), "lm_eval_tasks": {"arc": "1.0"}}
    write_store(tmp_path / "b", {"s": SuiteRun(suite="s", settings=recorded)}, model="m", backend="transformers", fingerprint="f")
    manifest = read_manifest(tmp_path / "b")
    check_comparable(manifest, {"s": settings}, store=tmp_path / "b")
    check_same_data(manifest, {"s": SuiteRun(suite="s", settings=recorded)})
    other = {**recorded, "lm_eval_tasks": {"arc": "2.0"}}
    with pytest.raises(UserError, match="lm_eval_tasks"):
        check_same_data(manifest, {"s": SuiteRun(suite="s", settings=other)})


def test_artifacts_are_files_hashed_in_the_manifest_and_read_on_first_use(tmp_path: Path) -> None:
    run = acc_run([1, 0]).model_copy(update={"artifacts": {"topk.bin": b"\x00\x01" * 1000, "ids.bin": b"xyz"}})
    plain = acc_run([1])
    write_store(tmp_path / "s", {"toy": run, "plain": plain}, model="m", backend="transformers", fingerprint="f")
    entry = read_manifest(tmp_path / "s").suites["toy"].artifacts["topk.bin"]
    assert entry.file == "artifacts/toy/topk.bin" and entry.size == 2000
    _, runs = load_store(tmp_path / "s")
    loaded = runs["toy"].artifacts
    assert loaded.loaded() == [] and sorted(loaded) == ["ids.bin", "topk.bin"]  # nothing read into memory yet
    assert loaded["ids.bin"] == b"xyz" and loaded.loaded() == ["ids.bin"]
    assert len(runs["plain"].artifacts) == 0 and not (tmp_path / "s" / "artifacts" / "plain").exists()

    (tmp_path / "s" / "artifacts" / "toy" / "topk.bin").write_bytes(b"\x00\x02" * 1000)
    with pytest.raises(UserError, match=r"artifact .*topk.bin was edited by hand"):
        load_store(tmp_path / "s")
    (tmp_path / "s" / "artifacts" / "toy" / "topk.bin").unlink()
    with pytest.raises(UserError, match=r"artifact .*topk.bin is missing"):
        load_store(tmp_path / "s")


def test_artifact_names_are_plain_file_names() -> None:
    from harness.records import SuiteRun

    with pytest.raises(ValueError, match="plain file name"):
        SuiteRun.model_validate({"suite": "s", "settings": {}, "artifacts": {"../x": b""}})


def test_stores_of_another_schema_version_are_refused_in_one_line(tmp_path: Path) -> None:
    store = _store(tmp_path)
    document = json.loads((store / MANIFEST).read_text())
    document["schema_version"] = 1
    (store / MANIFEST).write_text(json.dumps(document))
    with pytest.raises(UserError, match=r"store schema version 1 .*reads version 2") as info:
        load_store(store)
    assert "\n" not in info.value.line() and "re-record" in info.value.line()


def test_records_of_another_schema_version_are_refused(tmp_path: Path) -> None:
    run = acc_run([1])
    run.records[0].version = 0
    write_store(tmp_path / "s", {"toy": run}, model="m", backend="transformers", fingerprint="f")
    with pytest.raises(UserError, match="record schema version 0"):
        load_store(tmp_path / "s")
