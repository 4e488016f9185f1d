"""Per MoE layer: which baseline expert each candidate expert is, and what compression did to it.

Experts renumbered with their router rows (the same function, other bytes) are matched by digests: the
per-expert tensors' hashes, and the per-row hashes of stacked ``[E, ...]`` tensors and routers. Each
candidate expert then gets one kind against the baseline expert it came from: unchanged, pruned (masked
router row or zeroed weights), merged (sharing identical weights with other experts whose baseline
weights differed), a precision cast, damaged (new NaN/inf) or edited, with ||delta|| / ||W||.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from harness.inspect._scan import TensorStat
from harness.inspect._values import FLOAT_DTYPES, Diff, Reader, compare, elements

Key = tuple[object, ...] | None


class ExpertChange(BaseModel):
    """One changed routed expert of the candidate, against the baseline expert it came from."""

    layer: int
    expert: int
    """The expert's index in the candidate."""
    baseline_expert: int
    """The baseline expert it is (differs from ``expert`` when the experts were renumbered)."""
    kind: str
    """``pruned (masked)``, ``pruned (zeroed)``, ``merged``, ``cast <precision>``, ``damaged`` or ``edited``."""
    relative_change: float | None = None
    """||candidate - baseline|| / ||baseline|| over the expert's weights (its router row when only that changed)."""
    precision: str | None = None
    merged_with: list[int] = Field(default_factory=list)
    """The other candidate experts of its layer that now hold the same weights (merged)."""


@dataclass
class Side:
    """One checkpoint's expert and router tensors of one layer."""

    experts: dict[int, dict[str, TensorStat]] = field(default_factory=dict)
    fused: dict[str, TensorStat] = field(default_factory=dict)
    routers: dict[str, TensorStat] = field(default_factory=dict)

    def count(self) -> int | None:
        """Experts in the layer (None when its tensors disagree)."""
        counts = {max(self.experts) + 1} if self.experts else set()
        counts |= {s.shape[0] for s in [*self.fused.values(), *self.routers.values()] if s.shape}
        return counts.pop() if len(counts) == 1 else None

    def weight_key(self, e: int) -> Key:
        parts: list[object] = [(s, t.dtype, tuple(t.shape), t.blake2b) for s, t in sorted(self.experts.get(e, {}).items())]
        for name, t in sorted(self.fused.items()):
            if len(t.row_digests) <= e:
                return None
            parts.append((name, t.dtype, t.row_digests[e]))
        return tuple(parts) if parts else None

    def router_key(self, e: int) -> Key:
        parts: list[object] = []
        for name, t in sorted(self.routers.items()):
            if len(t.row_digests) <= e:
                return None
            parts.append((name, t.dtype, t.row_digests[e]))
        return tuple(parts)

    def zeroed(self, e: int) -> bool:
        flags = [t.all_zero for t in self.experts.get(e, {}).values()] + [e in t.zero_rows for t in self.fused.values()]
        return bool(flags) and all(flags)

    def masked(self, e: int) -> bool:
        return any(e in t.masked_rows for t in self.routers.values())


def by_layer(stats: list[TensorStat]) -> dict[int, Side]:
    out: dict[int, Side] = defaultdict(Side)
    for s in stats:
        if s.layer is None:
            continue
        if s.role == "expert" and s.expert is not None:
            out[s.layer].experts.setdefault(s.expert, {})[s.name.split(f"experts.{s.expert}.", 1)[1]] = s
        elif s.role == "fused_experts":
            out[s.layer].fused[s.name] = s
        elif s.role == "router":
            out[s.layer].routers[s.name] = s
    return dict(out)


def _claim(perm: list[int | None], new: list[Key], old: list[Key], claimed: set[int]) -> None:
    """Give each unmatched candidate expert the first unclaimed baseline expert with its key."""
    index: dict[object, list[int]] = defaultdict(list)
    for b, key in enumerate(old):
        if key is not None and b not in claimed:
            index[key].append(b)
    for c, key in enumerate(new):
        if perm[c] is None and key is not None:
            free = [b for b in index.get(key, []) if b not in claimed]
            if free:
                perm[c] = free[0]
                claimed.add(free[0])


def match(new: Side, old: Side, n: int) -> list[int]:
    """``new_from_old``: for each candidate expert, the baseline expert it is.

    Experts equal in weights and router row are matched first (same index preferred). Only when that
    finds a renumbering are the rest matched by weights alone (router row edited, e.g. masked) or by
    router row alone (weights edited); what is left pairs up by elimination, same index first.
    """
    full_new = [(new.weight_key(e), new.router_key(e)) for e in range(n)]
    full_old = [(old.weight_key(e), old.router_key(e)) for e in range(n)]
    perm: list[int | None] = [c if full_new[c] == full_old[c] and full_new[c][0] is not None else None for c in range(n)]
    claimed = {c for c in perm if c is not None}
    _claim(perm, [k if k[0] is not None else None for k in full_new], [k if k[0] is not None else None for k in full_old],
           claimed)  # fmt: skip
    if any(p is not None and p != c for c, p in enumerate(perm)):
        _claim(perm, [k[0] for k in full_new], [k[0] for k in full_old], claimed)
        _claim(perm, [k[1] or None for k in full_new], [k[1] or None for k in full_old], claimed)
    free = [b for b in range(n) if b not in claimed]
    for c in range(n):
        if perm[c] is None:
            b = c if c in free else free[0]
            free.remove(b)
            perm[c] = b
    return [int(p) for p in perm if p is not None]


