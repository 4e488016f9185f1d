"""The audit's classes of change on tiny real checkpoints: casts, renumbered experts, pruned, merged, damage."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.torch import save_file
from test_inspect import WEIGHTS, rewrite, run_cli
from tiny_models import build_tiny_moe

from harness.api._diagnosis import changed_experts as diagnosis_changed
from harness.compress import prune
from harness.compress._perturb import renumber_experts, round_trip
from harness.inspect import audit_extra, changed_experts, inspect_checkpoint
from harness.inspect._values import round_to
from harness.reports.audit import audit_markdown

ATTN = "model.layers.1.self_attn.q_proj.weight"
NORM = "model.layers.0.input_layernorm.weight"
KEY = "model.layers.0.self_attn.k_proj.weight"
EXPERT = "model.layers.{layer}.mlp.experts.{e}.{proj}.weight"
PROJS = ("gate_proj", "up_proj", "down_proj")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_moe("qwen2_moe", tmp_path_factory.mktemp("classes") / "base")


def tensors_of(folder: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(folder / WEIGHTS), framework="pt") as handle:
        return {k: handle.get_tensor(k) for k in handle.keys()}  # noqa: SIM118


@pytest.mark.parametrize(("dtype", "precision"), [("bfloat16", "bf16"), ("float16", "fp16")])
def test_a_round_trip_of_every_tensor_is_a_precision_cast_not_damage(
        tiny: Path, tmp_path: Path, dtype: str, precision: str, capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    out = round_trip(tiny, tmp_path / dtype, dtype=dtype)
    report = inspect_checkpoint(out, against=tiny)
    assert not report.must_fail, report.problems
    assert report.changed and {c.kind for c in report.changes} == {"precision_cast"}
    assert {c.precision for c in report.changes} == {precision}
    worst = max(c.max_abs_error or 0 for c in report.changes)
    assert 0 < worst < (0.01 if precision == "bf16" else 0.001)
    assert {e.kind for e in report.expert_changes} == {f"cast {precision}"} and len(report.expert_changes) == 8
    code, text, _ = run_cli([str(out), "--against", str(tiny)], capsys)
    assert code == 0 and f"precision_cast {len(report.changed)}" in text and f"precision cast to {precision}" in text


def test_weights_stored_in_the_lower_dtype_are_a_cast_too(tiny: Path, tmp_path: Path) -> None:
    def lower(t: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = {k: v.to(torch.bfloat16) for k, v in t.items()}
        out[ATTN] = t[ATTN].to(torch.float8_e4m3fn)
        out[NORM] = t[NORM].to(torch.float8_e5m2)
        out[KEY] = t[KEY].to(torch.float8_e4m3fn).to(torch.float32)  # rounded, stored back as float32
        return out

    report = inspect_checkpoint(rewrite(tiny, tmp_path / "low", lower), against=tiny)
    assert not report.must_fail, report.problems
    kinds = {c.name: (c.kind, c.precision) for c in report.changes}
    assert kinds[ATTN] == ("precision_cast", "fp8-e4m3") and kinds[NORM] == ("precision_cast", "fp8-e5m2")
    assert kinds[KEY] == ("precision_cast", "fp8-e4m3")
    assert {p for k, p in kinds.values()} == {"bf16", "fp8-e4m3", "fp8-e5m2"}


@given(st.lists(st.floats(-1e6, 1e6, allow_nan=False, width=32), min_size=1, max_size=50))
def test_rounding_agrees_with_torch(values: list[float]) -> None:
    x = torch.tensor(values, dtype=torch.float32)
    for dtype, precision in ((torch.bfloat16, "bf16"), (torch.float16, "fp16"), (torch.float8_e5m2, "fp8-e5m2")):
        np.testing.assert_array_equal(round_to(x.numpy().astype(np.float64), precision), x.to(dtype).double().numpy())
    small = x.clamp(-448, 448)  # torch's e4m3fn cast has no infinity: beyond 448 it is NaN
    np.testing.assert_array_equal(round_to(small.numpy().astype(np.float64), "fp8-e4m3"),
                                  small.to(torch.float8_e4m3fn).double().numpy())  # fmt: skip


def test_a_zeroed_norm_and_one_flipped_exponent_bit_are_damage(tiny: Path, tmp_path: Path) -> None:
    def flip(t: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        bits = t[ATTN].clone().view(torch.int32)
        bits.view(-1)[7] ^= 1 << 27  # one exponent bit
        return {**t, ATTN: bits.view(torch.float32), NORM: torch.zeros_like(t[NORM])}

    report = inspect_checkpoint(rewrite(tiny, tmp_path / "flip", flip), against=tiny)
    assert report.must_fail
    assert {c.name: c.kind for c in report.changes} == {ATTN: "damage", NORM: "damage"}
    assert any(f"{ATTN} changed bits in 1 of" in d for d in report.damaged)
    assert any("damage" in p and "2 tensor(s)" in p for p in report.problems)
    assert "damage:" in "\n".join(audit_markdown(audit_extra(report)))


def test_an_fp16_overflow_to_inf_is_damage_not_a_cast(tiny: Path, tmp_path: Path) -> None:
    def big(t: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        norm = t[NORM].clone()
        norm[0] = 1e5
        return {**t, NORM: norm}

    base = rewrite(tiny, tmp_path / "big", big)
    report = inspect_checkpoint(round_trip(base, tmp_path / "fp16", dtype="float16"), against=base)
    assert report.must_fail and [c.name for c in report.changes if c.kind == "damage"] == [NORM]
    assert "1 became NaN/inf" in report.damaged[0]


def test_renumbered_experts_are_identical_and_the_diagnosis_maps_through(tiny: Path, tmp_path: Path) -> None:
    out = renumber_experts(tiny, tmp_path / "renumbered", seed=5)
    perms = {row["layer"]: row["new_from_old"] for row in json.loads((out / "perturbation.json").read_text())["layers"]}
    report = inspect_checkpoint(out, against=tiny)
    assert not report.must_fail and report.renumbered == perms
    assert set(report.change_counts) == {"renumbered"} and report.expert_changes == []
    assert diagnosis_changed(audit_extra(report)) == {}
    # renumbered, then two experts of layer 0 zeroed: the map names the baseline experts they were
    pruned = prune(out, tmp_path / "pruned", fraction=0.5, mode="zero", scores=np.array([[1.0, 4, 2, 3], [4, 3, 2, 1]]))
    report = inspect_checkpoint(pruned, against=tiny)
    assert not report.must_fail and report.renumbered == perms
    gone = {row["layer"]: row["pruned"] for row in json.loads((pruned / "pruning.json").read_text())["layers"]}
    expected = {layer: {perms[layer][c]: "pruned (zeroed)" for c in experts} for layer, experts in gone.items()}
    assert diagnosis_changed(audit_extra(report)) == expected
    assert {layer: sorted(v) for layer, v in changed_experts(report).items()} == {k: sorted(v) for k, v in expected.items()}
    assert all(c.expert in gone[c.layer] for c in report.expert_changes)
    assert "experts renumbered" in "\n".join(audit_markdown(audit_extra(report)))


def fused(t: dict[str, torch.Tensor], perm: list[int] | None = None) -> dict[str, torch.Tensor]:
    """The per-expert layout stacked into ``[E, ...]`` tensors, experts (and router rows) taken in ``perm`` order."""
    order = perm or list(range(4))
    out = {k: v for k, v in t.items() if ".experts." not in k}
    for layer in (0, 1):
        p = f"model.layers.{layer}.mlp"
        out[f"{p}.experts.gate_up_proj"] = torch.stack(
            [torch.cat([t[f"{p}.experts.{e}.gate_proj.weight"], t[f"{p}.experts.{e}.up_proj.weight"]]) for e in order])
        out[f"{p}.experts.down_proj"] = torch.stack([t[f"{p}.experts.{e}.down_proj.weight"] for e in order])
        out[f"{p}.gate.weight"] = t[f"{p}.gate.weight"][order]
    return out


@pytest.fixture(scope="module")
def tiny_fused(tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return rewrite(tiny, tmp_path_factory.mktemp("classes") / "fused", fused)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.permutations(range(4)))
def test_any_permutation_of_stacked_experts_is_recovered(tiny: Path, tiny_fused: Path, tmp_path_factory: pytest.TempPathFactory,
                                                         perm: list[int]) -> None:  # fmt: skip
    folder = tmp_path_factory.mktemp("perm")
    shutil.copytree(tiny_fused, folder / "m")
    save_file({k: v.contiguous() for k, v in fused(tensors_of(tiny), list(perm)).items()}, str(folder / "m" / WEIGHTS),
              metadata={"format": "pt"})  # fmt: skip
    report = inspect_checkpoint(folder / "m", against=tiny_fused)
    assert not report.must_fail, report.problems
    identity = list(perm) == [0, 1, 2, 3]
    assert report.renumbered == ({} if identity else {0: list(perm), 1: list(perm)})
    assert report.expert_changes == [] and set(report.change_counts) <= {"renumbered"}


def test_merged_experts_share_weights_and_edited_ones_have_a_size(tiny: Path, tmp_path: Path) -> None:
    def merge(t: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = dict(t)
        for proj in PROJS:
            a, b = (EXPERT.format(layer=0, e=e, proj=proj) for e in (1, 3))
            out[a] = (t[a] + t[b]) / 2
            out[b] = out[a].clone()
            c = EXPERT.format(layer=1, e=2, proj=proj)
            out[c] = t[c] * 1.1
        return out

    report = inspect_checkpoint(rewrite(tiny, tmp_path / "merged", merge), against=tiny)
    assert not report.must_fail, report.problems
    assert report.merged_groups == {0: [[1, 3]]} and report.renumbered == {}
    kinds = {(e.layer, e.expert): (e.kind, e.merged_with) for e in report.expert_changes}
    assert kinds == {(0, 1): ("merged", [3]), (0, 3): ("merged", [1]), (1, 2): ("edited", [])}
    edited = next(e for e in report.expert_changes if e.kind == "edited")
    assert edited.relative_change == pytest.approx(0.1, rel=1e-3)
    assert report.change_counts == {"merged": 6, "edited": 3}
    assert diagnosis_changed(audit_extra(report)) == {0: {1: "merged", 3: "merged"}, 1: {2: "edited"}}


def test_the_gate_does_not_fail_a_bf16_round_trip_on_its_audit(tmp_path: Path) -> None:
    from tests.gate_toys import moegate, recorded_toy_project

    with recorded_toy_project(tmp_path) as (base, gate):
        candidate = round_trip(base, tmp_path / "bf16")
        run_dir = tmp_path / "run"
        code = moegate("run", "--gate", gate, "--candidate", candidate, "--report-dir", run_dir)
    report = json.loads((run_dir / "report.json").read_text())
    assert report["inspect"]["must_fail"] is False and set(report["inspect"]["change_counts"]) == {"precision_cast"}
    assert "inspect" not in [c["suite"] for c in report["verdict"]["capabilities"]]
    assert code == (0 if report["overall"] == "PASS" else 1)
    text = (run_dir / "report.md").read_text()
    assert "### Checkpoint audit" in text and "precision cast to bf16" in text
    assert "Checkpoint audit" in (run_dir / "report.html").read_text()
