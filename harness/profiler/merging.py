"""What expert merging needs from a calibration pass, measured in the profiler's one pass over the prompts.

Beside the profile (usage counts, ``profile_model``), per MoE layer:
- the Gram matrix of the router logits over the calibration tokens, whose normalised form is the cosine
  similarity between experts' router-logit columns (M-SMoE's expert similarity);
- the sum over *all* calibration tokens of every expert's own output (each expert run on each token,
  not only the routed ones), whose mean is HC-SMoE's expert representation.

Hooks only observe, as in ``hooks``: the model computes exactly what it computes without them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from harness.profiler.families import expert_outputs, find_moe_blocks
from harness.profiler.hooks import LayerCapture
from harness.profiler.profile import ExpertProfile, profile_model

__all__ = ["MergeStatistics", "merge_statistics"]


@dataclass
class MergeStatistics:
    """Calibration statistics for merging, one row per MoE layer in ``profile.layers`` order.

    Attributes:
        profile: the profiler's usage profile of the same pass (``counts`` = usage frequency).
        logit_gram: float64 [L, E, E], sum over tokens of ``logit_i * logit_j``.
        output_sum: float64 [L, E, H], sum over all tokens of each expert's own (ungated) output.
        n_tokens: calibration tokens seen by every layer.
    """

    profile: ExpertProfile
    logit_gram: np.ndarray
    output_sum: np.ndarray
    n_tokens: int

    def usage(self) -> np.ndarray:
        """int64 [L, E]: top-k selections per expert (the profiler's ``frequency``)."""
        return np.stack([layer.counts for layer in self.profile.layers]).astype(np.int64)

    def logit_similarity(self) -> np.ndarray:
        """float64 [L, E, E]: cosine similarity of the experts' router-logit columns over the tokens."""
        diag = np.sqrt(np.einsum("lee->le", self.logit_gram))
        denom = diag[:, :, None] * diag[:, None, :]
        similarity: np.ndarray = np.divide(self.logit_gram, denom, out=np.zeros_like(self.logit_gram), where=denom > 0)
        return similarity

    def mean_outputs(self) -> np.ndarray:
        """float64 [L, E, H]: each expert's average output over all calibration tokens."""
        return self.output_sum / max(self.n_tokens, 1)


def merge_statistics(
    model: nn.Module, tokenizer: Any, texts: Sequence[str], *, max_tokens: int = 512, progress: bool = False
) -> MergeStatistics:
    """One profiler pass over ``texts`` that also accumulates router-logit Gram matrices and mean expert outputs.

    Running every expert on every token costs ``num_experts / top_k`` times the routed expert compute.
    """
    blocks = find_moe_blocks(model)
    n_experts = blocks[0].num_experts
    gram = np.zeros((len(blocks), n_experts, n_experts))
    sums: list[np.ndarray | None] = [None] * len(blocks)
    seen = np.zeros(len(blocks), dtype=np.int64)

    def observe(captures: list[LayerCapture]) -> None:
        for pos, cap in enumerate(captures):
            logits = cap.logits.double()
            gram[pos] += (logits.T @ logits).numpy()

    def outputs_hook(pos: int):  # type: ignore[no-untyped-def]
        def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: torch.Tensor) -> None:
            hidden = [*args, *kwargs.values()][0].detach()
            tokens = hidden.reshape(-1, hidden.shape[-1])
            every = torch.arange(n_experts, device=tokens.device).expand(tokens.shape[0], n_experts)
            with torch.no_grad():
                total = expert_outputs(module, tokens, every).double().sum(dim=0).cpu().numpy()  # [E, H]
            sums[pos] = total if sums[pos] is None else sums[pos] + total
            seen[pos] += tokens.shape[0]

        return hook

    handles = [block.experts.register_forward_hook(outputs_hook(pos), with_kwargs=True) for pos, block in enumerate(blocks)]
    try:
        profile = profile_model(model, tokenizer, texts, max_tokens=max_tokens, progress=progress,
                                expert_norms=False, observe=observe)
    finally:
        for handle in handles:
            handle.remove()
    if any(s is None for s in sums) or len(set(seen.tolist())) != 1:
        raise RuntimeError(f"experts modules ran on differing token counts {seen.tolist()}")
    output_sum = np.stack([s for s in sums if s is not None])
    return MergeStatistics(profile=profile, logit_gram=gram, output_sum=output_sum, n_tokens=int(seen[0]))
