"""One adapter table for the transformers (5.x) MoE families the profiler can see inside.

In transformers 5 every supported family has the same shape, which is what keeps this table small:
a sparse-MoE block owns a *router* module (``gate`` or ``router``) that returns
``(router_logits, top_k_weights, top_k_index)`` and a fused *experts* module called as
``experts(hidden_states, top_k_index, top_k_weights)``. What differs per family is the attribute
names, how router logits become probabilities (softmax; DeepSeek-V3 style: sigmoid plus a
selection-only ``e_score_correction_bias`` and group-limited top-k, done inside the router), and
whether an always-on shared expert sits beside the routed ones. Families are chosen by
``config.model_type`` (never by sniffing class names).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from harness.checkpoint.layout import FAMILIES as LAYOUT_FAMILIES
from harness.checkpoint.layout import FamilyFacts
from harness.checkpoint.names import EXPERTS_ATTR, ROUTER_ATTRS, layer_index
from harness.errors import UserError

__all__ = ["FAMILIES", "Family", "MoeBlock", "expert_outputs", "family_for", "find_moe_blocks"]


@dataclass(frozen=True)
class Family:
    """How to find and read the MoE blocks of one transformers model family.

    Attributes:
        name: human label for reports.
        router_attr: attribute of the MoE block holding the router module.
        experts_attr: attribute of the MoE block holding the fused experts module.
        score_fn: how router logits become per-expert probabilities for the soft count.
            "softmax" over all experts; "sigmoid" scores are renormalised to sum to 1 per token so
            every token contributes the same mass whatever the family.
        shared_attrs: attributes of the block holding an always-on shared expert (may be empty).
        logits_at / weights_at / index_at: positions in the router's output tuple.
    """

    name: str
    router_attr: str = ROUTER_ATTRS[0]
    experts_attr: str = EXPERTS_ATTR
    score_fn: Literal["softmax", "sigmoid"] = "softmax"
    shared_attrs: tuple[str, ...] = ()
    logits_at: int = 0
    weights_at: int = 1
    index_at: int = 2

    def read_router(self, output: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(logits [T,E], top-k weights [T,k], top-k ids [T,k]) from a router's forward output."""
        if not isinstance(output, tuple) or len(output) <= max(self.logits_at, self.weights_at, self.index_at):
            raise TypeError(f"{self.name} router returned {type(output).__name__}, expected a 3-tuple")
        return output[self.logits_at], output[self.weights_at], output[self.index_at]

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """Per-token probability over all experts [T,E] (float32), used for the soft count."""
        logits = logits.float()
        if self.score_fn == "softmax":
            return torch.softmax(logits, dim=-1)
        scores = torch.sigmoid(logits)
        return scores / scores.sum(dim=-1, keepdim=True).clamp_min(1e-20)


def _adapter(row: FamilyFacts, label: str) -> Family:
    sigmoid = row.router_kind.startswith("sigmoid")
    return Family(label, router_attr=row.router_attr, experts_attr=EXPERTS_ATTR, score_fn="sigmoid" if sigmoid else "softmax",
                  shared_attrs=(row.shared_attr,) if row.shared_attr else ())


# model_type -> adapter, from the checkpoint layer's family table (its rows with a profiler label; add a
# label there only with a test in tests/test_profiler_families.py).
FAMILIES: dict[str, Family] = {name: _adapter(row, row.profiler) for name, row in LAYOUT_FAMILIES.items() if row.profiler}


def family_for(model: nn.Module) -> Family:
    """The adapter for ``model`` by its ``config.model_type``; UserError when it is not a known MoE family."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    family = FAMILIES.get(str(model_type))
    if family is None:
        raise UserError(
            f"model_type {model_type!r} has no MoE layers moegate can profile",
            f"use a Mixture-of-Experts checkpoint of a supported family ({', '.join(sorted(FAMILIES))})",
        )
    return family


@dataclass(frozen=True)
class MoeBlock:
    """One sparse-MoE block found in a model."""

    layer_index: int
    module_name: str
    router: nn.Module
    experts: nn.Module
    num_experts: int
    top_k: int
    has_shared_expert: bool


def find_moe_blocks(model: nn.Module, family: Family | None = None) -> list[MoeBlock]:
    """All sparse-MoE blocks of ``model`` in layer order (dense layers of hybrid models are skipped).

    Raises:
        UserError: the model has no MoE block (e.g. a dense checkpoint with an MoE model_type).
    """
    family = family or family_for(model)
    blocks: list[MoeBlock] = []
    for name, module in model.named_modules():
        router = getattr(module, family.router_attr, None)
        experts = getattr(module, family.experts_attr, None)
        if not isinstance(router, nn.Module) or not isinstance(experts, nn.Module):
            continue
        if not hasattr(experts, "num_experts") or not hasattr(router, "top_k"):
            continue
        index = layer_index(name)
        blocks.append(
            MoeBlock(
                layer_index=len(blocks) if index is None else index,
                module_name=name,
                router=router,
                experts=experts,
                num_experts=int(experts.num_experts),
                top_k=int(router.top_k),
                has_shared_expert=any(isinstance(getattr(module, a, None), nn.Module) for a in family.shared_attrs),
            )
        )
    if not blocks:
        raise UserError(
            f"model ({family.name}) has no MoE layers: no block with '{family.router_attr}' and '{family.experts_attr}'",
            "pass a Mixture-of-Experts checkpoint (a dense model has no experts to profile)",
        )
    blocks.sort(key=lambda b: b.layer_index)
    return blocks


def expert_outputs(experts: nn.Module, hidden_states: torch.Tensor, top_k_index: torch.Tensor) -> torch.Tensor:
    """Each routed expert's own (unweighted) output for every (token, slot) pair: [T, k, H].

    Runs the experts module's own forward (whatever kernel the model was set up with) on each token
    repeated k times, with one expert per row and routing weight 1, so the result is exactly what that
    expert contributes before gating. Calls ``forward`` directly so forward hooks do not fire again.
    """
    tokens, k = top_k_index.shape
    repeated = hidden_states.reshape(tokens, -1).repeat_interleave(k, dim=0)
    ids = top_k_index.reshape(-1, 1)
    ones = torch.ones(ids.shape, dtype=hidden_states.dtype, device=hidden_states.device)
    out = experts.forward(repeated, ids, ones)
    return out.reshape(tokens, k, -1)
