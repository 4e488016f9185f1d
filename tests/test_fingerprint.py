"""Checkpoint fingerprints: stable across reloads, changed by any byte of any weight, read once per file."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from harness.checkpoint import _digests, _filecache
from harness.checkpoint._digests import sampled_digest
from harness.checkpoint.fingerprint import _MEMO, fingerprint_checkpoint, fingerprint_module
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
def test_one_fused_expert_or_router_row_changes_it(tmp_path: Path, expert: int) -> None:
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


# Tensors of every kind, each larger than the sampler hashes whole, named as a Qwen2-MoE checkpoint names them.
KINDS = {
    "expert": ("model.layers.0.mlp.experts.3.down_proj.weight", (512, 256)),
    "router": ("model.layers.0.mlp.gate.weight", (8, 4096)),
    "attention": ("model.layers.0.self_attn.q_proj.weight", (384, 384)),
    "embedding": ("model.embed_tokens.weight", (2048, 128)),
    "head": ("lm_head.weight", (2048, 128)),
}


def _big_checkpoint(folder: Path) -> Path:
    folder.mkdir()
    generator = torch.Generator().manual_seed(0)
    save_file({name: torch.randn(shape, generator=generator) for name, shape in KINDS.values()},
              folder / "model.safetensors", metadata={"format": "pt"})  # fmt: skip
    (folder / "config.json").write_text("{}")
    return folder


@pytest.mark.parametrize("edit", ["row", "value", "bit"])
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_any_byte_of_any_weight_changes_it(tmp_path: Path, kind: str, edit: str) -> None:
    """Single-value and single-bit edits sit between the sampler's slices: the old sampled key missed them."""
    base = _big_checkpoint(tmp_path / "base")
    name, (rows, cols) = KINDS[kind]
    tensors = load_file(base / "model.safetensors")
    target = tensors[name]
    row = rows // 2 if kind != "router" else 5
    col = cols // 2 + 3
    if edit == "row":
        target[row, 2:-2] = target[row, 2:-2] * 0.5  # a row's middle: the sampler's first and last slices kept
    elif edit == "value":
        target[row, col] += 1.0
    else:
        bits = target.view(torch.int32)
        bits[row, col] ^= 1  # the lowest mantissa bit of one value
    (tmp_path / "edited").mkdir()
    save_file(tensors, tmp_path / "edited" / "model.safetensors", metadata={"format": "pt"})
    (tmp_path / "edited" / "config.json").write_text("{}")
    edited_file, base_file = tmp_path / "edited" / "model.safetensors", base / "model.safetensors"
    if edit != "row":
        assert sampled_digest(edited_file) == sampled_digest(base_file)
    assert fingerprint_checkpoint(tmp_path / "edited") != fingerprint_checkpoint(base)


def test_each_file_is_read_whole_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The digests are cached on disk by file identity; a changed pre-check hash makes them be read again."""
    monkeypatch.setenv("MOEGATE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(_filecache, "RACY_SECONDS", -1)  # files written just now may be cached in a test
    reads: list[Path] = []
    full = _digests._tensor_digests_uncached
    monkeypatch.setattr(_digests, "_tensor_digests_uncached", lambda file: reads.append(file) or full(file))
    base = _big_checkpoint(tmp_path / "base")
    first = fingerprint_checkpoint(base)
    _MEMO.clear()
    assert fingerprint_checkpoint(base) == first and len(reads) == 1
    file = base / "model.safetensors"
    monkeypatch.setattr(_digests, "sampled_digest", lambda f: "another sampled hash")
    assert _digests.tensor_digests(file) and len(reads) == 2


def test_the_audit_scan_hands_its_digests_over(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from harness.inspect._scan import scan_file_cached

    monkeypatch.setenv("MOEGATE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(_filecache, "RACY_SECONDS", -1)
    base = _big_checkpoint(tmp_path / "base")
    scanned = {s.name: s.blake2b for s in scan_file_cached(base / "model.safetensors")}
    monkeypatch.setattr(_digests, "_tensor_digests_uncached", lambda file: pytest.fail("read twice"))
    assert _digests.tensor_digests(base / "model.safetensors") == scanned


def test_docs_and_compression_records_are_not_part_of_it(tmp_path: Path) -> None:
    base = _big_checkpoint(tmp_path / "base")
    first = fingerprint_checkpoint(base)
    for name in ("README.md", "pruning.json", ".moegate-compressed", "LICENSE"):
        (base / name).write_text("x")
        _MEMO.clear()
        assert fingerprint_checkpoint(base) == first, name
    (base / "modeling_custom.py").write_text("x = 1\n")  # remote code changes outputs
    assert fingerprint_checkpoint(base) != first


@pytest.mark.slow
def test_gguf_fingerprint_is_stable() -> None:
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
