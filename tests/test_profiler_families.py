"""Every family in the adapter table, on a tiny random model: the hooked routes are what the model used.

For each family the test recomputes routing independently -- from the MoE block's input hidden
states and the router's parameters, with that family's published selection rule -- and compares
it with what the profiler's router hooks saw; and checks that ``expert_outputs`` reproduces the
experts module's own combined output (so EAN/REAP measure the real expert outputs).
"""

from __future__ import annotations

import pytest
import torch
import transformers as T
from torch.nn import functional as F

from harness.errors import UserError
from harness.profiler import FAMILIES, RouteRecorder, expert_outputs, find_moe_blocks, trace_routes

COMMON = dict(vocab_size=128, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
MLA = dict(kv_lora_rank=16, q_lora_rank=None, qk_rope_head_dim=8, v_head_dim=8, qk_nope_head_dim=8,
           intermediate_size=64, moe_intermediate_size=16, n_routed_experts=8, num_experts_per_tok=3,
           n_shared_experts=1, n_group=4, topk_group=2)


def _configs() -> dict[str, T.PretrainedConfig]:
    mla_common = {**COMMON, "num_key_value_heads": 4}
    return {
        "mixtral": T.MixtralConfig(**COMMON, intermediate_size=16, num_local_experts=8, num_experts_per_tok=2),
        "qwen2_moe": T.Qwen2MoeConfig(**COMMON, intermediate_size=64, moe_intermediate_size=16,
                                      shared_expert_intermediate_size=32, num_experts=8, num_experts_per_tok=2),
        "qwen3_moe": T.Qwen3MoeConfig(**COMMON, intermediate_size=64, moe_intermediate_size=16, num_experts=8,
                                      num_experts_per_tok=2, head_dim=8, norm_topk_prob=True),
        "olmoe": T.OlmoeConfig(**COMMON, intermediate_size=16, num_experts=6, num_experts_per_tok=2),
        "deepseek_v2": T.DeepseekV2Config(**mla_common, **MLA, first_k_dense_replace=0,
                                          topk_method="group_limited_greedy", routed_scaling_factor=2.0),
        "deepseek_v3": T.DeepseekV3Config(**mla_common, **MLA, first_k_dense_replace=1, routed_scaling_factor=2.5),
        "glm4_moe": T.Glm4MoeConfig(**COMMON, intermediate_size=64, moe_intermediate_size=16, n_routed_experts=8,
                                    num_experts_per_tok=3, n_shared_experts=1, first_k_dense_replace=0, n_group=4,
                                    topk_group=2, head_dim=8, routed_scaling_factor=1.5),
        "gpt_oss": T.GptOssConfig(**COMMON, intermediate_size=16, num_local_experts=8, num_experts_per_tok=2,
                                  head_dim=8, layer_types=["sliding_attention", "full_attention"]),
        "qwen3_5_moe_text": T.Qwen3_5MoeTextConfig(
            **COMMON, moe_intermediate_size=16, shared_expert_intermediate_size=16, num_experts=8,
            num_experts_per_tok=2, head_dim=8, linear_num_key_heads=2, linear_num_value_heads=2,
            linear_key_head_dim=8, linear_value_head_dim=8, layer_types=["linear_attention", "full_attention"]),
    }


def _expected_routes(model_type: str, router: torch.nn.Module, hidden: torch.Tensor):
    """Independent top-k (sorted ids, weights in that order) from the router's parameters, per family."""
    h = hidden.reshape(-1, hidden.shape[-1]).float()
    bias = getattr(router, "bias", None)
    logits = F.linear(h, router.weight.float(), None if bias is None else bias.float())
    k = router.top_k
    if model_type == "gpt_oss":  # top-k of raw (biased) logits, softmax over the k
        vals, ids = logits.topk(k, dim=-1)
        weights = vals.softmax(dim=-1)
    elif model_type in ("deepseek_v3", "glm4_moe"):  # sigmoid; correction bias only for choosing; best-2 sum per group
        scores = logits.sigmoid()
        choice = scores + router.e_score_correction_bias
        n_group = router.num_group
        grouped = choice.view(len(h), n_group, -1)
        group_score = grouped.topk(2, dim=-1).values.sum(-1)
        keep = torch.zeros_like(group_score).scatter_(1, group_score.topk(router.topk_group, dim=-1).indices, 1)
        choice = choice.masked_fill(~keep.repeat_interleave(grouped.shape[-1], dim=1).bool(), float("-inf"))
        ids = choice.topk(k, dim=-1).indices
        weights = scores.gather(1, ids)
        weights = weights / weights.sum(-1, keepdim=True) * router.routed_scaling_factor
    elif model_type == "deepseek_v2":  # softmax; groups ranked by their best expert; scaled, not renormalised
        probs = logits.softmax(-1)
        grouped = probs.view(len(h), router.num_group, -1)
        keep = torch.zeros(len(h), router.num_group).scatter_(1, grouped.max(-1).values.topk(router.topk_group).indices, 1)
        masked = probs * keep.repeat_interleave(grouped.shape[-1], dim=1)
        weights, ids = masked.topk(k, dim=-1)
        weights = weights * router.routed_scaling_factor
    else:  # softmax top-k, renormalised when the config says so (Mixtral and Qwen3.5 always)
        weights, ids = logits.softmax(-1).topk(k, dim=-1)
        if model_type in ("mixtral", "qwen3_5_moe_text") or getattr(router, "norm_topk_prob", False):
            weights = weights / weights.sum(-1, keepdim=True)
    order = ids.argsort(dim=-1)
    return logits, ids.gather(1, order), weights.gather(1, order)


@pytest.fixture(scope="module")
def models() -> dict[str, torch.nn.Module]:
    built = {}
    for name, cfg in _configs().items():
        torch.manual_seed(0)
        model = T.AutoModelForCausalLM.from_config(cfg).eval()
        for block in find_moe_blocks(model):  # spread router logits so top-k has no near-ties
            with torch.no_grad():
                block.router.weight.normal_(0.0, 1.0)
                if hasattr(block.router, "e_score_correction_bias"):
                    block.router.e_score_correction_bias.normal_(0.0, 0.5)
                if getattr(block.router, "bias", None) is not None:
                    block.router.bias.normal_(0.0, 0.5)
        built[name] = model
    return built


def test_table_covers_required_families() -> None:
    assert set(_configs()) <= set(FAMILIES)
    assert {"mixtral", "qwen2_moe", "qwen3_moe", "olmoe", "deepseek_v2", "deepseek_v3", "gpt_oss"} <= set(FAMILIES)


@pytest.mark.parametrize("model_type", list(_configs()))
def test_hooked_routes_match_independent_recomputation(models, model_type: str) -> None:
    model = models[model_type]
    assert model.config.model_type == model_type
    blocks = find_moe_blocks(model)
    block_inputs: dict[str, torch.Tensor] = {}
    handles = [
        dict(model.named_modules())[b.module_name].register_forward_pre_hook(
            lambda mod, args, name=b.module_name: block_inputs.__setitem__(name, args[0].detach().clone()))
        for b in blocks
    ]
    input_ids = torch.randint(0, 128, (1, 24), generator=torch.Generator().manual_seed(1))
    try:
        with RouteRecorder(model, expert_norms=True) as rec, torch.no_grad():
            model(input_ids=input_ids, use_cache=False)
            captures = rec.take()
    finally:
        for h in handles:
            h.remove()
    assert len(captures) == len(blocks) > 0
    for block, cap in zip(blocks, captures, strict=True):
        logits, ids, weights = _expected_routes(model_type, block.router, block_inputs[block.module_name])
        assert cap.ids.shape == (24, block.top_k), f"{cap.ids.shape} vs (24, {block.top_k})"
        torch.testing.assert_close(cap.logits, logits, rtol=1e-4, atol=1e-5)
        order = cap.ids.argsort(dim=-1)
        assert torch.equal(cap.ids.gather(1, order), ids), f"{model_type} {block.module_name}: top-k ids differ"
        torch.testing.assert_close(cap.weights.gather(1, order), weights, rtol=1e-4, atol=1e-5)
        assert cap.norms is not None and cap.norms.shape == cap.ids.shape and bool((cap.norms > 0).all())


@pytest.mark.parametrize("model_type", list(_configs()))
def test_expert_outputs_recombine_to_experts_forward(models, model_type: str) -> None:
    block = find_moe_blocks(models[model_type])[0]
    gen = torch.Generator().manual_seed(2)
    hidden = torch.randn(10, 32, generator=gen)
    ids = torch.stack([torch.randperm(block.num_experts, generator=gen)[: block.top_k] for _ in range(10)])
    weights = torch.rand(10, block.top_k, generator=gen)
    with torch.no_grad():
        per_expert = expert_outputs(block.experts, hidden, ids)
        combined = block.experts(hidden, ids, weights)
    assert per_expert.shape == (10, block.top_k, 32)
    torch.testing.assert_close((per_expert * weights[..., None]).sum(1), combined, rtol=1e-4, atol=1e-5)


def test_output_router_logits_agree_with_hooks(models) -> None:
    model = models["mixtral"]
    input_ids = torch.arange(3, 19).unsqueeze(0)
    with torch.no_grad():
        out = model(input_ids=input_ids, output_router_logits=True, use_cache=False)
    traced = trace_routes(model, input_ids[0])
    assert [layer for layer, _, _ in traced] == [0, 1]
    for (_, ids, _), logits in zip(traced, out.router_logits, strict=True):
        expected = logits.softmax(-1).topk(2, dim=-1).indices.sort(-1).values
        assert torch.equal(ids.sort(-1).values, expected)


def test_hooks_leave_model_output_unchanged_and_are_removed(models) -> None:
    model = models["qwen2_moe"]
    input_ids = torch.arange(5, 21).unsqueeze(0)
    with torch.no_grad():
        before = model(input_ids=input_ids).logits
        with RouteRecorder(model, expert_norms=True):
            during = model(input_ids=input_ids).logits
        after = model(input_ids=input_ids).logits
    torch.testing.assert_close(before, during)
    torch.testing.assert_close(before, after)
    assert all(not b.router._forward_hooks and not b.experts._forward_hooks for b in find_moe_blocks(model))


def test_hybrid_dense_layers_are_skipped_and_shared_expert_reported(models) -> None:
    blocks = find_moe_blocks(models["deepseek_v3"])  # first_k_dense_replace=1: layer 0 is dense
    assert [b.layer_index for b in blocks] == [1] and blocks[0].has_shared_expert
    assert not find_moe_blocks(models["mixtral"])[0].has_shared_expert


def test_dense_model_is_a_user_error() -> None:
    dense = T.AutoModelForCausalLM.from_config(T.LlamaConfig(**COMMON, intermediate_size=16))
    with pytest.raises(UserError, match="'llama' has no MoE layers"):
        find_moe_blocks(dense)
