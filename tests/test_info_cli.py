"""``moegate info``: numbers from headers agree with the loaded model and the files on disk."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from harness.cli.info import checkpoint_info, info
from tests.tiny_models import build_tiny_moe


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_moe("qwen2_moe", tmp_path_factory.mktemp("info") / "qwen2_moe")


def test_json_matches_the_loaded_model(tiny: Path) -> None:
    from transformers import AutoModelForCausalLM

    result = CliRunner().invoke(info, [str(tiny), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    model = AutoModelForCausalLM.from_pretrained(tiny)
    assert data["parameters"] == sum(p.numel() for p in model.parameters())
    experts = sum(p.numel() for n, p in model.named_parameters() if ".experts." in n)
    assert data["routed_expert_parameters"] == experts
    assert data["size_on_disk_bytes"] == sum(p.stat().st_size for p in tiny.iterdir())
    assert data["weight_dtypes"] == {"F32": data["parameters"]}
    moe = data["moe"]
    assert moe["moe_layers"] == [0, 1] and moe["routed_experts"] == 4 and moe["top_k"] == 2
    assert moe["shared_experts"] == 1 and moe["shared_intermediate_size"] == 32
    built = [i for i, layer in enumerate(model.model.layers) if hasattr(layer.mlp, "experts")]
    assert built == moe["moe_layers"]
    assert model.model.layers[0].mlp.experts.gate_up_proj.shape[0] == moe["routed_experts"]


def test_table_for_people(tiny: Path) -> None:
    result = CliRunner().invoke(info, [str(tiny)], env={"COLUMNS": "160"})
    assert result.exit_code == 0, result.output
    for text in ("Qwen2MoeForCausalLM", "MoE layers", "all 2", "routed experts / layer", "top-k", "shared experts",
                 "parameters", "size on disk", "F32"):
        assert text in result.output, text


@pytest.mark.slow
def test_gguf_info_without_loading() -> None:
    from harness.smollm2 import smollm2_gguf

    data = checkpoint_info(str(smollm2_gguf()))
    assert data["model_type"] == "llama" and data["moe"] is None
    assert data["num_layers"] == 30 and 130e6 < data["parameters"] < 140e6
    assert data["size_on_disk_bytes"] == smollm2_gguf().stat().st_size


def test_testbed_keyword_names_the_built_test_bed(tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``moegate info testbed`` (and profile, inspect, compress) resolve the keyword like ``moegate eval``."""
    import harness.api

    monkeypatch.setattr(harness.api, "resolve_testbed", lambda model, backend="transformers", log=None: str(tiny))
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(info, ["testbed", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["model"] == str(tiny)

    (tmp_path / "testbed").mkdir()  # a real folder of that name wins over the keyword
    assert CliRunner().invoke(info, ["testbed", "--json"]).exit_code != 0
