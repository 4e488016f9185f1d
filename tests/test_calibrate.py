"""The baseline's noise floor: benign perturbations, the stored churn, budgets that read it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from safetensors.torch import load_file

from harness.compress import open_checkpoint
from harness.compress._perturb import expert_permutations, renumber_experts, round_trip
from harness.gate import Budget
from harness.gate.churn import Calibration, ObservedChange, Perturbation, with_churn
from tests.gate_toys import moegate
from tests.tiny_models import build_tiny_moe


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_moe("qwen2_moe", tmp_path_factory.mktemp("tiny") / "qwen2_moe")


def calibration(changes: dict[str, tuple[str, float, float]]) -> Calibration:
    """One perturbation per entry: label -> (perturbation, change, lower bound)."""
    perturbations = [
        Perturbation(name=name, description=name, fingerprint="f",
                     capabilities={label: ObservedChange(status="PASS", change=change, ci_low=low, budget=1.0)})
        for label, (name, change, low) in changes.items()
    ]  # fmt: skip
    return Calibration(manifest_sha256="0" * 64, created_utc="now", perturbations=perturbations)


@given(st.floats(0.0, 50.0), st.floats(0.1, 20.0), st.floats(0.0, 10.0))
def test_churn_widens_a_budget_never_narrows_it(churn: float, multiple: float, floor: float) -> None:
    drop = Budget(suite="s", metric="acc", kind="drop", max=floor, churn_multiple=multiple)
    ratio = Budget(suite="s", metric="ppl", kind="ratio", max=1.0 + floor / 100, churn_multiple=multiple)
    cal = calibration({"s/acc": ("bf16", churn, churn - 1), "s/ppl": ("batch", 1.0 + churn / 100, 1.0)})
    wide_drop, wide_ratio = with_churn([drop, ratio], cal)
    assert wide_drop.max == pytest.approx(max(floor, multiple * churn))
    assert wide_ratio.max == pytest.approx(max(1.0 + floor / 100, 1.0 + multiple * churn / 100))
    assert with_churn([drop.model_copy(update={"churn_multiple": None})], cal)[0].max == floor


def test_budgets_the_calibration_never_saw_are_not_failures() -> None:
    from harness.api.calibrate import benign_failures

    cal = calibration({"s/acc": ("bf16", 3.0, 2.0)})
    count = Budget(suite="s", metric="any", kind="new_flags_count", max=0)  # added after calibrating
    assert benign_failures([count], cal) == []
    tight = Budget(suite="s", metric="acc", kind="drop", max=1.0)
    assert benign_failures([tight], cal) == [
        "budget 's/acc' (max 1) FAILs the baseline itself under the benign perturbation 'bf16' (bf16): "
        "change 3, lower bound 2"
    ]


def test_renumbered_experts_compute_the_same_function(tiny: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    out = renumber_experts(tiny, tmp_path / "renumbered", seed=1)
    before, after = load_file(str(tiny / "model.safetensors")), load_file(str(out / "model.safetensors"))
    ckpt = open_checkpoint(tiny)
    perm = expert_permutations(ckpt, seed=1)
    experts = {k for keys in ckpt.experts.values() for k in keys} | {w for w, _ in ckpt.routers.values()}
    assert all(torch.equal(before[k], after[k]) for k in before if k not in experts)  # the rest bit-identical
    layer = ckpt.layers[0]
    assert all(p != e for e, p in enumerate(perm[layer]))  # every expert moved
    moved = ckpt.experts[(layer, 0)][0]
    assert torch.equal(after[moved], before[moved.replace("experts.0.", f"experts.{perm[layer][0]}.")])
    ids = torch.randint(0, 100, (2, 12))
    logits = [AutoModelForCausalLM.from_pretrained(str(p)).eval()(ids).logits for p in (tiny, out)]
    assert (logits[0] - logits[1]).abs().max() < 1e-5


def test_bf16_round_trip_rounds_every_float32_tensor(tiny: Path, tmp_path: Path) -> None:
    out = round_trip(tiny, tmp_path / "bf16")
    before, after = load_file(str(tiny / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert set(before) == set(after)
    for key, tensor in before.items():
        assert after[key].dtype == tensor.dtype and torch.equal(after[key], tensor.to(torch.bfloat16).to(tensor.dtype))
    assert any(not torch.equal(after[k], before[k]) for k in before)


def write_gate(root: Path, tiny: Path) -> Path:
    gate = root / "gates" / "tiny.toml"
    gate.parent.mkdir(parents=True, exist_ok=True)
    gate.write_text(
        f'[gate]\nname = "tiny"\n[baseline]\nmodel = "{tiny}"\nbackend = "transformers"\n'
        'options = { dtype = "float32" }\ndir = "baselines/tiny"\n'
        '[suites.wikitext2]\nlimit = 2\nseq_len = 64\n'
        '[[budgets]]\nsuite = "wikitext2"\nmetric = "ppl"\nkind = "ratio"\nmax = 1.5\n'
    )
    return gate


def test_calibrate_stores_the_churn_and_gates_read_it(tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture) -> None:  # fmt: skip
    monkeypatch.setenv("MOEGATE_CACHE_DIR", str(tmp_path / "cache"))
    gate = write_gate(tmp_path, tiny)
    assert moegate("baseline", "record", "--gate", gate) == 0
    assert moegate("baseline", "calibrate", "--gate", gate) == 0
    store = tmp_path / "baselines" / "tiny"
    stored = json.loads((store / "calibration.json").read_text())
    seen = {p["name"]: p["capabilities"]["wikitext2/ppl"] for p in stored["perturbations"]}
    assert set(seen) == {"renumber", "bf16", "dtype", "batch"} and all(s["status"] == "PASS" for s in seen.values())
    assert abs(seen["renumber"]["change"] - 1.0) < 1e-4  # the same function
    assert seen["bf16"]["change"] != 1.0  # a round trip does move the numbers
    assert not list((tmp_path / "cache").glob("calibrate-*"))  # perturbed copies are gone

    assert moegate("run", "--gate", gate, "--candidate", tiny, "--report-dir", tmp_path / "run") == 0
    cap = json.loads((tmp_path / "run" / "report.json").read_text())["verdict"]["capabilities"][0]
    assert cap["baseline_churn"].endswith(f"under {max(seen, key=lambda n: seen[n]['change'])}")
    assert "baseline's own" in (tmp_path / "run" / "report.md").read_text()

    # a budget the baseline's own churn FAILs is refused, naming the perturbation
    stored["perturbations"][1]["capabilities"]["wikitext2/ppl"]["ci_low"] = 1.7
    (store / "calibration.json").write_text(json.dumps(stored))
    capsys.readouterr()
    assert moegate("run", "--gate", gate, "--candidate", tiny, "--report-dir", tmp_path / "run2") == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert "FAILs the baseline itself under the benign perturbation 'bf16'" in error
    assert moegate("verdict", tmp_path / "run", "--gate", gate) == 2

    # set as a multiple of the churn: widened to 1 + 3 x (churn - 1), max the floor
    gate.write_text(gate.read_text().replace("max = 1.5", "max = 1.0001\nchurn_multiple = 3"))
    stored["perturbations"][1]["capabilities"]["wikitext2/ppl"]["ci_low"] = 1.0
    stored["perturbations"][1]["capabilities"]["wikitext2/ppl"]["change"] = 1.2
    (store / "calibration.json").write_text(json.dumps(stored))
    assert moegate("verdict", tmp_path / "run", "--gate", gate) == 0
    cap = json.loads((tmp_path / "run" / "report.json").read_text())["verdict"]["capabilities"][0]
    assert cap["budget"] == pytest.approx(1.6)

    # another recording of the baseline: the calibration no longer applies, and the gate says why
    assert moegate("baseline", "record", "--gate", gate) == 0
    capsys.readouterr()
    assert moegate("verdict", tmp_path / "run", "--gate", gate) == 2
    assert "has no current calibration" in capsys.readouterr().err
