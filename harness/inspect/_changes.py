"""Every tensor that differs from the baseline, in one typed class, and the per-expert change map.

Classes: ``precision_cast`` (every value is the baseline's rounded to bf16/fp16/fp8, stored back or in the
lower dtype), ``renumbered`` (equal to the baseline under the layer's expert permutation), the compression
kinds of routed experts and routers (``pruned (masked)``, ``pruned (zeroed)``, ``merged``, ``edited``), and
``damage``: what no rounding or permutation explains. Only damage outside experts and routers fails a gate.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from harness.inspect._experts import (
    ExpertChange,
    Part,
    Side,
    by_layer,
    classify_expert,
    combine,
    expert_parts,
    match,
)
from harness.inspect._scan import TensorStat
from harness.inspect._values import FLOAT_DTYPES, Diff, Reader, compare, elements

COMPRESSIBLE = ("expert", "fused_experts", "router")
KINDS = ("renumbered", "precision_cast", "pruned (masked)", "pruned (zeroed)", "merged", "edited", "damage")
"""Tensor classes, mildest first: a tensor with rows of several kinds takes the last of them."""


class TensorChange(BaseModel):
    """One tensor whose bytes differ from the baseline's, classified."""

    name: str
    kind: str
    """One of ``KINDS``."""
    role: str = "other"
    precision: str | None = None
    """For ``precision_cast``: the precision whose rounding gives every value."""
    max_abs_error: float | None = None
    mean_abs_error: float | None = None
    relative_change: float | None = None
    """||candidate - baseline|| / ||baseline|| over the values compared."""
    detail: str = ""


