"""``inspect_checkpoint``: what a checkpoint holds and, against its baseline, what compression changed.

A compressed MoE checkpoint may legitimately differ from its baseline only in routed-expert weights
and routers, in precision (a cast to bf16/fp16/fp8) and in the numbering of its experts. Anything else
that changed (a norm, an embedding, attention) is damage — typically bf16 weights written through a
float16 path — and fails the gate before any suite runs.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, computed_field

from harness.checkpoint import TOKENIZER_FILES, moe_layout_from_config, resolve_model
from harness.errors import UserError
from harness.inspect._changes import COMPRESSIBLE, KINDS, TensorChange, classify_changes
from harness.inspect._experts import ExpertChange
from harness.inspect._scan import TensorStat, scan_file_cached


class InspectReport(BaseModel):
    """Findings about one checkpoint (and its differences from a baseline when one is given)."""

    path: str
    against: str | None = None
    config: dict[str, Any] = Field(default_factory=dict, exclude=True)
    layout: dict[str, Any] | None = None
    tensors: list[TensorStat] = Field(default_factory=list)
    dtypes: dict[str, int] = Field(default_factory=dict)
    """Parameter count per dtype."""
    tokenizer_sha256: str | None = None
    nan_tensors: list[str] = Field(default_factory=list)
    inf_tensors: list[str] = Field(default_factory=list)
    zero_tensors: list[str] = Field(default_factory=list)
    masked_router_rows: dict[int, list[int]] = Field(default_factory=dict)
    """Layer -> router rows masked (<= -1e4) in this checkpoint (new ones only, with a baseline)."""
    zeroed_experts: dict[int, list[int]] = Field(default_factory=dict)
    """Layer -> experts whose weights are all zero (new ones only, with a baseline)."""
    changed: list[str] = Field(default_factory=list)
    """Tensors whose bytes differ from the baseline's."""
    damaged: list[str] = Field(default_factory=list)
    """Changed tensors outside experts and routers that no cast explains (class ``damage``), with what changed."""
    changes: list[TensorChange] = Field(default_factory=list)
    """Every changed tensor in one class (precision_cast, renumbered, pruned, merged, edited, damage)."""
    renumbered: dict[int, list[int]] = Field(default_factory=dict)
    """Layer -> for each candidate expert, the baseline expert it is (layers whose experts were renumbered)."""
    merged_groups: dict[int, list[list[int]]] = Field(default_factory=dict)
    """Layer -> groups of candidate experts that share identical weights where the baseline's differed."""
    expert_changes: list[ExpertChange] = Field(default_factory=list)
    """Every changed routed expert with its kind, size of change and baseline index (see ``changed_experts``)."""
    problems: list[str] = Field(default_factory=list)
    """Findings that must fail a gate."""
    fatal: list[str] = Field(default_factory=list)
    """Problems that make any suite meaningless (NaN/Inf, weights that contradict the config, no tokenizer)."""
    incomparable: list[str] = Field(default_factory=list)
    """Problems saying the baseline is not this checkpoint's origin (other model, other tokenizer)."""
    notes: list[str] = Field(default_factory=list)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def must_fail(self) -> bool:
        return bool(self.problems)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def change_counts(self) -> dict[str, int]:
        """Changed tensors per class."""
        counts = Counter(c.kind for c in self.changes)
        return {k: counts[k] for k in KINDS if counts[k]}

    def summary(self) -> str:
        status = "FAIL" if self.must_fail else "clean"
        n = len(self.tensors)
        extra = f", {len(self.changed)} changed vs baseline" if self.against else ""
        return f"inspect {self.path}: {status} ({n} tensors{extra}, {len(self.problems)} problem(s))"


def _tokenizer_sha(folder: Path) -> str | None:
    files = [folder / name for name in TOKENIZER_FILES if (folder / name).is_file()]
    if not files:
        return None
    digest = hashlib.sha256()
    for file in files:
        digest.update(file.name.encode() + b"\0" + file.read_bytes() + b"\0")
    return digest.hexdigest()


