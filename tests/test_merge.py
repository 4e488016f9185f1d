"""Expert merging (M-SMoE, HC-SMoE) on tiny random MoE checkpoints: groups, shared weights, untouched bits, loads."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from harness.compress import hcsmoe_groups, merge, msmoe_groups, open_checkpoint
from harness.compress._merge import merge_weights, n_groups_for
from harness.errors import UserError
from tests.gate_toys import moegate
from tests.tiny_models import FAMILIES, build_tiny_moe


@pytest.fixture(scope="module")
def calib(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("calib") / "calib.txt"
    path.write_text("\n".join(f"calibration prompt {i}: the quick brown fox jumps over {i * 7} lazy dogs" for i in range(10)))
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_moe("qwen2_moe", tmp_path_factory.mktemp("tiny") / "model")


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(path / "model.safetensors"), framework="pt") as handle:
        return {k: handle.get_tensor(k) for k in handle.keys()}  # noqa: SIM118


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a.view(torch.uint8), b.view(torch.uint8))


def _expert_keys(keys: list[str], layer: int, expert: int) -> list[str]:
    return sorted(k for k in keys if f"layers.{layer}." in k and f".experts.{expert}." in k)


def test_group_count_from_fraction() -> None:
    assert n_groups_for(0.25, 8) == 6 and n_groups_for(0.5, 8) == 4 and n_groups_for(0.125, 8) == 7
    with pytest.raises(UserError, match="merges away 0"):
        n_groups_for(0.05, 8)
    with pytest.raises(UserError, match="all 8"):
        n_groups_for(0.97, 8)


def test_msmoe_groups_around_the_most_used_by_logit_similarity() -> None:
    usage = np.array([50, 3, 40, 2, 30, 1])
    sim = np.eye(6)
    sim[1, 4] = sim[4, 1] = 0.9  # expert 1 looks like dominant expert 4
    sim[3, 0] = sim[0, 3] = 0.8  # 3 like 0
    sim[5, 2] = sim[2, 5] = 0.7  # 5 like 2 (and a little like 0)
    sim[5, 0] = sim[0, 5] = 0.6
    assert msmoe_groups(usage, sim, 3) == [[0, 3], [1, 4], [2, 5]]
    # the leaders are the 3 most used (0, 2, 4) whatever the similarities between leaders say
    sim[0, 2] = sim[2, 0] = 0.99
    assert msmoe_groups(usage, sim, 3) == [[0, 3], [1, 4], [2, 5]]
    assert msmoe_groups(usage, sim, 5) == [[0], [1], [2, 5], [3], [4]]  # only the least used (5) is merged


def test_hcsmoe_groups_by_mean_output_distance() -> None:
    rng = np.random.default_rng(0)
    features = rng.normal(size=(8, 16)) * 10
    features[5] = features[2]  # identical outputs merge first
    features[7] = features[1] + 0.01
    assert hcsmoe_groups(features, 7) == [[0], [1], [2, 5], [3], [4], [6], [7]]
    groups = hcsmoe_groups(features, 6)
    assert [2, 5] in groups and [1, 7] in groups and len(groups) == 6
    assert sorted(e for g in hcsmoe_groups(features, 3) for e in g) == list(range(8))


def test_merge_weights_by_usage() -> None:
    a, b = torch.full((2, 2), 1.0, dtype=torch.bfloat16), torch.full((2, 2), 4.0, dtype=torch.bfloat16)
    assert torch.equal(merge_weights([a, b], [3.0, 1.0]), torch.full((2, 2), 1.75, dtype=torch.bfloat16))
    assert torch.equal(merge_weights([a, b], [0.0, 0.0]), torch.full((2, 2), 2.5, dtype=torch.bfloat16))


def _check_merged(src_dir: Path, out: Path, record: dict) -> None:
    src, dst = _tensors(src_dir), _tensors(out)
    assert src.keys() == dst.keys()
    keys = sorted(src)
    touched: set[str] = set()
    for layer in record["layers"]:
        assert sorted(e for g in layer["groups"] for e in g) == list(range(record["num_experts"]))
        assert len(layer["groups"]) == record["groups_per_layer"]
        for group in layer["merged"]:
            members = [_expert_keys(keys, layer["layer"], e) for e in group]
            for tensor_keys in zip(*members, strict=True):  # one tensor (gate/up/down) across the group
                first = dst[tensor_keys[0]]
                assert all(_same_bits(first, dst[k]) for k in tensor_keys), tensor_keys
                assert not all(_same_bits(first, src[k]) for k in tensor_keys)
                usage = [layer["usage"][e] for e in group]
                expect = merge_weights([src[k] for k in tensor_keys], [float(u) for u in usage])
                assert _same_bits(first, expect)
                touched.update(tensor_keys)
    for key in keys:
        if key not in touched:
            assert _same_bits(src[key], dst[key]), key


def test_hcsmoe_merges_two_identical_experts(tiny: Path, calib: Path, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for item in tiny.iterdir():
        (src / item.name).write_bytes(item.read_bytes())
    tensors = _tensors(tiny)
    for layer in (0, 1):
        for key in _expert_keys(sorted(tensors), layer, 1):
            tensors[key.replace(".experts.1.", ".experts.3.")] = tensors[key].clone()
    save_file(tensors, str(src / "model.safetensors"), metadata={"format": "pt"})
    out = merge(src, tmp_path / "out", fraction=0.25, method="hcsmoe", calib=calib, max_tokens=32)
    record = json.loads((out / "merging.json").read_text())
    assert record["method"] == "hcsmoe" and record["groups_per_layer"] == 3
    for layer in record["layers"]:
        assert layer["merged"] == [[1, 3]], layer["groups"]
        assert layer["distance"][1][3] == 0.0
    _check_merged(src, out, record)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("method", ["msmoe", "hcsmoe"])
def test_merge_every_family_loads_and_runs(family: str, method: str, calib: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    src = build_tiny_moe(family, tmp_path / "src")
    out = merge(src, tmp_path / "out", fraction=0.5, method=method, calib=calib, max_tokens=32)
    record = json.loads((out / "merging.json").read_text())
    assert record["calib_sha256"] and record["layout"]["kind"] == "shared-weights"
    assert record["groups_per_layer"] == 2 and record["merged_away_per_layer"] == 2
    assert all(sum(layer["usage"]) > 0 for layer in record["layers"])
    if method == "msmoe":
        for layer in record["layers"]:  # the leaders are the most used experts; each other joined its most similar
            leaders = layer["dominant"]
            assert min(layer["usage"][e] for e in leaders) >= max(
                layer["usage"][e] for g in layer["groups"] for e in g if e not in leaders)
            for group, leader in zip(layer["groups"], leaders, strict=True):
                for expert in (e for e in group if e != leader):
                    assert layer["similarity"][expert][leader] == max(layer["similarity"][expert][d] for d in leaders)
    _check_merged(src, out, record)
    assert (out / "config.json").read_bytes() == (src / "config.json").read_bytes()
    model, info = AutoModelForCausalLM.from_pretrained(str(out), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    with torch.inference_mode():
        assert torch.isfinite(model(torch.randint(0, 256, (1, 24))).logits).all()
    assert open_checkpoint(out).num_experts == 4


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--fraction", "0", "--method", "msmoe", "--calib", "CALIB"], "outside (0, 1)"),
        (["--fraction", "1.0", "--method", "hcsmoe", "--calib", "CALIB"], "outside (0, 1)"),
        (["--fraction", "0.05", "--method", "hcsmoe", "--calib", "CALIB"], "merges away 0"),
        (["--fraction", "0.25", "--method", "ties", "--calib", "CALIB"], "unknown merging method"),
        (["--fraction", "0.25", "--method", "msmoe", "--calib", "MISSING"], "does not exist"),
        (["--fraction", "0.25", "--method", "msmoe"], "no calibration file"),
    ],
)
def test_merge_bad_input_exit_2_no_output(
    tiny: Path, calib: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], needle: str
) -> None:
    args = [str(tmp_path / "nope.txt") if a == "MISSING" else str(calib) if a == "CALIB" else a for a in args]
    out = tmp_path / "out"
    assert moegate("compress", "merge", str(tiny), "--out", str(out), *args) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1, err
    assert not out.exists() and not list(tmp_path.glob(".out*"))


@pytest.mark.mlx
def test_merged_checkpoint_loads_unchanged_in_mlx_lm(tiny: Path, calib: Path, tmp_path: Path) -> None:
    pytest.importorskip("mlx_lm")
    from harness.backends import open_backend
    from harness.backends.base import LoglikelihoodRequest

    out = merge(tiny, tmp_path / "merged", fraction=0.5, method="msmoe", calib=calib, max_tokens=32)
    reqs = [LoglikelihoodRequest("The capital of France is", " Paris"), LoglikelihoodRequest("2 + 2 =", " 4")]
    mlx, ref = open_backend(str(out), kind="mlx"), open_backend(str(out), dtype="float32", device="cpu")
    original = open_backend(str(tiny), dtype="float32", device="cpu")
    got, want, before = mlx.loglikelihood(reqs), ref.loglikelihood(reqs), original.loglikelihood(reqs)
    for g, w in zip(got, want, strict=True):
        assert g.logprob == pytest.approx(w.logprob, rel=1e-3, abs=1e-4)
    assert [w.logprob for w in want] != [b.logprob for b in before]  # the merge changed the model


def test_cli_merge_writes_checkpoint_and_record(tiny: Path, calib: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "merged"
    assert moegate("compress", "merge", str(tiny), "--fraction", "0.25", "--method", "msmoe", "--calib", str(calib),
                   "--out", str(out), "--max-tokens", "32") == 0
    assert capsys.readouterr().out.strip() == str(out)
    record = json.loads((out / "merging.json").read_text())
    assert record["method"] == "msmoe" and all(len(layer["merged"]) == 1 for layer in record["layers"])
    _check_merged(tiny, out, record)


@pytest.mark.parametrize("family", ["deepseek_v2", "deepseek_v3", "glm4_moe", "qwen3_5_moe_text"])
def test_merge_other_families_sigmoid_routers_and_dense_layers(family: str, calib: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tests.test_profiler_families import _configs
    from tests.tiny_models import smollm2_tokenizer_dir

    tokenizer = AutoTokenizer.from_pretrained(smollm2_tokenizer_dir())
    config = _configs()[family]
    config.vocab_size = len(tokenizer)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path / "src")
    tokenizer.save_pretrained(tmp_path / "src")
    out = merge(tmp_path / "src", tmp_path / "out", fraction=0.25, method="msmoe", calib=calib, max_tokens=16)
    record = json.loads((out / "merging.json").read_text())
    assert [layer["layer"] for layer in record["layers"]] == open_checkpoint(tmp_path / "src").layers
    _check_merged(tmp_path / "src", out, record)
    with torch.inference_mode():
        assert torch.isfinite(AutoModelForCausalLM.from_pretrained(str(out))(torch.randint(0, 200, (1, 12))).logits).all()
