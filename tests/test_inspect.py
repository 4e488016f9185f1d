"""moegate inspect on tiny real checkpoints: clean, pruned, damaged, inconsistent, fused and unreadable."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tiny_models import build_tiny_moe

from harness.checkpoint import classify
from harness.cli import main
from harness.errors import UserError
from harness.inspect import MASK_THRESHOLD, inspect_checkpoint
from harness.inspect import _scan as scan_module

WEIGHTS = "model.safetensors"


def rewrite(src: Path, dst: Path, edit: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]) -> Path:
    """Copy a checkpoint folder, passing its tensors through ``edit``."""
    shutil.copytree(src, dst)
    with safe_open(str(src / WEIGHTS), framework="pt") as handle:
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}  # noqa: SIM118
        metadata = handle.metadata()
    save_file({k: v.contiguous() for k, v in edit(tensors).items()}, str(dst / WEIGHTS), metadata=metadata)
    return dst


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main(["inspect", *args])
    out = capsys.readouterr()
    return int(exc.value.code or 0), out.out, out.err


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_moe("qwen2_moe", tmp_path_factory.mktemp("inspect") / "base")


@pytest.fixture(scope="module")
def tiny_bf16(tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    def to_bf16(t: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = {k: v.to(torch.bfloat16) for k, v in t.items()}
        norm = "model.layers.0.input_layernorm.weight"
        out[norm][0], out[norm][1] = 1e5, 1e-6  # representable in bf16, not in float16
        return out

    return rewrite(tiny, tmp_path_factory.mktemp("inspect") / "bf16", to_bf16)


def test_clean_checkpoint_reports_layout_and_exits_0(tiny: Path, capsys: pytest.CaptureFixture[str]) -> None:
    report = inspect_checkpoint(tiny)
    assert not report.must_fail, report.problems
    assert report.layout and report.layout["routed_experts"] == 4 and report.layout["moe_layers"] == [0, 1]
    assert report.dtypes == {"F32": sum(int(np.prod(s.shape)) for s in report.tensors)}
    assert report.tokenizer_sha256 and not report.nan_tensors and not report.inf_tensors
    # Qwen2 attention biases start at zero: reported, not a problem.
    assert "model.layers.0.self_attn.q_proj.bias" in report.zero_tensors
    code, out, _ = run_cli([str(tiny), "--json"], capsys)
    assert code == 0 and json.loads(out)["must_fail"] is False


def test_pruned_checkpoint_names_zeroed_experts_and_masked_rows(tiny: Path, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    from harness.compress import prune

    scores = np.array([[4.0, 1.0, 3.0, 2.0], [1.0, 2.0, 3.0, 4.0]])
    out = prune(tiny, tmp_path / "pruned", fraction=0.5, criterion="frequency", mode="mask+zero", scores=scores)
    record = json.loads((out / "pruning.json").read_text())
    report = inspect_checkpoint(out, against=tiny)
    assert not report.must_fail, report.problems
    expected = {entry["layer"]: entry["pruned"] for entry in record["layers"]}
    assert expected == {0: [1, 3], 1: [0, 1]}
    assert report.zeroed_experts == expected and report.masked_router_rows == expected
    assert report.changed and all(classify(n).role in ("expert", "router") for n in report.changed)
    assert not report.damaged
    code, out_text, _ = run_cli([str(out), "--against", str(tiny)], capsys)
    assert code == 0 and "layer 0: [1, 3]" in out_text


def test_bf16_through_float16_is_damage(tiny_bf16: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    norm = "model.layers.0.input_layernorm.weight"
    rounded = rewrite(tiny_bf16, tmp_path / "rounded", lambda t: {**t, norm: t[norm].to(torch.float16).to(torch.bfloat16)})
    report = inspect_checkpoint(rounded, against=tiny_bf16)
    assert report.must_fail
    assert report.changed == [norm]
    assert "float16" in report.damaged[0] and "2 of 32 values" in report.damaged[0]
    retyped = rewrite(tiny_bf16, tmp_path / "retyped", lambda t: {**t, norm: t[norm].to(torch.float16)})
    report = inspect_checkpoint(retyped, against=tiny_bf16)
    assert report.must_fail and "BF16[32] -> F16[32]" in report.damaged[0]
    code, _, _ = run_cli([str(retyped), "--against", str(tiny_bf16)], capsys)
    assert code == 1
    # an untouched bf16 copy is clean
    assert not inspect_checkpoint(tiny_bf16, against=tiny_bf16).must_fail


def test_nan_and_inf_fail_but_a_minus_inf_router_mask_does_not(tiny: Path, tmp_path: Path) -> None:
    def poison(t: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        t = dict(t)
        t["model.layers.1.mlp.experts.2.up_proj.weight"] = t["model.layers.1.mlp.experts.2.up_proj.weight"].clone()
        t["model.layers.1.mlp.experts.2.up_proj.weight"][3, 4] = float("nan")
        router = t["model.layers.0.mlp.gate.weight"].clone()
        router[2] = float("-inf")
        t["model.layers.0.mlp.gate.weight"] = router
        return t

    report = inspect_checkpoint(rewrite(tiny, tmp_path / "nan", poison))
    assert report.must_fail
    assert report.nan_tensors == ["model.layers.1.mlp.experts.2.up_proj.weight"]
    assert report.masked_router_rows == {0: [2]}
    assert not any("infinite" in p for p in report.problems), report.problems


def test_config_that_contradicts_the_weights_fails(tiny: Path, tmp_path: Path) -> None:
    for key, value, words in (("num_experts", 8, "config says 8"), ("num_experts_per_tok", 6, "top-k 6 exceeds"),
                              ("hidden_size", 64, "hidden_size=64")):
        folder = shutil.copytree(tiny, tmp_path / key)
        config = json.loads((folder / "config.json").read_text())
        config[key] = value
        (folder / "config.json").write_text(json.dumps(config))
        report = inspect_checkpoint(folder)
        assert report.must_fail and any(words in p for p in report.problems), (key, report.problems)


def test_fused_expert_tensors_zeroed_rows(tiny: Path, tmp_path: Path) -> None:
    def fuse(t: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = {k: v for k, v in t.items() if ".experts." not in k}
        for layer in (0, 1):
            p = f"model.layers.{layer}.mlp.experts"
            gate_up = torch.stack([torch.cat([t[f"{p}.{e}.gate_proj.weight"], t[f"{p}.{e}.up_proj.weight"]]) for e in range(4)])
            down = torch.stack([t[f"{p}.{e}.down_proj.weight"] for e in range(4)])
            if layer == 1:
                gate_up[3] = 0
                down[3] = 0
            out[f"{p}.gate_up_proj"], out[f"{p}.down_proj"] = gate_up, down
        return out

    report = inspect_checkpoint(rewrite(tiny, tmp_path / "fused", fuse))
    assert not report.must_fail, report.problems
    assert report.zeroed_experts == {1: [3]}
    assert {s.role for s in report.tensors if "experts" in s.name} == {"fused_experts"}


def test_tokenizer_differs_or_missing(tiny: Path, tmp_path: Path) -> None:
    other = shutil.copytree(tiny, tmp_path / "other_tok")
    config = json.loads((other / "tokenizer_config.json").read_text())
    config["model_max_length"] = 17
    (other / "tokenizer_config.json").write_text(json.dumps(config))
    report = inspect_checkpoint(other, against=tiny)
    assert report.must_fail and any("tokenizer" in p for p in report.problems)
    bare = shutil.copytree(tiny, tmp_path / "no_tok")
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        (bare / name).unlink(missing_ok=True)
    with pytest.raises(UserError, match="no tokenizer files"):
        inspect_checkpoint(bare)


def test_another_model_as_baseline_fails(tiny: Path, tmp_path: Path) -> None:
    mixtral = build_tiny_moe("mixtral", tmp_path / "mixtral")
    report = inspect_checkpoint(tiny, against=mixtral)
    assert report.must_fail and any("baseline" in p for p in report.problems)


def test_unreadable_exits_2(tiny: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    broken = shutil.copytree(tiny, tmp_path / "truncated")
    data = (broken / WEIGHTS).read_bytes()
    (broken / WEIGHTS).write_bytes(data[: len(data) // 2])
    code, _out, err = run_cli([str(broken)], capsys)
    assert code == 2 and "truncated" in err and len(err.strip().splitlines()) == 1
    with pytest.raises(UserError, match="does not exist"):
        inspect_checkpoint(tmp_path / "nowhere")


def test_chunked_reads_give_the_same_answer(tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from harness.compress import prune

    pruned = prune(tiny, tmp_path / "p", fraction=0.25, mode="mask+zero", scores=np.arange(8.0).reshape(2, 4))
    whole = inspect_checkpoint(pruned, against=tiny)
    monkeypatch.setattr(scan_module, "CHUNK_BYTES", 100)  # rows one at a time: bounded memory path
    chunked = inspect_checkpoint(pruned, against=tiny)
    assert chunked.model_dump() == whole.model_dump()
    assert whole.masked_router_rows == {0: [0], 1: [0]} and MASK_THRESHOLD == -1e4


def test_scan_cache_reuses_a_settled_file_and_rescans_a_rewritten_one(tiny: Path, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MOEGATE_CACHE_DIR", str(tmp_path / "cache"))
    model = tmp_path / "model"
    shutil.copytree(tiny, model)
    file = next(model.glob("*.safetensors"))
    calls: list[Path] = []
    real_scan = scan_module.scan_file
    monkeypatch.setattr(scan_module, "scan_file", lambda f: calls.append(f) or real_scan(f))

    fresh = scan_module.scan_file_cached(file)  # just written: "racy", so scanned and not cached
    assert scan_module.scan_file_cached(file) == fresh and len(calls) == 2

    monkeypatch.setattr("harness.checkpoint._filecache.RACY_SECONDS", 0)
    scan_module.scan_file_cached(file)
    assert scan_module.scan_file_cached(file) == fresh and len(calls) == 3  # the 4th came from the cache

    tensors = {}
    with safe_open(str(file), framework="pt") as handle:
        for name in handle.keys():  # noqa: SIM118 — safe_open has no __iter__
            tensors[name] = handle.get_tensor(name)
    first = sorted(tensors)[0]
    tensors[first] = torch.full_like(tensors[first], float("nan"))
    save_file(tensors, str(file), metadata={"format": "pt"})
    rescanned = scan_module.scan_file_cached(file)
    assert len(calls) == 4 and next(s for s in rescanned if s.name == first).nan > 0
