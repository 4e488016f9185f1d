"""The MoE layout of a checkpoint, read from its config alone (no weights): a pure function.

Families name the same facts differently (``num_local_experts`` / ``num_experts`` / ``n_routed_experts``;
``decoder_sparse_step`` vs ``first_k_dense_replace``). One table maps each ``model_type`` to the rules
that read them, and to the module names of its router and shared expert (the profiler's adapters are
built from it); unknown families with standard keys still work through the generic row.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from harness.checkpoint.names import ROUTER_ATTRS

EXPERT_KEYS = ("num_local_experts", "num_experts", "n_routed_experts", "moe_num_experts")
TOP_K_KEYS = ("num_experts_per_tok", "experts_per_token", "moe_topk", "top_k")
LAYER_KEYS = ("num_hidden_layers", "n_layer", "num_layers")


@dataclass
class MoeLayout:
    """Where the experts are and how tokens reach them."""

    family: str
    """``model_type`` of the (text) model."""
    num_layers: int
    moe_layers: list[int]
    """Indices of decoder layers whose MLP is a routed MoE block."""
    routed_experts: int
    """Routed experts per MoE layer."""
    top_k: int
    shared_experts: int = 0
    """Always-on experts per MoE layer."""
    shared_intermediate_size: int | None = None
    """Total intermediate width of the shared part (all shared experts together)."""
    expert_intermediate_size: int | None = None
    router_kind: str = "softmax_topk"
    """``softmax_topk`` (softmax, then top-k), ``topk_softmax`` (softmax over the top-k logits),
    ``sigmoid_grouped`` (sigmoid scores, group-limited top-k, DeepSeek-V3 style)."""
    norm_topk_prob: bool | None = None
    """Whether the top-k weights are renormalised to sum to 1."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Family-specific facts (expert groups, router bias...)."""

    @property
    def dense_layers(self) -> list[int]:
        return [i for i in range(self.num_layers) if i not in set(self.moe_layers)]

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "dense_layers": self.dense_layers}


def _first(config: dict[str, Any], keys: tuple[str, ...]) -> Any:
    return next((config[k] for k in keys if config.get(k) is not None), None)


# ---------------------------------------------------------------- rules: which layers are MoE
def _every_layer(config: dict[str, Any], n: int) -> list[int]:
    return list(range(n))


def _sparse_step(config: dict[str, Any], n: int) -> list[int]:
    """Qwen-style: ``(i + 1) % decoder_sparse_step == 0`` and ``i`` not in ``mlp_only_layers``."""
    step = int(config.get("decoder_sparse_step") or 1)
    dense = set(config.get("mlp_only_layers") or [])
    return [i for i in range(n) if i not in dense and (i + 1) % step == 0]


def _first_k_dense(config: dict[str, Any], n: int) -> list[int]:
    """DeepSeek-style: the first ``first_k_dense_replace`` layers are dense, then every ``moe_layer_freq``-th."""
    first = int(config.get("first_k_dense_replace") or 0)
    freq = int(config.get("moe_layer_freq") or 1)
    return [i for i in range(n) if i >= first and i % freq == 0]


def _interleave_step(config: dict[str, Any], n: int) -> list[int]:
    """Llama-4-style: every ``interleave_moe_layer_step``-th layer (or the explicit ``moe_layers`` list)."""
    if config.get("moe_layers") is not None:
        return sorted(int(i) for i in config["moe_layers"])
    step = int(config.get("interleave_moe_layer_step") or 1)
    return [i for i in range(n) if (i + 1) % step == 0]


def _generic_layers(config: dict[str, Any], n: int) -> list[int]:
    if "first_k_dense_replace" in config or "moe_layer_freq" in config:
        return _first_k_dense(config, n)
    if "decoder_sparse_step" in config or "mlp_only_layers" in config:
        return _sparse_step(config, n)
    return _every_layer(config, n)


# ---------------------------------------------------------------- rules: the shared part
def _no_shared(config: dict[str, Any]) -> tuple[int, int | None]:
    return 0, None


def _qwen_shared(config: dict[str, Any]) -> tuple[int, int | None]:
    size = int(config.get("shared_expert_intermediate_size") or 0)
    return (1, size) if size > 0 else (0, None)


def _deepseek_shared(config: dict[str, Any]) -> tuple[int, int | None]:
    count = int(config.get("n_shared_experts") or 0)
    width = config.get("moe_intermediate_size")
    return (count, count * int(width)) if count and width else (count, None)


def _llama4_shared(config: dict[str, Any]) -> tuple[int, int | None]:
    """Llama 4 runs one shared expert of ``intermediate_size`` beside the routed ones."""
    return 1, int(config["intermediate_size"]) if config.get("intermediate_size") else None


def _generic_shared(config: dict[str, Any]) -> tuple[int, int | None]:
    if config.get("n_shared_experts"):
        return _deepseek_shared(config)
    return _qwen_shared(config)


@dataclass(frozen=True)
class FamilyFacts:
    """One model family: how its config reads (layers, shared part, router) and how its modules are named."""

    layers: Callable[[dict[str, Any], int], list[int]]
    shared: Callable[[dict[str, Any]], tuple[int, int | None]]
    router_kind: str = "softmax_topk"
    norm_topk_default: bool | None = None
    router_attr: str = ROUTER_ATTRS[0]
    """The MoE block's router module (``gate``; GPT-OSS: ``router``)."""
    shared_attr: str | None = None
    """The MoE block's always-on shared expert module, if the family has one."""
    profiler: str | None = None
    """Label of the profiler's adapter, for families whose hooked routes are tested
    (tests/test_profiler_families.py); None: the profiler refuses the family."""


