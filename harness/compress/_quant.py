"""Per-expert round-to-nearest fake quantization, written back dequantized in the source dtype.

Any backend loads the result (no quantized kernels needed), and the error is exactly that of RTN at the
chosen bit width: the right stand-in for per-expert mixed-precision checkpoints.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from harness.atomic import atomic_write_text
from harness.compress._checkpoint import open_checkpoint
from harness.compress._importance import calib_info, check_calib, importance
from harness.compress._write import Edit, output_dir, write_edited
from harness.errors import UserError

Scheme = Literal["sym", "asym"]
# tiered plan: per layer, the hottest quarter of experts (by routing frequency) at 8 bits, the coldest
# eighth at 2 bits, the rest at 4 bits (with 8 experts: 2 at 8-bit, 5 at 4-bit, 1 at 2-bit).
TIER_HOT, TIER_COLD = 0.25, 0.125
_UNIFORM = re.compile(r"^uniform:(\d+)$")


def fake_quantize(weight: torch.Tensor, bits: int, group_size: int, scheme: Scheme = "asym") -> torch.Tensor:
    """RTN-quantize ``weight`` [out, in] per group of ``group_size`` input columns; returns it dequantized."""
    if weight.ndim != 2:
        raise ValueError(f"expected a 2-D weight, got shape {tuple(weight.shape)}")
    rows, cols = weight.shape
    w = weight.to(torch.float32)
    pad = (-cols) % group_size
    if pad:  # repeat the last column so the padding never widens a group's range
        w = torch.nn.functional.pad(w.unsqueeze(0), (0, pad), mode="replicate").squeeze(0)
    g = w.view(rows, -1, group_size)
    if scheme == "sym":
        qmax = 2 ** (bits - 1) - 1
        scale = g.abs().amax(dim=-1, keepdim=True) / max(qmax, 1)
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        deq = torch.clamp(torch.round(g / scale), -qmax - 1, qmax) * scale
    else:
        qmax = 2**bits - 1
        lo, hi = g.amin(dim=-1, keepdim=True), g.amax(dim=-1, keepdim=True)
        scale = (hi - lo) / qmax
        flat = torch.where(hi.abs() > 0, hi.abs() / qmax, torch.ones_like(hi))  # constant group: exact
        scale = torch.where(scale > 0, scale, flat)
        zero = torch.round(-lo / scale)
        deq = (torch.clamp(torch.round(g / scale) + zero, 0, qmax) - zero) * scale
    return deq.reshape(rows, -1)[:, :cols].to(weight.dtype)


def parse_plan(plan: str) -> int | None:
    """Bits for ``uniform:N`` (2..8), None for ``tiered``; UserError otherwise."""
    if plan == "tiered":
        return None
    match = _UNIFORM.match(plan)
    if match and 2 <= int(match[1]) <= 8:
        return int(match[1])
    raise UserError(f"unknown quantization plan {plan!r}", "use uniform:8, uniform:4 (any uniform:2..8) or tiered")


def tiered_bits(usage: np.ndarray) -> np.ndarray:
    """Bits per expert [layers, experts] from usage: hottest TIER_HOT -> 8, coldest TIER_COLD -> 2, rest 4."""
    n_experts = usage.shape[1]
    n_hot, n_cold = max(1, round(TIER_HOT * n_experts)), max(1, round(TIER_COLD * n_experts))
    bits = np.full(usage.shape, 4, dtype=np.int64)
    for row, u in zip(bits, usage, strict=True):
        order = np.argsort(-u, kind="stable")
        row[order[:n_hot]] = 8
        row[order[n_experts - n_cold :]] = 2
    return bits


def _quant_edit(bits: int, group_size: int, scheme: Scheme) -> Edit:
    return lambda t: fake_quantize(t, bits, group_size, scheme)


def quantize(
    model: str | Path,
    out: str | Path,
    *,
    plan: str = "uniform:4",
    group_size: int = 64,
    scheme: Scheme = "asym",
    calib: str | Path | None = None,
    max_tokens: int = 512,
    usage: np.ndarray | None = None,
) -> Path:
    """Fake-quantize every routed expert of ``model`` per ``plan`` into ``out`` (+ ``quantization.json``).

    Only routed-expert projection weights change; routers, shared experts, attention, embeddings and
    norms stay bit-identical. ``tiered`` needs ``calib`` (usage is measured by routing frequency) or a
    precomputed ``usage`` [n_moe_layers, n_experts].
    """
    uniform_bits = parse_plan(plan)
    if group_size < 1:
        raise UserError(f"--group-size {group_size} must be positive", "use e.g. --group-size 64")
    if scheme not in ("sym", "asym"):
        raise UserError(f"unknown scheme {scheme!r}", "use sym or asym")
    ckpt = open_checkpoint(model)
    calib_path = check_calib(calib, required=uniform_bits is None and usage is None)
    shape = (len(ckpt.layers), ckpt.num_experts)
    if uniform_bits is None:
        if usage is None:
            usage = importance(ckpt, "frequency", calib_path, max_tokens=max_tokens)
        bits = tiered_bits(np.asarray(usage))
    else:
        usage = None
        bits = np.full(shape, uniform_bits, dtype=np.int64)
    edits: dict[str, Edit] = {}
    for i, layer in enumerate(ckpt.layers):
        for expert in range(ckpt.num_experts):
            for key in ckpt.expert_weight_keys(layer, expert):
                edits[key] = _quant_edit(int(bits[i, expert]), group_size, scheme)
    record = {
        "source": str(ckpt.path),
        "plan": plan,
        "group_size": group_size,
        "scheme": scheme,
        "tiers": {"hot_fraction_8bit": TIER_HOT, "cold_fraction_2bit": TIER_COLD} if uniform_bits is None else None,
        **calib_info(calib_path),
        "mean_bits": float(bits.mean()),
        "layers": [
            {"layer": layer, "bits": bits[i].tolist(), **({"usage": usage[i].tolist()} if usage is not None else {})}
            for i, layer in enumerate(ckpt.layers)
        ],
    }
    with output_dir(ckpt, out) as tmp:
        write_edited(ckpt, tmp, edits)
        atomic_write_text(tmp / "quantization.json", json.dumps(record, indent=2) + "\n")
    return Path(out)
