"""Expert merging as published for MoE compression (M-SMoE, HC-SMoE), written in the checkpoint's own layout.

- ``msmoe`` (M-SMoE, Li et al. 2023): per layer the most used experts on the calibration tokens are the
  dominant ones, one per group; every other expert joins the dominant expert whose router-logit column is
  most similar (cosine over the calibration tokens).
- ``hcsmoe`` (HC-SMoE, Chen et al. 2024): hierarchical clustering (average linkage, Euclidean distance)
  of the experts' average outputs over all calibration tokens, cut into the wanted number of groups.

Both average each group's weights by usage frequency. Neither aligns neurons before averaging (M-SMoE's
permutation alignment is not done), so the merge is plain frequency-weighted averaging.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from safetensors import safe_open

from harness.atomic import atomic_write_text
from harness.compress._checkpoint import MoeCheckpoint, open_checkpoint
from harness.compress._importance import calib_info, check_calib
from harness.compress._prune import top_k_of
from harness.compress._write import Edit, output_dir, write_edited
from harness.errors import UserError

if TYPE_CHECKING:
    from harness.profiler.merging import MergeStatistics

METHODS: tuple[str, ...] = ("msmoe", "hcsmoe")
MERGING_VERSION = 1
LAYOUT = {
    "kind": "shared-weights",
    "what": "every expert slot and router row is kept; the experts of one group all hold the same (merged) "
            "tensors, bit-identical to each other; experts alone in their group are untouched",
    "why": "the checkpoint keeps its config, tensor names and shapes, so transformers, mlx-lm and serving "
           "engines load it unchanged and routing is the baseline's router: a token sent to any member of a "
           "group gets the merged expert (two members in one token's top-k add their gate weights). "
           "Dropping the duplicate slots would change num_experts and the router's shape, and with it the "
           "architecture every loader and the gate's audit compare against; it saves memory, not behaviour.",
}
SIMILARITY = {
    "msmoe": "cosine similarity of router-logit columns over the calibration tokens",
    "hcsmoe": "Euclidean distance between the experts' mean outputs over all calibration tokens, average linkage",
}


def n_groups_for(fraction: float, n_experts: int) -> int:
    """Groups per layer when ``fraction`` of ``n_experts`` are removed by merging (0.25 of 8 -> 6)."""
    removed = round(fraction * n_experts)
    if removed == 0:
        raise UserError(f"--fraction {fraction} merges away 0 of {n_experts} experts per layer",
                        f"use --fraction >= {0.5 / n_experts:.3g}")
    if removed >= n_experts:
        raise UserError(f"--fraction {fraction} merges away all {n_experts} experts per layer",
                        f"use --fraction <= {(n_experts - 1) / n_experts:.3g}")
    return n_experts - removed


def msmoe_groups(usage: np.ndarray, similarity: np.ndarray, n_groups: int) -> list[list[int]]:
    """M-SMoE grouping of one layer: the ``n_groups`` most used experts lead; each other joins its most similar leader.

    Ties: the lower expert index wins (for dominance and for the leader).
    """
    n_experts = len(usage)
    order = np.lexsort((np.arange(n_experts), -np.asarray(usage, dtype=np.float64)))
    leaders = sorted(int(e) for e in order[:n_groups])
    groups = {leader: [leader] for leader in leaders}
    for expert in (int(e) for e in order[n_groups:]):
        best = max(leaders, key=lambda leader: (similarity[expert, leader], -leader))
        groups[best].append(expert)
    return sorted(sorted(g) for g in groups.values())


def hcsmoe_groups(features: np.ndarray, n_groups: int) -> list[list[int]]:
    """HC-SMoE grouping of one layer: average-linkage clustering of ``features`` [E, H] cut into ``n_groups``."""
    from scipy.cluster.hierarchy import cut_tree, linkage

    if not np.isfinite(features).all():
        raise ValueError("expert features hold non-finite values")
    tree = linkage(np.asarray(features, dtype=np.float64), method="average", metric="euclidean")
    labels = cut_tree(tree, n_clusters=n_groups).ravel()
    groups: dict[int, list[int]] = {}
    for expert, label in enumerate(labels.tolist()):
        groups.setdefault(int(label), []).append(expert)
    return sorted(groups.values())


def merge_weights(tensors: list[torch.Tensor], usage: list[float]) -> torch.Tensor:
    """Usage-weighted average of one tensor across a group (uniform when no member was used), in float32, cast back."""
    total = float(sum(usage))
    weights = [u / total for u in usage] if total > 0 else [1.0 / len(tensors)] * len(tensors)
    merged = sum(w * t.to(torch.float32) for w, t in zip(weights, tensors, strict=True))
    assert isinstance(merged, torch.Tensor)
    return merged.to(tensors[0].dtype)


def _replace_with(merged: torch.Tensor) -> Edit:
    return lambda _tensor: merged.clone()


def _suffix(key: str, expert: int) -> str:
    return key.split(f"experts.{expert}.", 1)[1]


def merge_edits(ckpt: MoeCheckpoint, groups: list[list[list[int]]], usage: np.ndarray) -> dict[str, Edit]:
    """Tensor edits: every tensor of every member of a multi-expert group becomes the group's merged tensor."""
    edits: dict[str, Edit] = {}
    with ExitStack() as stack:
        handles = {name: stack.enter_context(safe_open(str(ckpt.path / name), framework="pt")) for name in ckpt.files}
        for layer, layer_groups, layer_usage in zip(ckpt.layers, groups, usage, strict=True):
            _merge_layer(ckpt, layer, layer_groups, layer_usage, lambda key: handles[ckpt.key_file[key]].get_tensor(key), edits)
    return edits


