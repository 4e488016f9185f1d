"""Compression utilities on tiny random MoE checkpoints (bf16 and fp32): fast, real files, real loads."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors import safe_open

from harness.compress import fake_quantize, open_checkpoint, prune, quantize, select_experts, tiered_bits
from harness.errors import UserError
from tests.gate_toys import moegate


def _byte_tokenizer(path: Path) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    PreTrainedTokenizerFast(tokenizer_object=tok).save_pretrained(str(path))


def _tiny_moe(path: Path, dtype: torch.dtype) -> Path:
    from transformers import AutoModelForCausalLM, Qwen2MoeConfig

    torch.manual_seed(0)
    config = Qwen2MoeConfig(
        vocab_size=256, hidden_size=32, intermediate_size=64, moe_intermediate_size=16,
        shared_expert_intermediate_size=32, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, num_experts=8, num_experts_per_tok=2,
    )
    model = AutoModelForCausalLM.from_config(config).to(dtype)
    model.save_pretrained(str(path))
    _byte_tokenizer(path)
    return path


@pytest.fixture(scope="module")
def bf16_moe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _tiny_moe(tmp_path_factory.mktemp("bf16") / "model", torch.bfloat16)


@pytest.fixture(scope="module")
def fp32_moe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _tiny_moe(tmp_path_factory.mktemp("fp32") / "model", torch.float32)


@pytest.fixture(scope="module")
def calib(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("calib") / "calib.txt"
    path.write_text("\n".join(f"calibration prompt number {i}: the quick brown fox {i * 7}" for i in range(12)))
    return path


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(path / "model.safetensors"), framework="pt") as handle:
        return {k: handle.get_tensor(k) for k in handle.keys()}  # noqa: SIM118


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a.view(torch.uint8), b.view(torch.uint8))


def test_checkpoint_scan_finds_experts_and_routers(bf16_moe: Path) -> None:
    ckpt = open_checkpoint(bf16_moe)
    assert ckpt.layers == [0, 1] and ckpt.num_experts == 8
    assert ckpt.routers[0] == ("model.layers.0.mlp.gate.weight", None)
    assert all("shared_expert" not in k for keys in ckpt.experts.values() for k in keys)
    assert len(ckpt.experts[(1, 7)]) == 3


@pytest.mark.parametrize("mode", ["mask", "zero", "mask+zero"])
def test_prune_changes_only_targets_bf16(bf16_moe: Path, tmp_path: Path, mode: str) -> None:
    out = prune(bf16_moe, tmp_path / "out", fraction=0.25, criterion="random", scope="layer", mode=mode, seed=3)
    record = json.loads((out / "pruning.json").read_text())
    assert record["pruned_total"] == 4 and record["mode"] == mode
    pruned = {(layer["layer"], e) for layer in record["layers"] for e in layer["pruned"]}
    src, dst = _tensors(bf16_moe), _tensors(out)
    assert src.keys() == dst.keys()
    touched = set()
    for layer, expert in pruned:
        router = f"model.layers.{layer}.mlp.gate.weight"
        if "mask" in mode:
            assert torch.all(dst[router][expert] == torch.tensor(-1e9, dtype=torch.bfloat16))
            touched.add(router)
        if "zero" in mode:
            for key in (k for k in dst if f"layers.{layer}.mlp.experts.{expert}." in k):
                assert dst[key].abs().sum() == 0 and src[key].abs().sum() > 0
                touched.add(key)
    for key in src:
        if key not in touched:
            assert _same_bits(src[key], dst[key]), key
        elif key.endswith("gate.weight"):  # unpruned rows of a masked router stay bit-identical
            keep = [e for e in range(8) if (int(key.split(".")[2]), e) not in pruned]
            assert _same_bits(src[key][keep], dst[key][keep])
    assert (out / "config.json").read_bytes() == (bf16_moe / "config.json").read_bytes()
    for weights in out.glob("*.safetensors"):  # safetensors' writer makes 0600 files; a team's CI user must read them
        assert weights.stat().st_mode & 0o044 == 0o044 & ~_umask(), oct(weights.stat().st_mode)


def test_frequency_pruned_checkpoint_loads_and_runs(fp32_moe: Path, calib: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    out = prune(fp32_moe, tmp_path / "out", fraction=0.25, criterion="frequency", calib=calib, mode="zero")
    record = json.loads((out / "pruning.json").read_text())
    assert record["calib_sha256"] and len(record["layers"][0]["scores"]) == 8
    counts = np.array([layer["scores"] for layer in record["layers"]])
    assert counts.sum() > 0
    for layer in record["layers"]:  # frequency pruning removes the least-used experts
        assert max(layer["scores"][e] for e in layer["pruned"]) <= min(
            s for e, s in enumerate(layer["scores"]) if e not in layer["pruned"])
    model, info = AutoModelForCausalLM.from_pretrained(str(out), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    for layer in record["layers"]:
        for expert in layer["pruned"]:
            assert model.model.layers[layer["layer"]].mlp.experts.down_proj[expert].abs().sum() == 0
    with torch.inference_mode():
        assert torch.isfinite(model(torch.randint(0, 256, (1, 64))).logits).all()


def test_global_scope_respects_top_k_floor() -> None:
    scores = np.array([[1.0, 2, 3, 4], [10, 20, 30, 40], [0.1, 0.1, 100, 100]])
    picked = select_experts(scores, 0.5, "global", keep_min=2)
    assert sum(map(len, picked)) == 6 and all(len(p) <= 2 for p in picked)
    assert picked[2] == [0, 1]
    assert select_experts(scores, 0.25, "layer", keep_min=2) == [[0], [0], [0]]


@pytest.mark.parametrize("plan", ["uniform:8", "uniform:4"])
def test_quantize_uniform_touches_only_routed_experts(bf16_moe: Path, tmp_path: Path, plan: str) -> None:
    out = quantize(bf16_moe, tmp_path / "q", plan=plan, group_size=16)
    src, dst = _tensors(bf16_moe), _tensors(out)
    changed = [k for k in src if not _same_bits(src[k], dst[k])]
    assert changed and all(".mlp.experts." in k for k in changed)
    key = "model.layers.0.mlp.experts.3.up_proj.weight"
    assert dst[key].dtype == torch.bfloat16
    rel = (dst[key].float() - src[key].float()).norm() / src[key].float().norm()
    assert rel < (0.02 if plan == "uniform:8" else 0.2)
    assert json.loads((out / "quantization.json").read_text())["mean_bits"] == int(plan[-1])


def test_quantize_tiered_by_usage(fp32_moe: Path, calib: Path, tmp_path: Path) -> None:
    out = quantize(fp32_moe, tmp_path / "t", plan="tiered", group_size=16, calib=calib)
    record = json.loads((out / "quantization.json").read_text())
    for layer in record["layers"]:
        assert sorted(layer["bits"]) == [2, 4, 4, 4, 4, 4, 8, 8]
        hot = [u for u, b in zip(layer["usage"], layer["bits"], strict=True) if b == 8]
        cold = [u for u, b in zip(layer["usage"], layer["bits"], strict=True) if b == 2]
        assert min(hot) >= max(cold)


def test_tiered_bits_split() -> None:
    bits = tiered_bits(np.array([[5.0, 1, 9, 3, 7, 2, 8, 4]]))
    assert bits.tolist() == [[4, 2, 8, 4, 4, 4, 8, 4]]


@settings(max_examples=40, deadline=None)
@given(
    bits=st.integers(2, 8),
    group=st.sampled_from([4, 8, 16]),
    scheme=st.sampled_from(["sym", "asym"]),
    seed=st.integers(0, 1000),
    cols=st.integers(1, 40),
)
def test_fake_quantize_levels_and_error(bits: int, group: int, scheme: str, seed: int, cols: int) -> None:
    w = torch.randn(3, cols, generator=torch.Generator().manual_seed(seed))
    q = fake_quantize(w, bits, group, scheme)  # type: ignore[arg-type]
    assert q.shape == w.shape and q.dtype == w.dtype
    for start in range(0, cols, group):
        block, qblock = w[:, start : start + group], q[:, start : start + group]
        for row, qrow in zip(block, qblock, strict=True):
            assert len(torch.unique(qrow)) <= 2**bits
            span = row.abs().max() / (2 ** (bits - 1) - 1) if scheme == "sym" else (row.max() - row.min()) / (2**bits - 1)
            assert (row - qrow).abs().max() <= span / 2 + 1e-5


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--fraction", "0", "--criterion", "random"], "outside (0, 1)"),
        (["--fraction", "1.5", "--criterion", "random"], "outside (0, 1)"),
        (["--fraction", "0.25", "--criterion", "loudest"], "unknown criterion"),
        (["--fraction", "0.25", "--criterion", "frequency", "--calib", "MISSING"], "does not exist"),
        (["--fraction", "0.25", "--criterion", "frequency", "--calib", "EMPTY"], "holds no prompts"),
        (["--fraction", "0.25", "--criterion", "frequency"], "no calibration file"),
    ],
)
def test_prune_bad_input_exit_2_no_output(
    bf16_moe: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], needle: str
) -> None:
    (tmp_path / "empty.txt").write_text("\n\n")
    args = [str(tmp_path / "nope.txt") if a == "MISSING" else str(tmp_path / "empty.txt") if a == "EMPTY" else a
            for a in args]
    out = tmp_path / "out"
    assert moegate("compress", "prune", str(bf16_moe), "--out", str(out), *args) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1
    assert not out.exists() and not list(tmp_path.glob(".out*"))


def test_dense_model_and_bad_plan_rejected(tmp_path: Path, bf16_moe: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from transformers import AutoModelForCausalLM, LlamaConfig

    dense = tmp_path / "dense"
    AutoModelForCausalLM.from_config(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32,
                                                 num_hidden_layers=1, num_attention_heads=2)).save_pretrained(str(dense))
    assert moegate("compress", "quantize", str(dense), "--plan", "uniform:4", "--out", str(tmp_path / "o")) == 2
    assert "no MoE layers" in capsys.readouterr().err
    assert moegate("compress", "quantize", str(bf16_moe), "--plan", "uniform:3x", "--out", str(tmp_path / "o")) == 2
    assert "unknown quantization plan" in capsys.readouterr().err
    assert moegate("compress", "quantize", str(bf16_moe), "--plan", "tiered", "--out", str(tmp_path / "o")) == 2
    assert not (tmp_path / "o").exists()
    with pytest.raises(UserError, match="source model folder"):
        quantize(bf16_moe, bf16_moe, plan="uniform:8")


def _umask() -> int:
    import os

    mask = os.umask(0)
    os.umask(mask)
    return mask
