"""The baseline's own churn: how far each capability moved when the baseline was gated against benign
perturbations of itself (experts renumbered, a bf16 round trip, another batch size). Pure: verdicts in,
a calibration out; budgets and verdicts read it.

A capability that FAILs the baseline under a benign perturbation measures noise with that budget; a
candidate's change is only news when it is beyond what such perturbations already produce.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from harness.gate.budgets import Budget
from harness.gate.results import CapabilityResult, GateVerdict, Status

CALIBRATION_SCHEMA_VERSION = 1


class ObservedChange(BaseModel):
    """One capability of the baseline gated against one perturbation of itself."""

    model_config = ConfigDict(frozen=True)

    status: Status
    change: float | None
    ci_low: float | None = None
    ci_high: float | None = None
    budget: float
    flips: tuple[int, int] | None = None
    """(right->wrong or newly flagged, wrong->right or cleared)."""
    n_items: int = 0
    changed_items: list[str] = Field(default_factory=list)
    """The items that flipped or were newly flagged."""


class Perturbation(BaseModel):
    """What was changed, and what every capability did."""

    name: str
    description: str
    fingerprint: str
    capabilities: dict[str, ObservedChange] = Field(default_factory=dict)
    """Budget label -> what the baseline did under this perturbation."""


class Calibration(BaseModel):
    """Stored beside a baseline (``calibration.json``), bound to its manifest by hash."""

    schema_version: int = CALIBRATION_SCHEMA_VERSION
    manifest_sha256: str
    created_utc: str
    perturbations: list[Perturbation] = Field(default_factory=list)

    def churn(self, label: str) -> tuple[float, str] | None:
        """The largest change (the budget's regression scale: bigger = worse) this capability showed, and
        under which perturbation; None when no perturbation measured it."""
        seen = [(p.capabilities[label].change, p.name) for p in self.perturbations
                if label in p.capabilities and p.capabilities[label].change is not None]  # fmt: skip
        if not seen:
            return None
        change, name = max(seen, key=lambda pair: pair[0] if pair[0] is not None else float("-inf"))
        return (float(change) if change is not None else 0.0), name

    def failures(self) -> list[tuple[str, str, ObservedChange]]:
        """(budget label, perturbation, what it did) for every capability a benign perturbation FAILed."""
        return [(label, p.name, seen) for p in self.perturbations for label, seen in p.capabilities.items()
                if seen.status == "FAIL"]  # fmt: skip


def observed(result: CapabilityResult) -> ObservedChange:
    flips = (result.flips.right_to_wrong, result.flips.wrong_to_right) if result.flips else None
    return ObservedChange(status=result.status, change=result.change, ci_low=result.ci_low, ci_high=result.ci_high,
                          budget=result.budget, flips=flips, n_items=result.n_items,
                          changed_items=list(result.changed_items))  # fmt: skip


def perturbation_of(name: str, description: str, fingerprint: str, verdict: GateVerdict) -> Perturbation:
    return Perturbation(name=name, description=description, fingerprint=fingerprint,
                        capabilities={c.label: observed(c) for c in verdict.capabilities})  # fmt: skip


def _neutral(budget: Budget) -> float:
    """The change of a candidate identical to the baseline, on the budget's scale."""
    return 1.0 if budget.kind == "ratio" else 0.0


def with_churn(budgets: list[Budget], calibration: Calibration | None) -> list[Budget]:
    """Budgets whose ``churn_multiple`` is set, with ``max`` raised to ``neutral + multiple x churn``
    where that is larger (``max`` stays the floor: a churn of 0 leaves the budget as written)."""
    out = []
    for budget in budgets:
        if budget.churn_multiple is None:
            out.append(budget)
            continue
        churn = calibration.churn(budget.display_label) if calibration else None
        if churn is None:
            raise ValueError(f"budget {budget.display_label} is set as a multiple of the baseline's churn, "
                             "which no calibration measured")  # fmt: skip
        neutral = _neutral(budget)
        scaled = neutral + budget.churn_multiple * max(churn[0] - neutral, 0.0)
        out.append(budget.model_copy(update={"max": max(budget.max, scaled)}))
    return out


def churn_note(budget_label: str, calibration: Calibration | None) -> str | None:
    """One phrase for a report: the baseline's own largest change on this capability."""
    churn = calibration.churn(budget_label) if calibration else None
    if churn is None:
        return None
    return f"{churn[0]:.4g} under {churn[1]}"


def annotated(verdict: GateVerdict, calibration: Calibration | None) -> GateVerdict:
    """``verdict`` with each capability's ``baseline_churn`` set from the calibration."""
    if calibration is None:
        return verdict
    caps = [c.model_copy(update={"baseline_churn": churn_note(c.label, calibration)}) for c in verdict.capabilities]
    return verdict.model_copy(update={"capabilities": caps})
