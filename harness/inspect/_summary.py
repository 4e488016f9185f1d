"""The audit's classes in words: one source for ``moegate inspect``, report.md and report.html."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Mapping
from typing import Any

from harness.inspect._changes import KINDS

SHOWN = 3


def _num(x: Any) -> str:
    return "n/a" if x is None else f"{float(x):.3g}"


def audit_lines(findings: Mapping[str, Any]) -> list[str]:
    """Plain-text lines (no markup) for an audit against a baseline, from its JSON; [] without a baseline."""
    if not findings.get("against"):
        return []
    changes = list(findings.get("changes") or [])
    counts = Counter(str(c["kind"]) for c in changes)
    lines = ["changed tensors by class: " + (", ".join(f"{k} {counts[k]}" for k in KINDS if counts[k]) or "none")]
    casts: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for c in changes:
        if c["kind"] == "precision_cast":
            casts[str(c.get("precision"))].append(c)
    for precision, group in sorted(casts.items()):
        worst = max((c.get("max_abs_error") or 0.0 for c in group), default=0.0)
        mean = max((c.get("mean_abs_error") or 0.0 for c in group), default=0.0)
        lines.append(f"precision cast to {precision}: {len(group)} tensor(s), max |error| {_num(worst)}, "
                     f"mean |error| up to {_num(mean)} (not damage)")  # fmt: skip
    for layer, perm in sorted((findings.get("renumbered") or {}).items(), key=lambda kv: int(kv[0])):
        moved = ", ".join(f"{c}<-{b}" for c, b in enumerate(perm) if c != b)
        lines.append(f"layer {layer}: experts renumbered, identical unless listed as changed (candidate<-baseline): {moved}")
    for layer, groups in sorted((findings.get("merged_groups") or {}).items(), key=lambda kv: int(kv[0])):
        lines.append(f"layer {layer}: merged groups {groups}")
    experts = list(findings.get("expert_changes") or [])
    if experts:
        kinds = Counter(str(e["kind"]) for e in experts)
        sizes = [e["relative_change"] for e in experts if e.get("relative_change") is not None]
        size = f" (||delta||/||W|| up to {_num(max(sizes))})" if sizes else ""
        lines.append("changed experts: " + ", ".join(f"{v} {k}" for k, v in sorted(kinds.items())) + size)
    damage = [c for c in changes if c["kind"] == "damage"]
    for c in damage[:SHOWN]:
        where = "" if c.get("role") == "other" else " (expert/router: reported, does not fail the gate)"
        lines.append(f"damage: {c.get('detail') or c['name']}{where}")
    if len(damage) > SHOWN:
        lines.append(f"damage: and {len(damage) - SHOWN} more tensor(s)")
    return lines
