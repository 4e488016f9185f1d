"""Which changed experts carried the items that broke: the baseline's routing mass against the candidate's diff.

Pure: inputs are the baseline's per-item routing (``RouteMass`` per suite), the candidate's changed
experts (``{layer: {expert: kind}}``, from the checkpoint audit), the verdict (which items flipped or
were newly flagged, per capability) and optionally the calibration usage the compression was chosen by.
Shares are of the baseline's routing: ``mass`` (gate weights summed over tokens, layers and items) and
``tokens`` (top-k selections), so 0.14 means 14% of what those items routed went to changed experts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from pydantic import BaseModel, Field

from harness.diagnosis._routes import RouteMass
from harness.gate import GateVerdict

ChangedExperts = dict[int, dict[int, str]]
"""Decoder layer -> expert -> kind of change (``pruned (masked)``, ``merged``, ``quantized 2-bit``...)."""
TOP_ITEMS = 10
TOP_EXPERTS = 3


class ExpertShare(BaseModel):
    layer: int
    expert: int
    kind: str
    share: float
    """Share of the item's routing mass (all MoE layers) that went to this expert."""


class ItemDiagnosis(BaseModel):
    item_id: str
    changed_share: float
    """Share of the item's routing mass that went to changed experts."""
    top: list[ExpertShare] = Field(default_factory=list)


class CapabilityDiagnosis(BaseModel):
    label: str
    suite: str
    status: str
    broke: int
    """Flipped or newly flagged items that have routes."""
    broke_mass: float | None = None
    broke_tokens: float | None = None
    other: int = 0
    other_mass: float | None = None
    other_tokens: float | None = None
    items: list[ItemDiagnosis] = Field(default_factory=list)
    """The flipped items with the most routing to changed experts, each with its top changed experts."""
    line: str = ""


class CoverageRow(BaseModel):
    """A changed expert's share of its layer's routing on the calibration tokens and on each suite."""

    layer: int
    expert: int
    kind: str
    calibration: float
    suites: dict[str, float]
    carries: list[str] = Field(default_factory=list)
    """Suites where the expert's share is at least twice its calibration share (and half the uniform share)."""


class Diagnosis(BaseModel):
    """The expert-level diagnosis of one gate run (``available`` False: ``note`` says why not, and how to fix it)."""

    available: bool
    note: str = ""
    changed: dict[int, dict[int, str]] = Field(default_factory=dict)
    words: str = "changed experts"
    capabilities: list[CapabilityDiagnosis] = Field(default_factory=list)
    suites: list[str] = Field(default_factory=list)
    layers: list[int] = Field(default_factory=list)
    heatmap: list[list[float | None]] = Field(default_factory=list)
    """[suite][layer]: share of the suite's routing mass at that layer that went to changed experts."""
    coverage: list[CoverageRow] = Field(default_factory=list)
    coverage_note: str = ""
    caveats: list[str] = Field(default_factory=list)
    """What the baseline's routes cannot show about this candidate (e.g. router rows masked without a bias)."""


@dataclass(frozen=True)
class CalibrationUsage:
    """Per-expert usage on the calibration tokens, from the compression's own file (``pruning.json``...)."""

    source: str
    """What it was measured on, e.g. ``pruning.json: frequency on calib-c4-128.jsonl``."""
    layers: tuple[int, ...]
    usage: NDArray[np.float64]
    """[layers, experts], any non-negative scale; normalised per layer here."""


def unavailable(note: str) -> Diagnosis:
    return Diagnosis(available=False, note=note)


def describe(changed: ChangedExperts) -> str:
    """``pruned experts``, ``merged experts``... or ``changed experts`` when the kinds differ."""
    heads = {kind.split(" ")[0] for experts in changed.values() for kind in experts.values()}
    words = {"pruned": "pruned experts", "merged": "merged experts", "quantized": "requantized experts"}
    return words.get(next(iter(heads)), "changed experts") if len(heads) == 1 else "changed experts"