def _scan(path: str | Path) -> tuple[Path, dict[str, Any], list[TensorStat], dict[str, Path]]:
    source = resolve_model(path)
    if source.weight_format != "safetensors" or source.path is None:
        raise UserError(f"moegate inspect reads safetensors checkpoints; {path} is {source.weight_format}",
                        "pass a local Hugging Face folder with *.safetensors weights")
    config = json.loads((source.path / "config.json").read_text(encoding="utf-8"))
    stats: list[TensorStat] = []
    where: dict[str, Path] = {}
    for file in source.weight_files:
        for stat in scan_file_cached(file):
            stats.append(stat)
            where[stat.name] = file
    return source.path, config, stats, where


def _expert_zeros(stats: list[TensorStat]) -> dict[int, set[int]]:
    """Layer -> experts all of whose tensors are zero (per-expert tensors or rows of stacked ones)."""
    per: dict[tuple[int, int], list[bool]] = defaultdict(list)
    fused: dict[int, list[set[int]]] = defaultdict(list)
    for s in stats:
        if s.role == "expert" and s.layer is not None and s.expert is not None:
            per[(s.layer, s.expert)].append(s.all_zero)
        elif s.role == "fused_experts" and s.layer is not None and len(s.shape) >= 2:
            fused[s.layer].append(set(s.zero_rows))
    out: dict[int, set[int]] = defaultdict(set)
    for (layer, expert), flags in per.items():
        if all(flags):
            out[layer].add(expert)
    for layer, rows in fused.items():
        out[layer] |= set.intersection(*rows)
    return out


def _router_masks(stats: list[TensorStat]) -> dict[int, set[int]]:
    out: dict[int, set[int]] = defaultdict(set)
    for s in stats:
        if s.role == "router" and s.layer is not None:
            out[s.layer] |= set(s.masked_rows)
    return out


def _consistency(config: dict[str, Any], stats: list[TensorStat]) -> list[str]:
    """Config facts (experts, hidden size, top-k, MoE layers) that the tensor shapes contradict."""
    problems: list[str] = []
    layout = moe_layout_from_config(config)
    text = config.get("text_config", config)
    hidden = text.get("hidden_size")
    for s in stats:
        if hidden and s.name.endswith("embed_tokens.weight") and len(s.shape) == 2 and s.shape[1] != hidden:
            problems.append(f"config hidden_size={hidden} but {s.name} has shape {s.shape}")
    routers = [s for s in stats if s.role == "router" and s.name.endswith("weight")]
    if layout is None:
        if routers:
            problems.append(f"config describes a dense model but the weights hold {len(routers)} router(s)")
        return problems
    if layout.top_k > layout.routed_experts:
        problems.append(f"config top-k {layout.top_k} exceeds its {layout.routed_experts} experts")
    for s in routers:
        if len(s.shape) != 2 or s.shape[0] != layout.routed_experts or (hidden and s.shape[1] != hidden):
            problems.append(f"router {s.name} has shape {s.shape}; config says [{layout.routed_experts}, {hidden}]")
    for s in stats:
        if s.role == "fused_experts" and len(s.shape) >= 2 and s.shape[0] != layout.routed_experts:
            problems.append(f"stacked experts {s.name} hold {s.shape[0]} experts; config says {layout.routed_experts}")
    ids: dict[int, set[int]] = defaultdict(set)
    for s in stats:
        if s.role == "expert" and s.layer is not None and s.expert is not None:
            ids[s.layer].add(s.expert)
    for layer, experts in sorted(ids.items()):
        if experts != set(range(layout.routed_experts)):
            problems.append(f"layer {layer} has {len(experts)} expert(s) with ids up to {max(experts)}; "
                            f"config says {layout.routed_experts}")
    router_layers = {s.layer for s in routers if s.layer is not None}
    if router_layers and router_layers != set(layout.moe_layers):
        problems.append(f"routers found in layers {sorted(router_layers)}; config's MoE layers are {layout.moe_layers}")
    return problems


