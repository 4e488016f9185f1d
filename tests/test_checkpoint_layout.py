"""MoE layouts from config dicts (published configs, agreement with transformers) and the expert/router name table."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from harness.checkpoint.layout import moe_layout_from_config

MIXTRAL_8X7B = {"model_type": "mixtral", "num_hidden_layers": 32, "num_local_experts": 8, "num_experts_per_tok": 2,
                "intermediate_size": 14336}
QWEN15_MOE = {"model_type": "qwen2_moe", "num_hidden_layers": 24, "num_experts": 60, "num_experts_per_tok": 4,
              "moe_intermediate_size": 1408, "shared_expert_intermediate_size": 5632, "decoder_sparse_step": 1,
              "mlp_only_layers": [], "norm_topk_prob": False}
QWEN3_30B = {"model_type": "qwen3_moe", "num_hidden_layers": 48, "num_experts": 128, "num_experts_per_tok": 8,
             "moe_intermediate_size": 768, "decoder_sparse_step": 1, "mlp_only_layers": [], "norm_topk_prob": True}
OLMOE = {"model_type": "olmoe", "num_hidden_layers": 16, "num_experts": 64, "num_experts_per_tok": 8,
         "intermediate_size": 1024, "norm_topk_prob": False}
DEEPSEEK_V3 = {"model_type": "deepseek_v3", "num_hidden_layers": 61, "n_routed_experts": 256, "num_experts_per_tok": 8,
               "n_shared_experts": 1, "moe_intermediate_size": 2048, "first_k_dense_replace": 3, "moe_layer_freq": 1,
               "n_group": 8, "topk_group": 4, "scoring_func": "sigmoid", "norm_topk_prob": True}
DEEPSEEK_V2_LITE = {"model_type": "deepseek_v2", "num_hidden_layers": 27, "n_routed_experts": 64, "num_experts_per_tok": 6,
                    "n_shared_experts": 2, "moe_intermediate_size": 1408, "first_k_dense_replace": 1, "moe_layer_freq": 1,
                    "scoring_func": "softmax", "topk_method": "greedy", "norm_topk_prob": False}
GPT_OSS_20B = {"model_type": "gpt_oss", "num_hidden_layers": 24, "num_local_experts": 32, "num_experts_per_tok": 4,
               "intermediate_size": 2880}
QWEN35_MOE = {"model_type": "qwen3_5_moe", "text_config": {"num_hidden_layers": 40, "num_experts": 256,
              "num_experts_per_tok": 8, "moe_intermediate_size": 512, "shared_expert_intermediate_size": 512}}


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        (MIXTRAL_8X7B, dict(family="mixtral", moe_layers=list(range(32)), routed_experts=8, top_k=2, shared_experts=0,
                            expert_intermediate_size=14336, norm_topk_prob=True)),
        (QWEN15_MOE, dict(routed_experts=60, top_k=4, shared_experts=1, shared_intermediate_size=5632,
                          expert_intermediate_size=1408, norm_topk_prob=False)),
        (QWEN3_30B, dict(routed_experts=128, top_k=8, shared_experts=0, moe_layers=list(range(48)))),
        (OLMOE, dict(routed_experts=64, top_k=8, expert_intermediate_size=1024, norm_topk_prob=False)),
        (DEEPSEEK_V3, dict(moe_layers=list(range(3, 61)), routed_experts=256, shared_experts=1,
                           shared_intermediate_size=2048, router_kind="sigmoid_grouped", top_k=8)),
        (DEEPSEEK_V2_LITE, dict(moe_layers=list(range(1, 27)), shared_experts=2, shared_intermediate_size=2816,
                                router_kind="softmax_topk", top_k=6)),
        (GPT_OSS_20B, dict(routed_experts=32, top_k=4, router_kind="topk_softmax", moe_layers=list(range(24)))),
        (QWEN35_MOE, dict(family="qwen3_5_moe_text", num_layers=40, routed_experts=256, top_k=8, shared_experts=1,
                          moe_layers=list(range(40)))),
    ],
)
def test_published_configs(config: dict[str, Any], expected: dict[str, Any]) -> None:
    layout = moe_layout_from_config(config)
    assert layout is not None
    for key, value in expected.items():
        assert getattr(layout, key) == value, key
    assert layout.to_dict()["dense_layers"] == [i for i in range(layout.num_layers) if i not in layout.moe_layers]


def test_dense_models_have_no_layout() -> None:
    assert moe_layout_from_config({"model_type": "llama", "num_hidden_layers": 30, "intermediate_size": 1536}) is None
    assert moe_layout_from_config({"model_type": "qwen2_moe", "num_hidden_layers": 4, "num_experts": 0}) is None


def test_unknown_family_with_standard_keys() -> None:
    layout = moe_layout_from_config({"model_type": "future_moe", "num_hidden_layers": 6, "n_routed_experts": 16,
                                     "num_experts_per_tok": 2, "first_k_dense_replace": 2, "n_shared_experts": 1,
                                     "moe_intermediate_size": 64})
    assert layout is not None and layout.moe_layers == [2, 3, 4, 5] and layout.shared_experts == 1


@given(n=st.integers(1, 64), step=st.integers(1, 4), dense=st.lists(st.integers(0, 63), max_size=5))
def test_sparse_step_rule(n: int, step: int, dense: list[int]) -> None:
    layout = moe_layout_from_config({**QWEN15_MOE, "num_hidden_layers": n, "decoder_sparse_step": step, "mlp_only_layers": dense})
    assert layout is not None
    assert layout.moe_layers == [i for i in range(n) if i not in dense and (i + 1) % step == 0]
    assert sorted(set(layout.moe_layers) | set(layout.dense_layers)) == list(range(n))


def _built_moe_layers(config_class: str, **kwargs: Any) -> tuple[dict[str, Any], list[int]]:
    """Which decoder layers transformers actually builds with routed experts."""
    import transformers

    config = getattr(transformers, config_class)(vocab_size=64, hidden_size=16, num_attention_heads=2,
                                                 num_key_value_heads=2, **kwargs)
    model = transformers.AutoModelForCausalLM.from_config(config)
    built = [i for i, layer in enumerate(model.model.layers) if hasattr(layer.mlp, "experts")]
    return config.to_dict(), built


@pytest.mark.parametrize(
    ("config_class", "kwargs"),
    [
        ("Qwen2MoeConfig", dict(num_hidden_layers=5, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=8,
                                shared_expert_intermediate_size=8, intermediate_size=16, decoder_sparse_step=2,
                                mlp_only_layers=[3])),
        ("Qwen3MoeConfig", dict(num_hidden_layers=4, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=8,
                                intermediate_size=16, mlp_only_layers=[0], head_dim=8)),
        ("DeepseekV3Config", dict(num_hidden_layers=4, n_routed_experts=4, num_experts_per_tok=2, n_shared_experts=1,
                                  moe_intermediate_size=8, intermediate_size=16, first_k_dense_replace=2, n_group=1,
                                  topk_group=1, q_lora_rank=8, kv_lora_rank=8, qk_rope_head_dim=4, qk_nope_head_dim=4,
                                  v_head_dim=4)),
        ("MixtralConfig", dict(num_hidden_layers=3, num_local_experts=4, num_experts_per_tok=2, intermediate_size=16)),
        ("OlmoeConfig", dict(num_hidden_layers=2, num_experts=4, num_experts_per_tok=2, intermediate_size=16)),
    ],
)
def test_layout_matches_the_modules_transformers_builds(config_class: str, kwargs: dict[str, Any]) -> None:
    config, built = _built_moe_layers(config_class, **kwargs)
    layout = moe_layout_from_config(config)
    assert layout is not None and layout.moe_layers == built


@pytest.mark.parametrize(
    ("name", "role", "layer", "expert", "block"),
    [
        ("model.layers.3.mlp.experts.5.down_proj.weight", "expert", 3, 5, "model.layers.3.mlp"),
        ("model.layers.0.block_sparse_moe.experts.7.w1.weight", "expert", 0, 7, "model.layers.0.block_sparse_moe"),
        ("model.layers.2.mlp.experts.gate_up_proj", "fused_experts", 2, None, "model.layers.2.mlp"),
        ("model.layers.2.mlp.experts.down_proj_bias", "fused_experts", 2, None, "model.layers.2.mlp"),
        ("model.layers.1.mlp.gate.weight", "router", 1, None, "model.layers.1.mlp"),
        ("model.layers.1.mlp.router.bias", "router", 1, None, "model.layers.1.mlp"),
        ("model.layers.1.mlp.gate.e_score_correction_bias", "router", 1, None, "model.layers.1.mlp"),
        ("model.layers.1.mlp.shared_experts.0.up_proj.weight", "other", None, None, None),
        ("model.layers.1.mlp.shared_expert_gate.weight", "other", None, None, None),
        ("model.layers.1.mlp.experts.0.gate_proj.weight", "expert", 1, 0, "model.layers.1.mlp"),
        ("model.layers.1.self_attn.q_proj.weight", "other", None, None, None),
    ],
)
def test_one_name_table_classifies_moe_tensors(name: str, role: str, layer: int | None, expert: int | None,
                                               block: str | None) -> None:
    from harness.checkpoint import classify, is_routed_expert, layer_index

    found = classify(name)
    assert (found.role, found.layer, found.expert, found.block) == (role, layer, expert, block)
    assert is_routed_expert(name) == (role in ("expert", "fused_experts"))
    assert layer_index(name) == int(name.split(".")[2])


def test_gguf_expert_tensors_are_routed_experts() -> None:
    from harness.checkpoint import is_routed_expert

    assert is_routed_expert("blk.3.ffn_up_exps.weight") and not is_routed_expert("blk.3.ffn_up.weight")
