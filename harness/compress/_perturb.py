"""Benign perturbations of a checkpoint: copies that must behave like the original (the gate's noise floor).

``renumber_experts`` permutes each MoE layer's routed experts and its router rows the same way: exactly
the same function, other bytes. ``round_trip`` casts every floating tensor to a lower precision and back
(a routine deployment step). ``moegate baseline calibrate`` gates the baseline against both to measure
how much each capability moves when nothing that matters changed.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open

from harness.atomic import atomic_write_text
from harness.compress._checkpoint import MoeCheckpoint, open_checkpoint
from harness.compress._write import Edit, output_dir, write_edited
from harness.errors import UserError

ROUND_TRIP_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}


def expert_permutations(ckpt: MoeCheckpoint, seed: int) -> dict[int, list[int]]:
    """Per MoE layer, a seeded permutation with no fixed point where the layer has two or more experts:
    new expert ``e`` is old expert ``perm[e]``."""
    rng = np.random.default_rng(seed)
    n = ckpt.num_experts
    out = {}
    for layer in ckpt.layers:
        perm = np.roll(rng.permutation(n), 1) if n > 1 else np.arange(n)
        while n > 1 and np.any(perm == np.arange(n)):
            perm = rng.permutation(n)
        out[layer] = [int(p) for p in perm]
    return out


def _read(ckpt: MoeCheckpoint, key: str) -> torch.Tensor:
    with safe_open(str(ckpt.path / ckpt.key_file[key]), framework="pt") as handle:
        return handle.get_tensor(key)


def _take(ckpt: MoeCheckpoint, source_key: str) -> Edit:
    return lambda _tensor: _read(ckpt, source_key)


def _rows(perm: list[int]) -> Edit:
    index = torch.tensor(perm)
    return lambda tensor: tensor.index_select(0, index)


def renumber_edits(ckpt: MoeCheckpoint, perms: dict[int, list[int]]) -> dict[str, Edit]:
    edits: dict[str, Edit] = {}
    for layer, perm in perms.items():
        for new, old in enumerate(perm):
            keys_new, keys_old = ckpt.experts[(layer, new)], ckpt.experts[(layer, old)]
            suffix = {k.split(f"experts.{old}.", 1)[1]: k for k in keys_old}
            for key in keys_new:
                edits[key] = _take(ckpt, suffix[key.split(f"experts.{new}.", 1)[1]])
        weight, bias = ckpt.routers[layer]
        edits[weight] = _rows(perm)
        if bias is not None:
            edits[bias] = _rows(perm)
    return edits


def renumber_experts(model: str | Path, out: str | Path, *, seed: int = 0) -> Path:
    """Write ``model`` with every MoE layer's experts renumbered (tensors and router rows permuted alike)."""
    ckpt = open_checkpoint(model)
    perms = expert_permutations(ckpt, seed)
    record = {"source": str(ckpt.path), "perturbation": "renumber", "seed": seed,
              "layers": [{"layer": layer, "new_from_old": perm} for layer, perm in perms.items()]}  # fmt: skip
    with output_dir(ckpt, out) as tmp:
        write_edited(ckpt, tmp, renumber_edits(ckpt, perms))
        atomic_write_text(tmp / "perturbation.json", json.dumps(record, indent=2) + "\n")
    return Path(out)


def round_trip(model: str | Path, out: str | Path, *, dtype: str = "bfloat16") -> Path:
    """Write ``model`` with every floating tensor wider than ``dtype`` cast to it and back."""
    if dtype not in ROUND_TRIP_DTYPES:
        raise UserError(f"unknown round-trip dtype {dtype!r}", f"use one of {', '.join(ROUND_TRIP_DTYPES)}")
    ckpt = open_checkpoint(model)
    low = ROUND_TRIP_DTYPES[dtype]
    wider: dict[str, Edit] = {}
    for name in ckpt.files:
        with safe_open(str(ckpt.path / name), framework="pt") as handle:
            for key in handle.keys():  # noqa: SIM118 - safe_open handles are not iterable
                if handle.get_slice(key).get_dtype() in ("F32", "F64"):
                    wider[key] = lambda t: t.to(low).to(t.dtype)
    if not wider:
        raise UserError(f"{ckpt.path} holds no tensor wider than {dtype}: a round trip would change nothing",
                        "calibrate with the other perturbations")  # fmt: skip
    record = {"source": str(ckpt.path), "perturbation": f"{dtype} round trip", "tensors": len(wider)}
    with output_dir(ckpt, out) as tmp:
        write_edited(ckpt, tmp, wider)
        atomic_write_text(tmp / "perturbation.json", json.dumps(record, indent=2) + "\n")
    return Path(out)
