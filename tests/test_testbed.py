"""The SmolLM2 MoE test bed: fast checks of the fitting maths, slow checks of the built checkpoint."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from harness.errors import UserError
from harness.testbed import COMPLETE_MARKER, TestbedSettings, ensure_testbed
from harness.testbed._fit import fit_layer, moe_forward, split_neurons


def _dense(hidden: int = 16, inter: int = 64, tokens: int = 512, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(tokens, hidden, generator=gen)
    gate, up = torch.randn(inter, hidden, generator=gen) / 4, torch.randn(inter, hidden, generator=gen) / 4
    down = torch.randn(hidden, inter, generator=gen) / 8
    return x, gate, up, down


def test_split_neurons_partitions_into_equal_experts() -> None:
    x, gate, up, down = _dense()
    act = torch.nn.functional.silu(x @ gate.T) * (x @ up.T)
    shared, experts = split_neurons(act, down, 16, 4, seed=0)
    everything = torch.cat([shared, *experts]).sort().values
    assert torch.equal(everything, torch.arange(64))
    assert [e.numel() for e in experts] == [12, 12, 12, 12]
    contrib = (act.abs() * down.norm(dim=0)).mean(0)
    assert contrib[shared].min() >= contrib[torch.cat(experts)].max()


def test_fit_layer_matches_transformers_qwen2_moe_block() -> None:
    """The reference forward used while fitting is exactly what Qwen2MoeSparseMoeBlock computes."""
    from transformers import Qwen2MoeConfig
    from transformers.models.qwen2_moe.modeling_qwen2_moe import Qwen2MoeSparseMoeBlock

    x, gate, up, down = _dense()
    w = fit_layer(x, gate, up, down, n_shared=16, n_experts=4, top_k=2, seed=0)
    config = Qwen2MoeConfig(hidden_size=16, moe_intermediate_size=12, shared_expert_intermediate_size=16,
                            num_experts=4, num_experts_per_tok=2, norm_topk_prob=False)
    block = Qwen2MoeSparseMoeBlock(config).eval()
    with torch.no_grad():
        block.gate.weight.copy_(w.router)
        block.experts.gate_up_proj.copy_(torch.cat([w.experts_gate, w.experts_up], dim=1))
        block.experts.down_proj.copy_(w.experts_down)
        block.shared_expert.gate_proj.weight.copy_(w.shared_gate)
        block.shared_expert.up_proj.weight.copy_(w.shared_up)
        block.shared_expert.down_proj.weight.copy_(w.shared_down)
        block.shared_expert_gate.weight.copy_(w.shared_expert_gate)
        ours = moe_forward(x, w, 2)
        theirs = block(x.unsqueeze(0)).squeeze(0)
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)
    dense = (torch.nn.functional.silu(x @ gate.T) * (x @ up.T)) @ down.T
    rel = ((ours - dense).norm() / dense.norm()).item()
    assert rel < 0.5  # sparse, yet close to the dense MLP it replaces


def test_settings_validate_and_hash() -> None:
    with pytest.raises(UserError, match="top-k"):
        TestbedSettings(experts=4, top_k=4)
    with pytest.raises(UserError, match="shared-fraction"):
        TestbedSettings(shared_fraction=1.0)
    base = TestbedSettings()
    assert base.key("a") == TestbedSettings().key("a") != TestbedSettings(seed=1).key("a") != base.key("b")
    assert base.shared_neurons(1536) + 8 * ((1536 - base.shared_neurons(1536)) // 8) == 1536


def test_ensure_testbed_returns_complete_folder_without_building(tmp_path: Path) -> None:
    (tmp_path / "model.safetensors").write_bytes(b"x")
    (tmp_path / COMPLETE_MARKER).write_text("done\n")
    assert ensure_testbed(tmp_path) == tmp_path


# ---- the real test bed (built once into the cache; minutes on a CPU) ----

WINDOWS, WINDOW_LEN = 4, 512


@pytest.fixture(scope="module")
def testbed() -> Path:
    return ensure_testbed()


def _wikitext_windows(tokenizer) -> list[torch.Tensor]:
    from harness.resources import data_file

    rows = [json.loads(line)["text"] for line in data_file("wikitext2_raw_test.jsonl").open()]
    ids = tokenizer("\n\n".join(rows)[:60000], add_special_tokens=False)["input_ids"]
    return [torch.tensor(ids[i * WINDOW_LEN : (i + 1) * WINDOW_LEN]).unsqueeze(0) for i in range(WINDOWS)]


def _ppl(model, windows: list[torch.Tensor]) -> float:
    with torch.inference_mode():
        losses = [model(w, labels=w).loss.item() for w in windows]
    return math.exp(sum(losses) / len(losses))


@pytest.fixture(scope="module")
def moe(testbed: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, info = AutoModelForCausalLM.from_pretrained(str(testbed), output_loading_info=True)
    return model.eval(), AutoTokenizer.from_pretrained(str(testbed)), info


@pytest.mark.slow
@pytest.mark.testbed
def test_testbed_loads_unchanged_in_transformers(testbed: Path, moe) -> None:
    _, _, info = moe
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    config = json.loads((testbed / "config.json").read_text())
    assert config["model_type"] == "qwen2_moe" and config["rope_theta"] == 100000.0
    assert config["num_experts_per_tok"] < config["num_experts"]
    assert ensure_testbed() == testbed  # cached: returns at once


@pytest.mark.slow
@pytest.mark.testbed
def test_testbed_perplexity_within_1_5x_of_dense(moe) -> None:
    from harness.smollm2 import smollm2_gguf
    from harness.testbed._build import load_dense

    model, tokenizer, _ = moe
    windows = _wikitext_windows(tokenizer)
    dense, _ = load_dense(smollm2_gguf())
    ratio = _ppl(model, windows) / _ppl(dense, windows)
    assert ratio < 1.5, f"test bed PPL is {ratio:.2f}x the dense model's"


@pytest.mark.slow
@pytest.mark.testbed
@pytest.mark.parametrize(("prompt", "needle"), [("What is the capital of France?", "Paris"),
                                                 ("Write a Python function that adds two numbers", "def")])
def test_testbed_chat_stays_coherent(moe, prompt: str, needle: str) -> None:
    model, tokenizer, _ = moe
    ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                        return_tensors="pt", return_dict=True)["input_ids"]
    with torch.inference_mode():
        out = model.generate(ids, max_new_tokens=40, do_sample=False)
    assert needle in tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)


@pytest.mark.slow
@pytest.mark.testbed
def test_testbed_routing_is_uneven_and_prompt_dependent(moe) -> None:
    from harness.profiler import entropy_ratio, profile_model

    model, tokenizer, _ = moe
    prose = ["The Roman Empire ruled the Mediterranean for centuries, and its roads, laws and language "
             "shaped the history of Europe long after the fall of the western provinces."]
    code = ["def add(a, b):\n    return a + b\n\nclass Stack:\n    def __init__(self):\n        self.items = []\n"
            "    def push(self, x):\n        self.items.append(x)\n"]
    p_prose = profile_model(model, tokenizer, prose, progress=False, expert_norms=False)
    p_code = profile_model(model, tokenizer, code, progress=False, expert_norms=False)
    both = p_prose.importance("frequency") + p_code.importance("frequency")
    ratios = [entropy_ratio(row) for row in both]
    assert sum(ratios) / len(ratios) < 0.9
    a = p_prose.importance("frequency") / p_prose.importance("frequency").sum(1, keepdims=True)
    b = p_code.importance("frequency") / p_code.importance("frequency").sum(1, keepdims=True)
    assert 0.5 * abs(a - b).sum(1).mean() > 0.1  # code and prose use different experts


@pytest.mark.slow
@pytest.mark.testbed
def test_testbed_build_is_deterministic(testbed: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A rebuild gives the same bytes in every file, whatever CPU kernels the calling process would use
    (here: ATen's and MKL's slowest, which give other bytes unpinned). The completion marker only has to
    exist: caches built before its content was fixed recorded the build time in it."""
    from harness.resources import file_sha256
    from harness.testbed._pinned import _has_avx2

    if not _has_avx2():
        pytest.skip("no AVX2 here: the build runs with native kernels, pinned nowhere")

    def digests(folder: Path) -> dict[str, str]:
        return {p.name: "" if p.name == COMPLETE_MARKER else file_sha256(p) for p in folder.iterdir()}

    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "default")
    monkeypatch.setenv("MKL_CBWR", "COMPATIBLE")
    again = ensure_testbed(tmp_path / "again")
    assert digests(again) == digests(testbed)


@pytest.mark.slow
@pytest.mark.testbed
@pytest.mark.mlx
def test_testbed_loads_in_mlx_lm(testbed: Path) -> None:
    mlx_lm = pytest.importorskip("mlx_lm")
    model, tokenizer = mlx_lm.load(str(testbed))
    text = mlx_lm.generate(model, tokenizer, prompt="The capital of France is", max_tokens=3)
    assert isinstance(text, str) and text.strip()