def layout_mismatch(routes: Mapping[str, RouteMass], changed: ChangedExperts) -> str | None:
    """One line naming what the diff cannot map onto the stored routes, or None."""
    for suite, r in routes.items():
        missing = sorted(set(changed) - set(r.layers))
        if missing:
            return f"changed experts in layer(s) {missing}, which the baseline's {suite} routes do not have (layers {list(r.layers)[:4]}…)"
        beyond = [(layer, e) for layer, experts in changed.items() for e in experts if not 0 <= e < r.num_experts]
        if beyond:
            return f"changed expert {beyond[0][1]} of layer {beyond[0][0]} is outside the baseline's {r.num_experts} experts"
    return None


def _changed_mask(r: RouteMass, changed: ChangedExperts) -> NDArray[np.bool_]:
    mask = np.zeros(r.mass.shape[1:], dtype=bool)
    for pos, layer in enumerate(r.layers):
        for expert in changed.get(layer, {}):
            mask[pos, expert] = True
    return mask


def _shares(r: RouteMass, rows: Sequence[int], mask: NDArray[np.bool_]) -> tuple[float | None, float | None]:
    if not rows:
        return None, None
    mass, picks = r.mass[list(rows)], r.picks[list(rows)]
    total_m, total_p = float(mass.sum()), float(picks.sum())
    share_m = float(mass[:, mask].sum()) / total_m if total_m > 0 else None
    share_p = float(picks[:, mask].sum()) / total_p if total_p > 0 else None
    return share_m, share_p


def suite_share(r: RouteMass, changed: ChangedExperts) -> float:
    """Share of a suite's whole routing mass that went to changed experts (its risk)."""
    share, _ = _shares(r, range(len(r.item_ids)), _changed_mask(r, changed))
    return share or 0.0


def _item(r: RouteMass, row: int, mask: NDArray[np.bool_], changed: ChangedExperts) -> ItemDiagnosis:
    mass = r.mass[row]
    total = float(mass.sum()) or 1.0
    cells = [(float(mass[pos, e]) / total, layer, e) for pos, layer in enumerate(r.layers) for e in changed.get(layer, {})]
    cells.sort(key=lambda c: (-c[0], c[1], c[2]))
    top = [ExpertShare(layer=layer, expert=e, kind=changed[layer][e], share=round(s, 4)) for s, layer, e in cells[:TOP_EXPERTS] if s > 0]
    return ItemDiagnosis(item_id=r.item_ids[row], changed_share=round(float(mass[mask].sum()) / total, 4), top=top)


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.0f}%" if x >= 0.1 else f"{100 * x:.1f}%"


def _line(c: CapabilityDiagnosis, words: str, kind: str) -> str:
    broke = "newly flagged items" if kind.endswith("flags") or kind.endswith("count") or kind == "rate_increase" else "right→wrong items"
    if not c.broke:
        return f"{c.label}: no {broke}; its {c.other} items sent {_pct(c.other_mass)} of their routing to {words}"
    text = (f"{c.label}: {c.broke} {broke} sent {_pct(c.broke_mass)} of their routing to {words} "
            f"({_pct(c.broke_tokens)} of token selections); unchanged items {_pct(c.other_mass)}")  # fmt: skip
    if c.items and c.items[0].top:
        t = c.items[0].top[0]
        text += f"; most: {c.items[0].item_id} via layer {t.layer} expert {t.expert} ({_pct(t.share)})"
    return text