@dataclass
class Part:
    """One tensor (or one row of a stacked tensor / router) of a candidate expert, against its baseline."""

    name: str
    expert: int
    identical: bool
    diff: Diff | None = None


def _diff(reader: Reader, new: TensorStat, old: TensorStat, files: tuple[Path, Path], rows: tuple[int, int] | None) -> Diff | None:
    """Diff of a whole tensor (``rows`` None) or of candidate row c against baseline row b; None when shapes differ."""
    if (rows is None and new.shape != old.shape) or (rows is not None and new.shape[1:] != old.shape[1:]):
        return None
    diff = Diff.start(new.dtype) if {new.dtype, old.dtype} <= FLOAT_DTYPES else Diff(candidates=[])
    n = elements({"shape": new.shape}) if rows is None else elements({"shape": new.shape[1:]})
    c, b = rows if rows is not None else (0, 0)
    return compare(reader, diff, (files[1], old.name, b * n), (files[0], new.name, c * n), n)


def expert_parts(reader: Reader, new: Side, old: Side, perm: list[int], c: int, where: dict[str, Path],
                 base_where: dict[str, Path]) -> tuple[list[Part], list[Part]]:  # fmt: skip
    """(weight parts, router parts) of candidate expert ``c``: digests first, values only of the parts that differ."""
    b = perm[c]
    weights: list[Part] = []
    for suffix, t in sorted(new.experts.get(c, {}).items()):
        o = old.experts.get(b, {}).get(suffix)
        same = o is not None and o.blake2b == t.blake2b and o.dtype == t.dtype
        d = _diff(reader, t, o, (where[t.name], base_where[o.name]), None) if o and not same else None
        weights.append(Part(t.name, c, same, d))
    routers: list[Part] = []
    for group, out in ((new.fused, weights), (new.routers, routers)):
        olds = old.fused if group is new.fused else old.routers
        for name, t in sorted(group.items()):
            o = olds.get(name)
            same = o is not None and len(t.row_digests) > c and len(o.row_digests) > b and \
                t.row_digests[c] == o.row_digests[b] and t.dtype == o.dtype
            d = _diff(reader, t, o, (where[name], base_where[name]), (c, b)) if o and not same else None
            out.append(Part(name, c, same, d))
    return weights, routers


def _merged(diffs: list[Diff | None]) -> Diff | None:
    """One Diff over several parts (None when a part could not be compared)."""
    if any(d is None for d in diffs) or not diffs:
        return None
    out = Diff(candidates=list(diffs[0].candidates))  # type: ignore[union-attr]
    for d in diffs:
        assert d is not None
        out.candidates = [p for p in out.candidates if p in d.candidates]
        out.count += d.count
        out.differ += d.differ
        out.new_nonfinite += d.new_nonfinite
        out.max_abs = max(out.max_abs, d.max_abs)
        out.sum_abs += d.sum_abs
        out.ss_delta += d.ss_delta
        out.ss_base += d.ss_base
        out.out_of_f16 = out.out_of_f16 and d.out_of_f16
    return out


def combine(parts: list[Part]) -> Diff | None:
    return _merged([p.diff for p in parts if not p.identical])


def classify_expert(layer: int, c: int, b: int, new: Side, old: Side, weights: list[Part], routers: list[Part],
                    groups: dict[Key, list[int]], old_keys: list[Key], perm: list[int]) -> ExpertChange | None:  # fmt: skip
    """The expert's kind of change (None: unchanged, possibly renumbered)."""
    w_same, r_same = all(p.identical for p in weights), all(p.identical for p in routers)
    if w_same and r_same:
        return None

    def make(kind: str, **extra: Any) -> ExpertChange:
        return ExpertChange(layer=layer, expert=c, baseline_expert=b, kind=kind, **extra)

    if new.masked(c) and not old.masked(b):
        return make("pruned (masked)")
    if new.zeroed(c) and not old.zeroed(b):
        return make("pruned (zeroed)")
    key = new.weight_key(c)
    group = groups.get(key, []) if key is not None else []
    if not w_same and len(group) > 1 and len({old_keys[perm[g]] for g in group}) > 1:
        return make("merged", merged_with=[g for g in group if g != c])
    wd, rd = combine(weights), combine(routers)
    size = wd if not w_same else rd
    relative = None if size is None else round(size.relative, 6)
    if any(d is not None and d.new_nonfinite for d in (wd, rd)):
        return make("damaged", relative_change=relative)
    casts = [d.precision for d in (wd, rd) if d is not None]
    if len(casts) == (not w_same) + (not r_same) and all(casts):
        return make(f"cast {casts[0]}", relative_change=relative, precision=casts[0])
    return make("edited" if not w_same else "edited (router row)", relative_change=relative)
