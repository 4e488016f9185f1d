"""Expert pruning as published for large MoE models: mask the router rows and/or zero the experts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from harness.atomic import atomic_write_text
from harness.compress._checkpoint import MoeCheckpoint, open_checkpoint
from harness.compress._importance import calib_info, check_calib, check_criterion, importance
from harness.compress._write import Edit, output_dir, write_edited
from harness.errors import UserError

Scope = Literal["layer", "global"]
Mode = Literal["mask", "zero", "mask+zero"]
MODES: tuple[str, ...] = ("mask", "zero", "mask+zero")
# The published recipe writes -1e9 into the pruned expert's router row. With a router *bias* (GPT-OSS-style)
# moegate writes it into the bias, which masks exactly. A bias-free router (Qwen2/3-MoE, Mixtral, OLMoE) has
# no exact static mask: the logit is row . x, so a -1e9 row excludes the expert only for tokens whose router
# input sums positive and hands it nearly all routing weight elsewhere. That is what the recipe does to such
# models (pruning.json says "mask_exact": false); mode "zero" removes an expert's contribution cleanly.
MASK_VALUE = -1e9


def top_k_of(config: dict) -> int:
    cfg = config.get("text_config", config)
    for key in ("num_experts_per_tok", "moe_top_k", "top_k", "num_experts_per_token"):
        if isinstance(cfg.get(key), int):
            return int(cfg[key])
    return 1


def select_experts(scores: np.ndarray, fraction: float, scope: Scope, keep_min: int) -> list[list[int]]:
    """Experts to prune per layer: the lowest-scoring ones, never leaving a layer below ``keep_min``.

    ``layer``: round(fraction * experts) in every layer. ``global``: round(fraction * all experts) chosen
    across layers by each expert's share of its layer's total score (so layers with larger raw scores,
    e.g. output norms, do not hide their weak experts).
    """
    n_layers, n_experts = scores.shape
    cap = n_experts - keep_min
    if scope == "layer":
        n = round(fraction * n_experts)
        if n == 0:
            raise UserError(f"--fraction {fraction} prunes 0 of {n_experts} experts per layer",
                            f"use --fraction >= {0.5 / n_experts:.3g} or --scope global")
        if n > cap:
            raise UserError(f"--fraction {fraction} prunes {n} of {n_experts} experts per layer, leaving fewer than top-k",
                            f"use --fraction <= {cap / n_experts:.3g}")
        return [sorted(np.argsort(row, kind="stable")[:n].tolist()) for row in scores]
    if scope != "global":
        raise UserError(f"unknown scope {scope!r}", "use --scope layer or --scope global")
    total = round(fraction * n_layers * n_experts)
    if total == 0:
        raise UserError(f"--fraction {fraction} prunes 0 of {n_layers * n_experts} experts",
                        "use a larger --fraction")
    if total > cap * n_layers:
        raise UserError(f"--fraction {fraction} would leave layers with fewer experts than top-k",
                        f"use --fraction <= {cap / n_experts:.3g}")
    sums = scores.sum(axis=1, keepdims=True)
    share = np.divide(scores, sums, out=np.zeros_like(scores, dtype=np.float64), where=sums > 0)
    order = np.lexsort((np.arange(share.size), share.ravel()))
    chosen: list[list[int]] = [[] for _ in range(n_layers)]
    picked = 0
    for flat in order:
        layer, expert = divmod(int(flat), n_experts)
        if len(chosen[layer]) < cap:
            chosen[layer].append(expert)
            picked += 1
            if picked == total:
                break
    return [sorted(c) for c in chosen]


def _mask_row(expert: int) -> Edit:
    def edit(weight: torch.Tensor) -> torch.Tensor:
        out = weight.clone()
        out[expert] = MASK_VALUE
        return out

    return edit


def _chain(first: Edit | None, second: Edit) -> Edit:
    return second if first is None else (lambda t: second(first(t)))


def prune_edits(ckpt: MoeCheckpoint, pruned: list[list[int]], mode: Mode) -> dict[str, Edit]:
    """Tensor edits for ``mode``: router row (bias entry if the router has a bias) to -1e9, expert tensors to 0."""
    edits: dict[str, Edit] = {}
    for layer, experts in zip(ckpt.layers, pruned, strict=True):
        weight_key, bias_key = ckpt.routers[layer]
        for expert in experts:
            if "mask" in mode:
                key = bias_key or weight_key
                edits[key] = _chain(edits.get(key), _mask_row(expert))
            if "zero" in mode:
                for key in ckpt.experts[(layer, expert)]:
                    edits[key] = torch.zeros_like
    return edits


def prune(
    model: str | Path,
    out: str | Path,
    *,
    fraction: float,
    criterion: str = "frequency",
    scope: Scope = "layer",
    mode: Mode = "mask",
    calib: str | Path | None = None,
    max_tokens: int = 512,
    seed: int = 0,
    scores: np.ndarray | None = None,
) -> Path:
    """Prune ``fraction`` of the routed experts of the checkpoint at ``model`` into ``out``.

    Scores come from a calibration pass over ``calib`` (criterion frequency|soft|ean|reap) or from a
    seeded RNG (``random``). ``scores`` [n_moe_layers, n_experts] skips that pass (reuse one profile
    for several fractions). Writes the checkpoint plus ``pruning.json`` (what, per layer, and why).
    """
    if not 0.0 < fraction < 1.0:
        raise UserError(f"--fraction {fraction} is outside (0, 1)", "pass e.g. --fraction 0.1 for 10% of the experts")
    check_criterion(criterion)
    if mode not in MODES:
        raise UserError(f"unknown mode {mode!r}", f"use one of {', '.join(MODES)}")
    if scope not in ("layer", "global"):
        raise UserError(f"unknown scope {scope!r}", "use --scope layer or --scope global")
    ckpt = open_checkpoint(model)
    calib_path = check_calib(calib, required=criterion != "random" and scores is None)
    top_k = top_k_of(ckpt.config)
    if scores is None:
        scores = importance(ckpt, criterion, calib_path, max_tokens=max_tokens, seed=seed)
    elif np.shape(scores) != (len(ckpt.layers), ckpt.num_experts):
        raise ValueError(f"scores shape {np.shape(scores)} != ({len(ckpt.layers)}, {ckpt.num_experts})")
    pruned = select_experts(scores, fraction, scope, keep_min=top_k)
    record = {
        "source": str(ckpt.path),
        "criterion": criterion,
        "scope": scope,
        "mode": mode,
        "fraction": fraction,
        "seed": seed,
        "max_tokens": max_tokens,
        **calib_info(calib_path),
        "num_experts": ckpt.num_experts,
        "top_k": top_k,
        "pruned_total": sum(len(p) for p in pruned),
        "mask_value": MASK_VALUE,
        "layers": [
            {
                "layer": layer,
                "router": ckpt.routers[layer][1] or ckpt.routers[layer][0],
                "mask_exact": ckpt.routers[layer][1] is not None,
                "pruned": experts,
                "scores": [float(s) for s in row],
            }
            for layer, experts, row in zip(ckpt.layers, pruned, scores, strict=True)
        ],
    }
    with output_dir(ckpt, out) as tmp:
        write_edited(ckpt, tmp, prune_edits(ckpt, pruned, mode))
        atomic_write_text(tmp / "pruning.json", json.dumps(record, indent=2) + "\n")
    return Path(out)
