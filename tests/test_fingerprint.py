"""Checkpoint fingerprints: stable across reloads, changed by one edited expert, cheap on huge files."""

from __future__ import annotations

import json
import shutil
import struct
import time
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from harness.checkpoint.fingerprint import (
    FULL_HASH_BYTES,
    SAMPLES_PER_ROW,
    SAMPLES_PER_TENSOR,
    SLICE_BYTES,
     fingerprint_checkpoint,
    fingerprint_module,
    sample_spans,
)
from tests.tiny_models import build_tiny_moe

EXTRA = {"backend": "transformers", "dtype": "float32"}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_moe("qwen2_moe", tmp_path_factory.mktemp("fp") / "qwen2_moe")


def _edited_copy(src: Path, dst: Path, edit) -> Path:  # type: ignore[no-untyped-def]
    shutil.copytree(src, dst)
    tensors = load_file(dst / "model.safetensors")
    edit(tensors)
    save_file(tensors, dst / "model.safetensors", metadata={"format": "pt"})
    return dst


def test_stable_across_copies_and_reloads(tiny: Path, tmp_path: Path) -> None:
    first = fingerprint_checkpoint(tiny, EXTRA)
    assert first == fingerprint_checkpoint(tiny, dict(EXTRA))
    copy = _edited_copy(tiny, tmp_path / "copy", lambda t: None)  # re-saved, same values
    assert fingerprint_checkpoint(copy, EXTRA) == first
    assert fingerprint_checkpoint(tiny, {**EXTRA, "dtype": "bfloat16"}) != first


@pytest.mark.parametrize(
    "name",
    ["model.layers.1.mlp.experts.2.down_proj.weight", "model.layers.0.mlp.gate.weight", "model.layers.1.mlp.shared_expert.up_proj.weight"],
)
def test_one_edited_expert_or_router_row_changes_it(tiny: Path, tmp_path: Path, name: str) -> None:
    def edit(tensors: dict[str, torch.Tensor]) -> None:
        tensors[name][1] = tensors[name][1] * 0.5 if "gate.weight" not in name else -1e9

    edited = _edited_copy(tiny, tmp_path / "edited", edit)
    assert fingerprint_checkpoint(edited, EXTRA) != fingerprint_checkpoint(tiny, EXTRA)


def test_tokenizer_and_config_are_part_of_it(tiny: Path, tmp_path: Path) -> None:
    copy = _edited_copy(tiny, tmp_path / "tok", lambda t: None)
    config = json.loads((copy / "tokenizer_config.json").read_text())
    config["model_max_length"] = 17
    (copy / "tokenizer_config.json").write_text(json.dumps(config))
    assert fingerprint_checkpoint(copy, EXTRA) != fingerprint_checkpoint(tiny, EXTRA)


@pytest.mark.parametrize("expert", [0, 5, 7])
def test_each_slice_of_a_fused_expert_tensor_is_sampled(tmp_path: Path, expert: int) -> None:
    torch.manual_seed(0)
    fused = {"experts.gate_up_proj": torch.randn(8, 64, 96), "router.weight": torch.randn(8, 3000)}
    save_file(fused, tmp_path / "a.safetensors")
    edited = {k: v.clone() for k, v in fused.items()}
    edited["experts.gate_up_proj"][expert] += 1e-3 * torch.randn(64, 96)  # e.g. one expert re-quantized
    (tmp_path / "b").mkdir()
    save_file(edited, tmp_path / "b" / "a.safetensors")
    (tmp_path / "a").mkdir()
    shutil.move(tmp_path / "a.safetensors", tmp_path / "a" / "a.safetensors")
    assert fingerprint_checkpoint(tmp_path / "a") != fingerprint_checkpoint(tmp_path / "b")
    masked = {k: v.clone() for k, v in fused.items()}
    masked["router.weight"][expert] = -1e9  # a pruned expert's router row
    (tmp_path / "c").mkdir()
    save_file(masked, tmp_path / "c" / "a.safetensors")
    assert fingerprint_checkpoint(tmp_path / "a") != fingerprint_checkpoint(tmp_path / "c")


def test_cheap_on_a_huge_checkpoint(tmp_path: Path) -> None:
    """A sparse 64 GB file: fingerprinting must read kilobytes, not the file."""
    shape, count = [256, 4096, 16384], 256 * 4096 * 16384
    header = json.dumps({"experts": {"dtype": "BF16", "shape": shape, "data_offsets": [0, count * 2]}}).encode()
    folder = tmp_path / "huge"
    folder.mkdir()
    with (folder / "model.safetensors").open("wb") as handle:
        handle.write(struct.pack("<Q", len(header)) + header)
        handle.truncate(8 + len(header) + count * 2)
    start = time.perf_counter()
    fingerprint_checkpoint(folder)
    assert time.perf_counter() - start < 10


@pytest.mark.slow
def test_gguf_fingerprint_is_stable() -> None:
    from harness.checkpoint.fingerprint import _MEMO
    from harness.smollm2 import smollm2_gguf

    path = smollm2_gguf()
    start = time.perf_counter()
    first = fingerprint_checkpoint(path, EXTRA)
    _MEMO.clear()
    assert fingerprint_checkpoint(path, EXTRA) == first
    assert time.perf_counter() - start < 30
    assert fingerprint_checkpoint(path, {**EXTRA, "dtype": "bfloat16"}) != first


def test_module_fingerprint_sees_in_memory_edits(tiny: Path) -> None:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny)
    before = fingerprint_module(model, None, EXTRA)
    assert before == fingerprint_module(AutoModelForCausalLM.from_pretrained(tiny), None, EXTRA)
    experts = model.model.layers[1].mlp.experts
    with torch.no_grad():
        next(iter(experts.parameters()))[2].mul_(0.5)
    assert fingerprint_module(model, None, EXTRA) != before


@given(
    rows=st.integers(1, 300), row_bytes=st.integers(1, 4000), extra_dims=st.integers(0, 2),
    begin=st.integers(0, 10_000),
)
def test_spans_stay_inside_the_tensor_and_cover_every_row(rows: int, row_bytes: int, extra_dims: int, begin: int) -> None:
    shape = [rows, row_bytes] + [1] * extra_dims
    end = begin + rows * row_bytes
    spans = list(sample_spans(begin, end, shape))
    assert all(begin <= a < b <= end for a, b in spans)
    hashed = sum(b - a for a, b in spans)
    assert hashed <= max(FULL_HASH_BYTES, rows * SLICE_BYTES * SAMPLES_PER_ROW, SLICE_BYTES * SAMPLES_PER_TENSOR)
    if len(shape) >= 3 or rows <= 1024:
        covered: set[int] = set()
        for a, b in spans:
            covered.update(range((a - begin) // row_bytes, (b - 1 - begin) // row_bytes + 1))
        assert covered == set(range(rows))