_QWEN_SHARED, _DEEPSEEK_SHARED = "shared_expert", "shared_experts"
_QWEN2 = "Qwen2-MoE style (softmax top-k, gated shared expert)"

# model_type -> how its config and modules name the MoE facts. One line per family.
FAMILIES: dict[str, FamilyFacts] = {
    "mixtral": FamilyFacts(_every_layer, _no_shared, "softmax_topk", True, profiler="Mixtral (softmax top-k, renormalised)"),
    "phimoe": FamilyFacts(_every_layer, _no_shared, "sparsemixer", None),
    "olmoe": FamilyFacts(_every_layer, _no_shared, "softmax_topk", False, profiler="OLMoE (softmax top-k)"),
    "granitemoe": FamilyFacts(_every_layer, _no_shared, "topk_softmax", True),
    "gpt_oss": FamilyFacts(_every_layer, _no_shared, "topk_softmax", True, router_attr=ROUTER_ATTRS[1],
                       profiler="GPT-OSS (top-k of biased logits, softmax over the k)"),
    "qwen2_moe": FamilyFacts(_sparse_step, _qwen_shared, "softmax_topk", False, shared_attr=_QWEN_SHARED, profiler=_QWEN2),
    "qwen3_moe": FamilyFacts(_sparse_step, _no_shared, "softmax_topk", False, profiler="Qwen3-MoE (softmax top-k)"),
    "qwen3_next": FamilyFacts(_sparse_step, _qwen_shared, "softmax_topk", True, shared_attr=_QWEN_SHARED),
    "qwen3_5_moe": FamilyFacts(_sparse_step, _qwen_shared, "softmax_topk", True, shared_attr=_QWEN_SHARED, profiler=_QWEN2),
    "qwen3_5_moe_text": FamilyFacts(_sparse_step, _qwen_shared, "softmax_topk", True, shared_attr=_QWEN_SHARED,
                                profiler=_QWEN2),
    "qwen3_vl_moe_text": FamilyFacts(_sparse_step, _no_shared, "softmax_topk", True),
    "deepseek_v2": FamilyFacts(_first_k_dense, _deepseek_shared, "softmax_topk", False, shared_attr=_DEEPSEEK_SHARED,
                           profiler="DeepSeek-V2 (softmax, greedy or group-limited top-k, scaled)"),
    "deepseek_v3": FamilyFacts(_first_k_dense, _deepseek_shared, "sigmoid_grouped", True, shared_attr=_DEEPSEEK_SHARED,
                           profiler="DeepSeek-V3 (sigmoid + correction bias, group-limited top-k)"),
    "glm4_moe": FamilyFacts(_first_k_dense, _deepseek_shared, "sigmoid_grouped", True, shared_attr=_DEEPSEEK_SHARED,
                        profiler="GLM-4-MoE (DeepSeek-V3 routing)"),
    "dots1": FamilyFacts(_first_k_dense, _deepseek_shared, "sigmoid_grouped", True, shared_attr=_DEEPSEEK_SHARED),
    "llama4_text": FamilyFacts(_interleave_step, _llama4_shared, "sigmoid_topk", False, shared_attr=_QWEN_SHARED),
}
GENERIC = FamilyFacts(_generic_layers, _generic_shared, "softmax_topk", None)
ROUTER_KIND_BY_SCORING = {"sigmoid": "sigmoid_grouped", "softmax": "softmax_topk"}


def _text_config(config: dict[str, Any]) -> dict[str, Any]:
    """Multimodal wrappers (Qwen3.5-MoE, Qwen3-VL-MoE, Llama 4) keep the language model in ``text_config``."""
    inner = config.get("text_config")
    if isinstance(inner, dict) and _first(config, EXPERT_KEYS) is None and _first(inner, EXPERT_KEYS) is not None:
        return {"model_type": f"{config.get('model_type', '')}_text", **inner}
    return config


def moe_layout_from_config(config: dict[str, Any]) -> MoeLayout | None:
    """The MoE layout described by a ``config.json`` dict, or ``None`` for a dense model."""
    config = _text_config(config)
    experts = _first(config, EXPERT_KEYS)
    num_layers = _first(config, LAYER_KEYS)
    if not experts or int(experts) <= 1 or num_layers is None:
        return None
    family_name = str(config.get("model_type") or "unknown")
    family = FAMILIES.get(family_name, GENERIC)
    top_k = int(_first(config, TOP_K_KEYS) or 1)
    shared, shared_size = family.shared(config)
    width = config.get("moe_intermediate_size") or config.get("intermediate_size")
    norm = config.get("norm_topk_prob", family.norm_topk_default)
    router_kind = ROUTER_KIND_BY_SCORING.get(str(config.get("scoring_func")), family.router_kind)
    if router_kind == "sigmoid_grouped" and (config.get("n_group") or 1) <= 1:
        router_kind = "sigmoid_topk"
    extra = {k: config[k] for k in ("n_group", "topk_group", "routed_scaling_factor", "topk_method", "router_aux_loss_coef")
             if config.get(k) is not None}
    return MoeLayout(
        family=family_name,
        num_layers=int(num_layers),
        moe_layers=family.layers(config, int(num_layers)),
        routed_experts=int(experts),
        top_k=top_k,
        shared_experts=shared,
        shared_intermediate_size=shared_size,
        expert_intermediate_size=int(width) if width else None,
        router_kind=router_kind,
        norm_topk_prob=None if norm is None else bool(norm),
        extra=extra,
    )