def _merge_layer(ckpt: MoeCheckpoint, layer: int, layer_groups: list[list[int]], layer_usage: np.ndarray,
                 read: Callable[[str], torch.Tensor], edits: dict[str, Edit]) -> None:
    for group in (g for g in layer_groups if len(g) > 1):
        keys = {e: {_suffix(k, e): k for k in ckpt.experts[(layer, e)]} for e in group}
        suffixes = set(keys[group[0]])
        if any(set(k) != suffixes for k in keys.values()):
            raise UserError(f"layer {layer}: experts {group} do not hold the same tensors", "pass an unmodified MoE checkpoint")
        for suffix in sorted(suffixes):
            parts = [read(keys[e][suffix]) for e in group]
            if len({(tuple(p.shape), p.dtype) for p in parts}) != 1:
                raise UserError(f"layer {layer}: experts {group} differ in the shape or dtype of {suffix}",
                                "merging needs experts of one shape")
            merged = merge_weights(parts, [float(layer_usage[e]) for e in group])
            for expert in group:
                edits[keys[expert][suffix]] = _replace_with(merged)


def merge(
    model: str | Path,
    out: str | Path,
    *,
    fraction: float,
    method: str,
    calib: str | Path | None,
    max_tokens: int = 512,
    stats: MergeStatistics | None = None,
) -> Path:
    """Merge ``fraction`` of the routed experts of the checkpoint at ``model`` away into ``out``, per layer.

    Writes the checkpoint (same layout: each group's experts share the merged weights, router rows kept)
    plus ``merging.json``: the method, the calibration file and its sha256, and per layer the groups,
    the usage frequencies and the similarities the groups came from. ``stats`` (``merge_statistics`` on
    ``calib`` with ``max_tokens``) skips the calibration pass, to reuse one pass for several merges.
    """
    if not 0.0 < fraction < 1.0:
        raise UserError(f"--fraction {fraction} is outside (0, 1)", "pass e.g. --fraction 0.25 to merge a quarter of the experts away")
    if method not in METHODS:
        raise UserError(f"unknown merging method {method!r}", f"use one of {', '.join(METHODS)}")
    ckpt = open_checkpoint(model)
    n_groups = n_groups_for(fraction, ckpt.num_experts)
    calib_path = check_calib(calib, required=True)
    assert calib_path is not None
    stats = stats or _statistics(ckpt, calib_path, max_tokens)
    if stats.profile.layer_indices() != ckpt.layers or stats.profile.num_experts != ckpt.num_experts:
        raise ValueError(f"statistics cover layers {stats.profile.layer_indices()} x {stats.profile.num_experts} "
                         f"experts, checkpoint has {ckpt.layers} x {ckpt.num_experts}")
    usage = stats.usage()
    if method == "msmoe":
        similarity = stats.logit_similarity()
        groups = [msmoe_groups(u, s, n_groups) for u, s in zip(usage, similarity, strict=True)]
        measure = [np.round(s, 6).tolist() for s in similarity]
    else:
        means = stats.mean_outputs()
        groups = [hcsmoe_groups(m, n_groups) for m in means]
        from scipy.spatial.distance import pdist, squareform

        measure = [np.round(squareform(pdist(m)), 6).tolist() for m in means]
    record = {
        "merging_version": MERGING_VERSION,
        "source": str(ckpt.path),
        "method": method,
        "fraction": fraction,
        "num_experts": ckpt.num_experts,
        "top_k": top_k_of(ckpt.config),
        "groups_per_layer": n_groups,
        "merged_away_per_layer": ckpt.num_experts - n_groups,
        **calib_info(calib_path),
        "max_tokens": max_tokens,
        "calib_tokens": stats.n_tokens,
        "similarity": SIMILARITY[method],
        "weighting": "usage frequency: each member's top-k selections on the calibration tokens over the group's "
                     "total (uniform when no member was selected); float32 sum, cast to the tensor's dtype",
        "alignment": "none (no neuron permutation before averaging)",
        "layout": LAYOUT,
        "layers": [
            {
                "layer": layer,
                "router": ckpt.routers[layer][1] or ckpt.routers[layer][0],
                "groups": layer_groups,
                "merged": [g for g in layer_groups if len(g) > 1],
                "usage": [int(u) for u in layer_usage],
                "dominant": _dominant(layer_groups, layer_usage) if method == "msmoe" else None,
                "similarity" if method == "msmoe" else "distance": layer_measure,
            }
            for layer, layer_groups, layer_usage, layer_measure in zip(ckpt.layers, groups, usage, measure, strict=True)
        ],
    }
    with output_dir(ckpt, out) as tmp:
        write_edited(ckpt, tmp, merge_edits(ckpt, groups, usage))
        atomic_write_text(tmp / "merging.json", json.dumps(record, indent=1) + "\n")
    return Path(out)


def _dominant(groups: list[list[int]], usage: np.ndarray) -> list[int]:
    """Each group's most used expert (M-SMoE's leader; lower index on ties), in group order."""
    return [min(g, key=lambda e: (-int(usage[e]), e)) for g in groups]


def calibration_statistics(model: str | Path, calib: str | Path, *, max_tokens: int = 512) -> MergeStatistics:
    """One calibration pass of the checkpoint at ``model`` over ``calib`` for ``merge(stats=...)``."""
    ckpt = open_checkpoint(model)
    calib_path = check_calib(calib, required=True)
    assert calib_path is not None
    return _statistics(ckpt, calib_path, max_tokens)


def _statistics(ckpt: MoeCheckpoint, calib: Path, max_tokens: int) -> MergeStatistics:
    from harness.checkpoint import load_model_and_tokenizer, resolve_model
    from harness.profiler import merge_statistics
    from harness.prompts_io import read_prompts

    prompts = read_prompts(calib)
    model, tokenizer, _ = load_model_and_tokenizer(resolve_model(ckpt.path), dtype="float32", device="cpu")
    return merge_statistics(model, tokenizer, [p.text for p in prompts], max_tokens=max_tokens)