@dataclass
class Changes:
    tensors: list[TensorChange] = field(default_factory=list)
    experts: list[ExpertChange] = field(default_factory=list)
    renumbered: dict[int, list[int]] = field(default_factory=dict)
    merged_groups: dict[int, list[list[int]]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def _part_kind(part: Part, baseline: int, expert: ExpertChange | None) -> str:
    """The class one part gives its tensor ("" for a part equal to the baseline's at the same index)."""
    if part.identical:
        return "renumbered" if part.expert != baseline else ""
    if part.diff is not None and part.diff.precision:
        return "precision_cast"
    kind = "edited" if expert is None else expert.kind
    if kind == "damaged":
        return "damage"
    return "edited" if kind.startswith(("edited", "cast")) else kind


def _sized(change: TensorChange, diff: Diff | None) -> TensorChange:
    if diff is not None and diff.count:
        change.max_abs_error, change.mean_abs_error = float(f"{diff.max_abs:.4g}"), float(f"{diff.mean_abs:.4g}")
        change.relative_change = float(f"{diff.relative:.4g}")
    return change


def damage_text(name: str, new: TensorStat, old: TensorStat, diff: Diff | None) -> str:
    """Say how a tensor that should be bit-identical changed."""
    head = ""
    if new.dtype != old.dtype or new.shape != old.shape:
        hint = " (bf16 written through a float16 path?)" if {old.dtype, new.dtype} == {"BF16", "F16"} else ""
        head = f"{name} changed {old.dtype}{old.shape} -> {new.dtype}{new.shape}{hint}"
        if diff is None:
            return head
    assert diff is not None
    hint = ""
    if diff.differ and old.dtype == "BF16" and diff.out_of_f16:
        hint = " (values outside float16's range were clipped/flushed: bf16 written through a float16 path?)"
    lost = f", {diff.new_nonfinite} became NaN/inf" if diff.new_nonfinite else ""
    facts = f"bits in {diff.differ} of {diff.count} values (max |diff| {diff.max_abs:.3g}{lost}){hint}"
    return f"{head}; {facts}" if head else f"{name} changed {facts}"


def _whole(reader: Reader, name: str, new: TensorStat, old: TensorStat, files: tuple[Path, Path]) -> TensorChange:
    """A tensor compared value by value at the same index: a cast, or damage (outside experts) / edited."""
    diff = None
    if new.shape == old.shape:
        diff = Diff.start(new.dtype) if {new.dtype, old.dtype} <= FLOAT_DTYPES else Diff(candidates=[])
        n = elements({"shape": new.shape})
        compare(reader, diff, (files[1], name, 0), (files[0], name, 0), n)
    if diff is not None and diff.precision:
        return _sized(TensorChange(name=name, kind="precision_cast", role=new.role, precision=diff.precision,
                                   detail=f"values rounded to {diff.precision}"), diff)  # fmt: skip
    damage = new.role not in COMPRESSIBLE or diff is None or bool(diff.new_nonfinite)
    return _sized(TensorChange(name=name, kind="damage" if damage else "edited", role=new.role,
                               detail=damage_text(name, new, old, diff)), diff)  # fmt: skip


def _layer(reader: Reader, layer: int, new: Side, old: Side, where: dict[str, Path], base_where: dict[str, Path],
           out: Changes) -> dict[str, list[tuple[str, Part]]]:  # fmt: skip
    """Match and classify the layer's experts; returns tensor name -> (kind, part) of its changed parts."""
    n = new.count()
    if n is None or n != old.count():
        out.notes.append(f"layer {layer}: expert tensors disagree on the expert count (or with the baseline's); "
                         "its experts are compared tensor by tensor")  # fmt: skip
        return {}
    perm = match(new, old, n)
    if perm != list(range(n)):
        out.renumbered[layer] = perm
    groups: dict[Any, list[int]] = {}
    for c in range(n):
        key = new.weight_key(c)
        if key is not None and not new.zeroed(c):
            groups.setdefault(key, []).append(c)
    old_keys = [old.weight_key(b) for b in range(n)]
    merged = [g for g in groups.values() if len(g) > 1 and len({old_keys[perm[c]] for c in g}) > 1]
    if merged:
        out.merged_groups[layer] = sorted(merged)
    parts: dict[str, list[tuple[str, Part]]] = {}
    for c in range(n):
        weights, routers = expert_parts(reader, new, old, perm, c, where, base_where)
        change = classify_expert(layer, c, perm[c], new, old, weights, routers, groups, old_keys, perm)
        if change is not None:
            out.experts.append(change)
        for part in [*weights, *routers]:
            kind = _part_kind(part, perm[c], change)
            if kind:
                parts.setdefault(part.name, []).append((kind, part))
    return parts


def classify_changes(changed: list[str], new: Mapping[str, TensorStat], old: Mapping[str, TensorStat],
                     where: dict[str, Path], base_where: dict[str, Path]) -> Changes:  # fmt: skip
    """Classify the tensors named in ``changed`` (present in both checkpoints, bytes or dtype differ)."""
    out = Changes()
    touched = {new[n].layer for n in changed if new[n].role in COMPRESSIBLE and new[n].layer is not None}
    new_layers, old_layers = by_layer(list(new.values())), by_layer(list(old.values()))
    with Reader() as reader:
        parts: dict[str, list[tuple[str, Part]]] = {}
        for layer in sorted(t for t in touched if t is not None and t in old_layers):
            parts |= _layer(reader, layer, new_layers[layer], old_layers[layer], where, base_where, out)
        for name in changed:
            mine = parts.get(name)
            if not mine:
                out.tensors.append(_whole(reader, name, new[name], old[name], (where[name], base_where[name])))
                continue
            kind = max((k for k, _ in mine), key=KINDS.index)
            counts = {k: sum(1 for kk, _ in mine if kk == k) for k in KINDS if any(kk == k for kk, _ in mine)}
            diff = combine([p for k, p in mine if k == kind]) if kind != "renumbered" else None
            detail = ", ".join(f"{v} expert(s) {k}" for k, v in counts.items())
            change = TensorChange(name=name, kind=kind, role=new[name].role, detail=detail,
                                  precision=diff.precision if diff is not None and kind == "precision_cast" else None)
            out.tensors.append(_sized(change, diff))
    out.experts.sort(key=lambda e: (e.layer, e.expert))
    return out


def changed_experts(report: Any) -> dict[int, dict[int, ExpertChange]]:
    """Layer -> *baseline* expert -> how the candidate changed it, from an ``InspectReport`` or its JSON.

    Keyed by the baseline's index so that the baseline's routes apply as they are: a renumbered but
    identical expert is absent, and routes to baseline expert ``b`` go to ``change.expert`` in the candidate.
    """
    items = (report.get("expert_changes") or []) if isinstance(report, Mapping) else report.expert_changes
    out: dict[int, dict[int, ExpertChange]] = {}
    for item in items:
        change = item if isinstance(item, ExpertChange) else ExpertChange.model_validate(item)
        out.setdefault(change.layer, {})[change.baseline_expert] = change
    return {layer: dict(sorted(v.items())) for layer, v in sorted(out.items())}
