"""Profile which experts an MoE model uses, and how much each matters, over a set of prompts.

One pass over the prompts (one sequence per forward, so no padding token is ever counted) gives per
layer and expert: selection counts, routing-weight mass, soft counts, EAN and REAP, plus per-prompt
counts that the dead-expert curve and the per-domain breakdown are computed from.

Importance criteria (what pruning ranks experts by):
- frequency: number of tokens routed to the expert (top-k selections).
- soft: summed routing probability over *all* tokens (softmax over all experts; sigmoid families
  renormalised), so experts just outside the top-k still get credit.
- ean: expert activation norm, sum over routed tokens of ||expert output||.
- reap: mean over routed tokens of gate weight x ||expert output|| (0 for an expert never routed to).
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from harness.errors import UserError
from harness.profiler.hooks import LayerCapture, RouteRecorder
from harness.profiler.stats import layer_stats

__all__ = ["CRITERIA", "Criterion", "ExpertProfile", "LayerProfile", "profile_model"]

Criterion = Literal["frequency", "soft", "ean", "reap"]
CRITERIA: tuple[str, ...] = ("frequency", "soft", "ean", "reap")
SCHEMA_VERSION = 1


@dataclass
class LayerProfile:
    """Per-expert accumulators for one MoE layer (arrays of length n_experts unless noted)."""

    layer_index: int
    module_name: str
    counts: np.ndarray  # int64: top-k selections
    weight_mass: np.ndarray  # float64: summed routing weights of the selections
    soft: np.ndarray  # float64: summed routing probability over all tokens
    ean: np.ndarray  # float64: summed ||expert output|| over routed tokens
    reap: np.ndarray  # float64: mean gate weight x ||expert output|| over routed tokens
    per_prompt_counts: np.ndarray  # int32 [n_prompts, n_experts]

    def to_json(self) -> dict[str, Any]:
        return {
            "layer_index": self.layer_index,
            "module_name": self.module_name,
            "counts": self.counts.tolist(),
            "weight_mass": self.weight_mass.tolist(),
            "soft": self.soft.tolist(),
            "ean": self.ean.tolist(),
            "reap": self.reap.tolist(),
            "per_prompt_counts": self.per_prompt_counts.tolist(),
            "stats": layer_stats(self.counts),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LayerProfile:
        return cls(
            layer_index=int(data["layer_index"]),
            module_name=str(data["module_name"]),
            counts=np.asarray(data["counts"], dtype=np.int64),
            weight_mass=np.asarray(data["weight_mass"], dtype=np.float64),
            soft=np.asarray(data["soft"], dtype=np.float64),
            ean=np.asarray(data["ean"], dtype=np.float64),
            reap=np.asarray(data["reap"], dtype=np.float64),
            per_prompt_counts=np.asarray(data["per_prompt_counts"], dtype=np.int32),
        )


@dataclass
class ExpertProfile:
    """Expert usage and importance of one model over one prompt set."""

    model_type: str
    family: str
    num_experts: int
    top_k: int
    has_shared_expert: bool
    layers: list[LayerProfile]
    n_prompts: int
    n_tokens: int
    tokens_per_prompt: list[int]
    domains: list[str | None] = field(default_factory=list)
    max_tokens: int = 512

    def importance(self, criterion: Criterion) -> np.ndarray:
        """Per-expert importance, float64 [n_moe_layers, n_experts]; higher means more important."""
        attr = {"frequency": "counts", "soft": "soft", "ean": "ean", "reap": "reap"}.get(criterion)
        if attr is None:
            raise UserError(f"unknown importance criterion {criterion!r}", f"use one of {', '.join(CRITERIA)}")
        return np.stack([np.asarray(getattr(layer, attr), dtype=np.float64) for layer in self.layers])

    def presence(self) -> np.ndarray:
        """Bool [n_prompts, n_moe_layers, n_experts]: did prompt p route any token to expert e of layer l."""
        return np.stack([layer.per_prompt_counts > 0 for layer in self.layers], axis=1)

    def layer_indices(self) -> list[int]:
        return [layer.layer_index for layer in self.layers]

    def summary(self) -> dict[str, Any]:
        """Headline numbers: per-layer stats, their overall aggregate, and the per-domain breakdown."""
        per_layer = [{"layer_index": lp.layer_index, **layer_stats(lp.counts)} for lp in self.layers]
        dead_total = sum(int(row["dead"]) for row in per_layer)
        overall = {
            "gini_mean": float(np.mean([row["gini"] for row in per_layer])),
            "entropy_ratio_mean": float(np.mean([row["entropy_ratio"] for row in per_layer])),
            "entropy_ratio_min": float(np.min([row["entropy_ratio"] for row in per_layer])),
            "top10_share_mean": float(np.mean([row["top10_share"] for row in per_layer])),
            "top10pct_share_mean": float(np.mean([row["top10pct_share"] for row in per_layer])),
            "dead": dead_total,
            "dead_fraction": dead_total / (len(self.layers) * self.num_experts),
        }
        return {
            "model_type": self.model_type,
            "family": self.family,
            "num_experts": self.num_experts,
            "top_k": self.top_k,
            "has_shared_expert": self.has_shared_expert,
            "n_moe_layers": len(self.layers),
            "n_prompts": self.n_prompts,
            "n_tokens": self.n_tokens,
            "overall": overall,
            "layers": per_layer,
            "domains": self.domain_summary(),
        }

    def domain_summary(self) -> dict[str, dict[str, Any]]:
        """Per-domain usage stats, and the experts most specific to each domain (empty without domains)."""
        labels = [d for d in self.domains if d is not None]
        if not labels:
            return {}
        out: dict[str, dict[str, Any]] = {}
        domain_arr = np.asarray([d if d is not None else "" for d in self.domains], dtype=object)
        all_counts = np.stack([lp.counts for lp in self.layers]).astype(np.float64)  # [L, E]
        all_share = all_counts / max(all_counts.sum(), 1.0)
        for name in sorted(set(labels)):
            rows = np.flatnonzero(domain_arr == name)
            counts = np.stack([lp.per_prompt_counts[rows].sum(axis=0) for lp in self.layers]).astype(np.float64)
            others = all_counts - counts
            stats = [layer_stats(c) for c in counts]
            share = counts / max(counts.sum(), 1.0)
            lift = np.where(all_share > 0, share / np.where(all_share > 0, all_share, 1.0), 0.0)
            top = np.argsort(lift, axis=None)[::-1][:5]
            out[name] = {
                "n_prompts": len(rows),
                "n_tokens": int(sum(self.tokens_per_prompt[i] for i in rows)),
                "entropy_ratio_mean": float(np.mean([s["entropy_ratio"] for s in stats])),
                "gini_mean": float(np.mean([s["gini"] for s in stats])),
                "dead_fraction": float(np.mean([s["dead_fraction"] for s in stats])),
                "exclusive_experts": int(((counts > 0) & (others == 0)).sum()),
                "most_specific": [
                    {
                        "layer_index": self.layers[int(i) // self.num_experts].layer_index,
                        "expert": int(i) % self.num_experts,
                        "lift": float(lift.flat[i]),
                    }
                    for i in top
                    if lift.flat[i] > 0
                ],
            }
        return out

    def to_json(self) -> dict[str, Any]:
        """Everything needed to rebuild the profile (``from_json``) plus its summary, JSON-serialisable."""
        return {
            "schema_version": SCHEMA_VERSION,
            "model_type": self.model_type,
            "family": self.family,
            "num_experts": self.num_experts,
            "top_k": self.top_k,
            "has_shared_expert": self.has_shared_expert,
            "n_prompts": self.n_prompts,
            "n_tokens": self.n_tokens,
            "max_tokens": self.max_tokens,
            "tokens_per_prompt": list(self.tokens_per_prompt),
            "domains": list(self.domains),
            "summary": self.summary(),
            "layers": [layer.to_json() for layer in self.layers],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ExpertProfile:
        if data.get("schema_version") != SCHEMA_VERSION:
            raise UserError(
                f"expert profile schema_version {data.get('schema_version')!r} is not {SCHEMA_VERSION}",
                "re-run `moegate profile` with this version of moegate",
            )
        return cls(
            model_type=str(data["model_type"]),
            family=str(data["family"]),
            num_experts=int(data["num_experts"]),
            top_k=int(data["top_k"]),
            has_shared_expert=bool(data["has_shared_expert"]),
            layers=[LayerProfile.from_json(layer) for layer in data["layers"]],
            n_prompts=int(data["n_prompts"]),
            n_tokens=int(data["n_tokens"]),
            tokens_per_prompt=[int(t) for t in data["tokens_per_prompt"]],
            domains=list(data["domains"]),
            max_tokens=int(data.get("max_tokens", 512)),
        )


class _Accumulator:
    """Running per-layer sums while prompts stream through the model."""

    def __init__(self, n_layers: int, n_experts: int, n_prompts: int) -> None:
        self.n_experts = n_experts
        self.counts = np.zeros((n_layers, n_experts), dtype=np.int64)
        self.weight_mass = np.zeros((n_layers, n_experts))
        self.soft = np.zeros((n_layers, n_experts))
        self.ean = np.zeros((n_layers, n_experts))
        self.reap_sum = np.zeros((n_layers, n_experts))
        self.per_prompt = np.zeros((n_layers, n_prompts, n_experts), dtype=np.int32)

    def add(
        self, prompt: int, captures: list[LayerCapture], probabilities: Callable[[torch.Tensor], torch.Tensor]
    ) -> None:
        e = self.n_experts
        for layer, cap in enumerate(captures):
            ids = cap.ids.reshape(-1).numpy()
            weights = cap.weights.reshape(-1).double().numpy()
            counts = np.bincount(ids, minlength=e)
            self.counts[layer] += counts
            self.per_prompt[layer, prompt] += counts.astype(np.int32)
            self.weight_mass[layer] += np.bincount(ids, weights=weights, minlength=e)
            self.soft[layer] += probabilities(cap.logits).double().sum(dim=0).numpy()
            if cap.norms is not None:
                norms = cap.norms.reshape(-1).double().numpy()
                self.ean[layer] += np.bincount(ids, weights=norms, minlength=e)
                self.reap_sum[layer] += np.bincount(ids, weights=weights * norms, minlength=e)


@contextlib.contextmanager
def _progress_bar(enabled: bool, total: int) -> Iterator[Callable[[], None]]:
    """A transient rich progress bar on stderr; a no-op when disabled."""
    if not enabled:
        yield lambda: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (TextColumn("profiling experts"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task("profile", total=total)
        yield lambda: bar.advance(task)


def profile_model(
    model: nn.Module,
    tokenizer: Any,
    texts: Sequence[str],
    *,
    domains: Sequence[str | None] | None = None,
    max_tokens: int = 512,
    progress: bool = True,
    expert_norms: bool = True,
    observe: Callable[[list[LayerCapture]], None] | None = None,
) -> ExpertProfile:
    """Run every text through ``model`` (truncated to ``max_tokens`` tokens) and profile its experts.

    Args:
        model: a transformers MoE causal LM of a family in ``harness.profiler.families.FAMILIES``.
        tokenizer: its tokenizer.
        texts: prompts, one forward each.
        domains: optional domain label per text, for the per-domain breakdown.
        max_tokens: tokens kept per prompt.
        progress: show a rich progress bar on stderr.
        expert_norms: also compute EAN/REAP (re-runs each routed expert once more); False leaves them 0.
        observe: called with each forward's captures (one per MoE block, in layer order), for statistics
            the profile does not keep (``harness.profiler.merging`` accumulates router-logit similarity).

    Raises:
        UserError: no texts, bad ``max_tokens``, or a model without MoE layers.
    """
    if not texts:
        raise UserError("no prompts to profile", "pass at least one prompt")
    if max_tokens < 1:
        raise UserError(f"max_tokens must be >= 1, got {max_tokens}", "pass a positive number of tokens")
    if domains is not None and len(domains) != len(texts):
        raise ValueError(f"{len(domains)} domains for {len(texts)} texts")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    recorder = RouteRecorder(model, expert_norms=expert_norms)
    blocks = recorder.blocks
    n_experts = {b.num_experts for b in blocks}
    top_ks = {b.top_k for b in blocks}
    if len(n_experts) != 1 or len(top_ks) != 1:
        raise UserError("MoE layers differ in expert count or top-k", "profiling such models is not supported")
    acc = _Accumulator(len(blocks), blocks[0].num_experts, len(texts))
    tokens_per_prompt: list[int] = []
    # only the routes matter: skip the vocabulary projection for all but the last position
    extra = {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}
    try:
        with recorder, torch.inference_mode(), _progress_bar(progress, len(texts)) as advance:
            for i, text in enumerate(texts):
                enc = tokenizer(text, return_tensors="pt", truncation=True, max_length=max_tokens)
                input_ids = enc["input_ids"][:, :max_tokens]
                tokens_per_prompt.append(int(input_ids.shape[1]))
                if input_ids.shape[1] > 0:
                    model(input_ids=input_ids.to(device), use_cache=False, **extra)
                    captures = recorder.take()
                    acc.add(i, captures, recorder.family.probabilities)
                    if observe is not None:
                        observe(captures)
                advance()
    finally:
        model.train(was_training)
    with np.errstate(divide="ignore", invalid="ignore"):
        reap = np.where(acc.counts > 0, acc.reap_sum / np.maximum(acc.counts, 1), 0.0)
    layers = [
        LayerProfile(
            layer_index=b.layer_index,
            module_name=b.module_name,
            counts=acc.counts[j],
            weight_mass=acc.weight_mass[j],
            soft=acc.soft[j],
            ean=acc.ean[j],
            reap=reap[j],
            per_prompt_counts=acc.per_prompt[j],
        )
        for j, b in enumerate(blocks)
    ]
    return ExpertProfile(
        model_type=str(model.config.model_type),
        family=recorder.family.name,
        num_experts=blocks[0].num_experts,
        top_k=blocks[0].top_k,
        has_shared_expert=blocks[0].has_shared_expert,
        layers=layers,
        n_prompts=len(texts),
        n_tokens=sum(tokens_per_prompt),
        tokens_per_prompt=tokens_per_prompt,
        domains=list(domains) if domains is not None else [None] * len(texts),
        max_tokens=max_tokens,
    )