def _compare(report: InspectReport, stats: list[TensorStat], where: dict[str, Path], base: InspectReport,
             base_where: dict[str, Path], base_config: dict[str, Any]) -> None:
    new = {s.name: s for s in stats}
    old = {s.name: s for s in base.tensors}
    removed, added = sorted(set(old) - set(new)), sorted(set(new) - set(old))
    for label, names in (("missing", removed), ("not in the baseline", added)):
        other = [n for n in names if (new.get(n) or old[n]).role not in COMPRESSIBLE]
        if other:
            report.incomparable.append(f"{len(other)} tensor(s) {label}, e.g. {other[0]} (not a checkpoint of the baseline model?)")
        elif names:
            report.notes.append(f"{len(names)} expert/router tensor(s) {label}")
    report.changed = [n for n in sorted(set(new) & set(old))
                      if new[n].blake2b != old[n].blake2b or new[n].dtype != old[n].dtype]
    found = classify_changes(report.changed, new, old, where, base_where)
    report.changes, report.expert_changes = found.tensors, found.experts
    report.renumbered, report.merged_groups = found.renumbered, found.merged_groups
    report.notes += found.notes
    report.damaged = [c.detail for c in found.tensors if c.kind == "damage" and c.role not in COMPRESSIBLE]
    if report.damaged:
        report.problems.append(f"{len(report.damaged)} tensor(s) that compression must not touch changed in a way "
                               f"no precision cast explains (damage), "
                               f"e.g. {report.damaged[0]}")
    layout_new, layout_old = moe_layout_from_config(report.config), moe_layout_from_config(base_config)
    if (layout_new and layout_old and layout_new.routed_experts != layout_old.routed_experts) or (
            (layout_new is None) != (layout_old is None)):
        report.incomparable.append("config's expert count differs from the baseline's (another model?)")
    if report.tokenizer_sha256 != base.tokenizer_sha256 and report.tokenizer_sha256 and base.tokenizer_sha256:
        report.incomparable.append("tokenizer files differ from the baseline's (scores would not be comparable)")
    report.problems += report.incomparable
    zeros_old, masks_old = _expert_zeros(base.tensors), _router_masks(base.tensors)
    report.zeroed_experts = {k: sorted(v - zeros_old.get(k, set())) for k, v in sorted(_expert_zeros(stats).items())
                             if v - zeros_old.get(k, set())}
    report.masked_router_rows = {k: sorted(v - masks_old.get(k, set())) for k, v in sorted(_router_masks(stats).items())
                                 if v - masks_old.get(k, set())}


def inspect_checkpoint(path: str | Path, against: str | Path | None = None) -> InspectReport:
    """Scan a safetensors checkpoint (and compare it with ``against``); ``UserError`` if unreadable."""
    folder, config, stats, where = _scan(path)
    counts: Counter[str] = Counter()
    for s in stats:
        n = 1
        for d in s.shape:
            n *= d
        counts[s.dtype] += n
    layout = moe_layout_from_config(config)
    report = InspectReport(
        path=str(path), config=config, layout=layout.to_dict() if layout else None, tensors=stats,
        dtypes=dict(counts.most_common()), tokenizer_sha256=_tokenizer_sha(folder),
        nan_tensors=[s.name for s in stats if s.nan], inf_tensors=[s.name for s in stats if s.inf],
        zero_tensors=[s.name for s in stats if s.all_zero],
    )
    for s in stats:
        if s.nan:
            report.problems.append(f"{s.name} holds {s.nan} NaN value(s)")
        if s.unmasked_inf:
            report.problems.append(f"{s.name} holds {s.unmasked_inf} infinite value(s)")
    report.problems += _consistency(config, stats)
    report.fatal = list(report.problems)
    if against is None:
        report.zeroed_experts = {k: sorted(v) for k, v in sorted(_expert_zeros(stats).items()) if v}
        report.masked_router_rows = {k: sorted(v) for k, v in sorted(_router_masks(stats).items()) if v}
        return report
    base_folder, base_config, base_stats, base_where = _scan(against)
    base = InspectReport(path=str(against), tensors=base_stats, tokenizer_sha256=_tokenizer_sha(base_folder))
    report.against = str(against)
    _compare(report, stats, where, base, base_where, base_config)
    return report
