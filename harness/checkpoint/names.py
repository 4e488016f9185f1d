"""The one table of MoE tensor and module names: where experts, routers and shared experts live.

Families differ in the block's name (``mlp``, ``block_sparse_moe``) but agree on the rest, in
transformers' per-expert layout (``...layers.3.mlp.experts.5.down_proj.weight``), its fused layout
(``...layers.3.mlp.experts.gate_up_proj``, one ``[E, ...]`` tensor) and GGUF's (``blk.3.ffn_up_exps``).
Routers are the block's ``gate`` or ``router``; shared experts (``shared_expert``, ``shared_experts``,
``shared_expert_gate``) are never routed experts. Backends, inspect, compress, info and the profiler
all read names through this module.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

EXPERTS_ATTR = "experts"
"""The MoE block's attribute holding the routed experts (a ModuleList or a fused module)."""
ROUTER_ATTRS = ("gate", "router")
"""The MoE block's attribute holding the router, by family (``router``: GPT-OSS)."""
SHARED_MARK = "shared_expert"
"""Substring of every shared-expert module name: ``shared_expert``, ``shared_experts``, ``shared_expert_gate``."""
ROUTER_PARAMS = ("weight", "bias", "e_score_correction_bias")

_LAYER = r"(?:^|\.)layers\.(?P<layer>\d+)\."
_INNER = r"(?P<inner>(?:\w+\.)*?)"
PER_EXPERT = re.compile(_LAYER + _INNER + EXPERTS_ATTR + r"\.(?P<expert>\d+)\.(?P<rest>.+)$")
"""One expert's tensor: ``mlp.experts.3.down_proj.weight`` (``shared_experts.0`` does not match)."""
FUSED_EXPERTS = re.compile(_LAYER + _INNER + EXPERTS_ATTR + r"\.[A-Za-z_]+(?:\.weight)?$")
"""Stacked ``[E, ...]`` expert tensors (transformers 5 ``experts.gate_up_proj``, GPT-OSS ``experts.down_proj_bias``)."""
ROUTER = re.compile(_LAYER + _INNER + "(?:" + "|".join(ROUTER_ATTRS) + r")\.(?:" + "|".join(ROUTER_PARAMS) + ")$")
"""Router logits (``mlp.gate.weight``, ``block_sparse_moe.gate.weight``, ``mlp.router.bias``)."""
GGUF_EXPERTS = re.compile(r"ffn_(?:gate|up|down)_exps")
"""GGUF's stacked routed-expert tensors (``blk.3.ffn_up_exps.weight``)."""
_LAYER_INDEX = re.compile(r"(?:^|\.)layers\.(\d+)(?:\.|$)")

Role = Literal["expert", "fused_experts", "router", "other"]


@dataclass(frozen=True)
class TensorName:
    """What a tensor (or module) name says about its place in an MoE model."""

    role: Role
    layer: int | None = None
    expert: int | None = None
    block: str | None = None
    """The MoE block's own name (``model.layers.3.mlp``), for experts and routers."""


def classify(name: str) -> TensorName:
    """Role, layer, expert and MoE block of a tensor name; shared experts count as ``other``."""
    if SHARED_MARK in name:
        return TensorName("other")
    for role, pattern in (("expert", PER_EXPERT), ("fused_experts", FUSED_EXPERTS), ("router", ROUTER)):
        match = pattern.search(name)
        if match:
            block = name[: match.end("inner")].rstrip(".")
            expert = int(match["expert"]) if role == "expert" else None
            return TensorName(role, int(match["layer"]), expert, block)  # type: ignore[arg-type]
    return TensorName("other")


def is_routed_expert(name: str) -> bool:
    """A routed expert's weight in any layout (per-expert, fused or GGUF); never a shared expert or a router."""
    return classify(name).role in ("expert", "fused_experts") or (SHARED_MARK not in name and bool(GGUF_EXPERTS.search(name)))


def layer_index(name: str) -> int | None:
    """The decoder layer a module or tensor name belongs to (``model.layers.7.mlp`` -> 7)."""
    match = _LAYER_INDEX.search(name)
    return int(match.group(1)) if match else None