def diagnose(
    routes: Mapping[str, RouteMass], changed: ChangedExperts, verdict: GateVerdict,
    calibration: CalibrationUsage | None = None,
) -> Diagnosis:  # fmt: skip
    """Per capability, per suite × layer, and per changed expert against calibration (see the module doc)."""
    if not changed:
        return unavailable("the audit found no changed routed experts: nothing to attribute")
    why = layout_mismatch(routes, changed)
    if why:
        return unavailable(f"layout mismatch: {why}; no diagnosis")
    words = describe(changed)
    out = Diagnosis(available=True, changed={k: dict(v) for k, v in sorted(changed.items())}, words=words)
    for cap in verdict.capabilities:
        r = routes.get(cap.suite)
        if r is None:
            continue
        index, mask = r.index(), _changed_mask(r, changed)
        broke = [index[i] for i in cap.changed_items if i in index]
        others = [row for row in range(len(r.item_ids)) if row not in set(broke)]
        (bm, bt), (om, ot) = _shares(r, broke, mask), _shares(r, others, mask)
        items = sorted((_item(r, row, mask, changed) for row in broke), key=lambda d: -d.changed_share)[:TOP_ITEMS]
        c = CapabilityDiagnosis(label=cap.label, suite=cap.suite, status=cap.status, broke=len(broke), broke_mass=bm,
                                broke_tokens=bt, other=len(others), other_mass=om, other_tokens=ot, items=items)  # fmt: skip
        c.line = _line(c, words, cap.kind)
        out.capabilities.append(c)
    out.suites = sorted(routes)
    out.layers = sorted({layer for r in routes.values() for layer in r.layers})
    out.heatmap = [_layer_row(routes[s], changed, out.layers) for s in out.suites]
    if calibration is not None:
        out.coverage, out.coverage_note = coverage(routes, changed, calibration)
    else:
        out.coverage_note = "no calibration usage: the candidate has no pruning.json/merging.json/quantization.json with per-expert usage"
    return out


def _layer_row(r: RouteMass, changed: ChangedExperts, layers: list[int]) -> list[float | None]:
    mask, totals = _changed_mask(r, changed), r.mass.sum(axis=(0, 2))
    hit = (r.mass * mask[None]).sum(axis=(0, 2))
    by_layer = {layer: float(hit[p] / totals[p]) if totals[p] > 0 else None for p, layer in enumerate(r.layers)}
    return [None if by_layer.get(layer) is None else round(by_layer[layer] or 0.0, 4) for layer in layers]


def coverage(
    routes: Mapping[str, RouteMass], changed: ChangedExperts, calibration: CalibrationUsage
) -> tuple[list[CoverageRow], str]:
    """Each changed expert's share of its layer on calibration vs on each suite; the rare-on-calibration carriers first."""
    usage = np.asarray(calibration.usage, dtype=np.float64)
    if usage.shape[0] != len(calibration.layers) or usage.ndim != 2:
        return [], f"calibration usage of shape {usage.shape} does not match its {len(calibration.layers)} layers"
    sums = usage.sum(axis=1, keepdims=True)
    calib = np.divide(usage, sums, out=np.zeros_like(usage), where=sums > 0)
    calib_pos = {layer: p for p, layer in enumerate(calibration.layers)}
    rows: list[CoverageRow] = []
    for layer, experts in sorted(changed.items()):
        if layer not in calib_pos:
            continue
        for e, kind in sorted(experts.items()):
            if e >= calib.shape[1]:
                continue
            shares: dict[str, float] = {}
            for suite, r in sorted(routes.items()):
                pos = r.layers.index(layer)
                total = float(r.mass[:, pos].sum())
                shares[suite] = round(float(r.mass[:, pos, e].sum()) / total, 4) if total > 0 else 0.0
            c = float(calib[calib_pos[layer], e])
            floor = 0.5 / calib.shape[1]
            carries = [s for s, v in shares.items() if v >= max(2 * c, floor)]
            rows.append(CoverageRow(layer=layer, expert=e, kind=kind, calibration=round(c, 4), suites=shares, carries=carries))
    rows.sort(key=lambda row: (-len(row.carries), -max(row.suites.values(), default=0) / max(row.calibration, 1e-6)))
    n = sum(bool(row.carries) for row in rows)
    note = (f"{n} of {len(rows)} changed experts were rare on the calibration tokens ({calibration.source}) "
            "but carry at least twice that share of a suite's routing")  # fmt: skip
    return rows, note
