"""Fuzz the parsers of user files with hypothesis: whatever the bytes, the only exception is ``UserError``.

Gate files (TOML), stored runs (manifest JSON and gzipped JSONL records), detect input lines, and
safetensors headers (the loader's checks and inspect's scan).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import shutil
import struct
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness.api import load_gate
from harness.checkpoint import check_safetensors
from harness.cli.detect import _parse_line
from harness.errors import UserError
from harness.inspect import scan_file
from harness.store import MANIFEST, load_store, write_store
from tests.gate_toys import acc_run

FUZZ = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)

GATE_WORDS = ["[gate]", "[baseline]", "[suites.toy]", "[suites.wikitext2]", "[[budgets]]", "name = 'g'",
              "model = 'm'", "dir = 'b'", "suite = 'toy'", "metric = 'acc'", "kind = 'drop'", "kind = 'ratio'",
              "max = 1.5", "max = 'x'", "confidence = 2", "profile = 'ci'", "limit = -1", "n_items = 'a'",
              "[gate", "= 1", "\"\"\"", "\\u00e9", "\x00", "[suites]", "suites = 3", "budgets = []"]


def _expect_user_error(call) -> None:
    try:
        call()
    except UserError as exc:
        assert exc.line() and "\n" not in exc.problem


@FUZZ
@given(st.lists(st.sampled_from(GATE_WORDS) | st.text(max_size=20), max_size=14))
def test_gate_files(lines: list[str]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "gates" / "g.toml"
        path.parent.mkdir()
        path.write_text("\n".join(lines), encoding="utf-8")
        _expect_user_error(lambda: load_gate(path))


@FUZZ
@given(st.binary(max_size=200))
def test_gate_file_bytes(blob: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "g.toml"
        path.write_bytes(blob)
        _expect_user_error(lambda: load_gate(path))


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("fuzz") / "store"
    write_store(folder, {"toy": acc_run([1, 0, 1])}, model="m", backend="transformers", fingerprint="f" * 16)
    return folder


@FUZZ
@given(value=json_values, key=st.sampled_from(["model", "suites", "fingerprint", "schema_version", "environment", None]))
def test_manifest(store: Path, value: object, key: str | None) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        target = Path(tmp) / "s"
        shutil.copytree(store, target)
        manifest = json.loads((target / MANIFEST).read_text())
        document = value if key is None else {**manifest, key: value}
        (target / MANIFEST).write_text(json.dumps(document))
        _expect_user_error(lambda: load_store(target))


@FUZZ
@given(blob=st.one_of(st.binary(max_size=300), st.lists(json_values, max_size=4).map(
    lambda rows: gzip.compress("\n".join(json.dumps(r) for r in rows).encode()))))
def test_records_with_a_matching_hash(store: Path, blob: bytes) -> None:
    """Records that pass the hash check (as if the manifest were edited too) still fail cleanly."""
    with tempfile.TemporaryDirectory() as tmp:
        target = Path(tmp) / "s"
        shutil.copytree(store, target)
        manifest = json.loads((target / MANIFEST).read_text())
        entry = manifest["suites"]["toy"]
        (target / entry["records_file"]).write_bytes(blob)
        entry["records_sha256"] = hashlib.sha256(blob).hexdigest()
        (target / MANIFEST).write_text(json.dumps(manifest))
        _expect_user_error(lambda: load_store(target))


@FUZZ
@given(st.one_of(st.text(max_size=80), json_values.map(json.dumps),
                 st.dictionaries(st.sampled_from(["id", "prompt", "response", "lang", "min_len", "x"]), json_values,
                                 max_size=6).map(json.dumps)))
def test_detect_lines(line: str) -> None:
    _expect_user_error(lambda: _parse_line(Path("in.jsonl"), 3, line))


DTYPES = ["F32", "F16", "BF16", "I8", "U8", "F8_E4M3", "F8_E5M2", "BOOL", "F4", "Q9", 7, None]
WIDTHS = {"F32": 4, "F16": 2, "BF16": 2, "I8": 1, "U8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "BOOL": 1}
NAMES = ["model.layers.0.mlp.gate.weight", "model.layers.1.mlp.experts.gate_up_proj", "model.norm.weight",
         "model.layers.0.mlp.experts.2.up_proj.weight", "__metadata__", ""]


@st.composite
def headers(draw: st.DrawFn) -> tuple[bytes, int]:
    """Mostly well-formed safetensors headers with drawn shapes, offsets and dtypes; data of drawn length."""
    entries: dict[str, object] = {}
    offset = 0
    for name in draw(st.lists(st.sampled_from(NAMES), max_size=4, unique=True)):
        if name == "__metadata__":
            entries[name] = draw(st.dictionaries(st.text(max_size=4), st.text(max_size=4), max_size=2) | json_values)
            continue
        shape = draw(st.lists(st.integers(-2, 5), max_size=3))
        dtype = draw(st.sampled_from(DTYPES))
        size = draw(st.integers(-4, 64))
        if draw(st.booleans()) and dtype in WIDTHS:  # consistent: exercises the scan, not just the checks
            size = WIDTHS[dtype]
            for dim in shape:
                size *= dim
        info = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + size]}
        entries[name] = draw(st.just(info) | json_values.map(lambda v, i=info: {**i, "shape": v}))
        offset += max(size, 0)
    text = json.dumps(entries).encode()
    data_len = draw(st.sampled_from([offset, max(offset - 1, 0), offset + 3]))
    return text, data_len


@FUZZ
@given(headers(), st.binary(min_size=0, max_size=8), st.booleans())
def test_safetensors_headers(header: tuple[bytes, int], noise: bytes, lie_about_length: bool) -> None:
    text, data_len = header
    length = len(text) + (len(noise) if lie_about_length else 0)
    blob = struct.pack("<Q", length) + text + bytes(range(256)) * (data_len // 256) + bytes(data_len % 256)
    _expect_user_error_reading_safetensors(blob)


@FUZZ
@given(st.binary(max_size=64))
def test_safetensors_garbage(blob: bytes) -> None:
    _expect_user_error_reading_safetensors(blob)


def _expect_user_error_reading_safetensors(blob: bytes) -> None:
    """``blob`` as a model.safetensors: the header check and the tensor scan raise nothing but a UserError."""
    with tempfile.TemporaryDirectory() as tmp:  # not tmp_path: hypothesis reruns the test in one fixture scope
        file = Path(tmp) / "model.safetensors"
        file.write_bytes(blob)
        _expect_user_error(lambda: (check_safetensors(file), scan_file(file)))


@pytest.mark.parametrize("entries", [
    {"model.layers.0.mlp.gate.weight": {"dtype": "F32", "shape": [-2, 2], "data_offsets": [0, -16]}},
    {"a": {"dtype": "F32", "shape": [-2, -2], "data_offsets": [0, 16]}},
    {"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}, "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}},
    {"a": {"dtype": "F32", "shape": [True], "data_offsets": [0, 4]}},
])
def test_header_corruptions_found_by_fuzzing(entries: dict, tmp_path: Path) -> None:
    """Each of these passed the size check before (negative sizes cancel, overlaps add up)."""
    text = json.dumps(entries).encode()
    end = max(info["data_offsets"][1] for info in entries.values())
    file = tmp_path / "model.safetensors"
    file.write_bytes(struct.pack("<Q", len(text)) + text + bytes(max(end, 0)))
    with pytest.raises(UserError, match=r"corrupt|overlapping"):
        check_safetensors(file)
