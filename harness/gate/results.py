"""What the gate decides, as typed models: one result per capability and the overall verdict.

Pure data (pydantic), shared by the deciding code (``verdict``), the reports and the pytest plugin.
``GateVerdict.schema_version`` is checked whenever a verdict is read back (``read_verdict``).
"""

from __future__ import annotations

from pydantic import BaseModel, Field, ValidationError, computed_field

from harness.errors import UserError
from harness.gate.budgets import BudgetKind, GatePolicy
from harness.stats.interval import Status

__all__ = [
    "VERDICT_SCHEMA_VERSION",
    "CapabilityResult",
    "Flips",
    "GateVerdict",
    "SequentialLook",
    "SequentialSummary",
    "Status",
    "WorstItem",
    "read_verdict",
    "verdict_exit_code",
]

VERDICT_SCHEMA_VERSION = 1


class SequentialLook(BaseModel):
    n: int
    """Items seen at this look."""
    estimate: float
    """Regression so far, in the budget's units."""
    alpha: float
    """One-sided alpha this look spent on each side."""
    p_within: float
    p_beyond: float


class SequentialSummary(BaseModel):
    """How a capability of a suite run in chunks was decided (``[gate] sequential = true``)."""

    items_used: int
    """Items the decision used (those the candidate answered, or fewer when decided earlier)."""
    items_total: int
    looks_planned: int
    spending: str
    alpha: float
    """This capability's alpha over all looks (the gate's alpha / m with Holm: Bonferroni)."""
    looks: list[SequentialLook] = Field(default_factory=list)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def items_saved(self) -> int:
        return self.items_total - self.items_used



class Flips(BaseModel):
    right_to_wrong: int
    """Items the baseline got right and the candidate wrong (or: newly flagged)."""
    wrong_to_right: int
    """Items the candidate fixed (or: no longer flagged)."""


class WorstItem(BaseModel):
    item_id: str
    baseline_text: str | None = None
    """Short baseline output (or prompt when nothing was generated)."""
    candidate_text: str | None = None
    baseline_score: float | None = None
    candidate_score: float | None = None
    note: str = ""


class CapabilityResult(BaseModel):
    """One budget's outcome. ``change``, ``ci_low``, ``ci_high`` and ``budget`` share the budget's scale
    (the regression: bigger = worse), so a bar and a budget line can be drawn on one axis."""

    label: str
    suite: str
    metric: str
    kind: BudgetKind
    status: Status
    baseline_value: float | None = None
    """Metric in display units (accuracy in points, perplexity, flagged items, flag rate in points)."""
    candidate_value: float | None = None
    change: float | None = None
    """The regression the budget bounds (drop in points, ratio, count, rate increase, mean)."""
    ci_low: float | None = None
    """One-sided lower bound of ``change`` at level ``1 - adjusted_alpha``."""
    ci_high: float | None = None
    """One-sided upper bound of ``change`` at level ``1 - adjusted_alpha``."""
    budget: float
    reason: str
    p_value: float | None = None
    """One-sided p-value of the claim the data support (within budget, or beyond it)."""
    adjusted_alpha: float | None = None
    """Level this capability was tested at after the multiple-testing correction."""
    mcnemar_p: float | None = None
    """Exact one-sided McNemar p-value of "any regression" (0/1 metrics and flag rates)."""
    method: str = ""
    n_items: int = 0
    flips: Flips | None = None
    worst_items: list[WorstItem] = Field(default_factory=list)
    changed_items: list[str] = Field(default_factory=list)
    """Every flipped (right->wrong) or newly flagged item id."""
    items_to_decide: int | None = None
    """For INCONCLUSIVE: items (same effect and variance) at which the bound would clear the budget."""
    sequential: SequentialSummary | None = None
    """Set when the capability was decided by sequential looks; its status is their decision."""
    baseline_churn: str | None = None
    """The baseline's own largest change on this capability under benign perturbations (calibrated baselines)."""

    def explain(self, max_items: int = 5) -> str:
        """Several lines for a test failure or a log: the reason, then the worst items side by side."""
        lines = [f"{self.label}: {self.status} — {self.reason}"]
        for w in self.worst_items[:max_items]:
            lines.append(
                f"  {w.item_id} ({w.note}): baseline {w.baseline_text!r} -> candidate {w.candidate_text!r}"
            )
        more = len(self.changed_items) - min(max_items, len(self.worst_items))
        if self.changed_items and more > 0:
            lines.append(f"  … and {more} more")
        return "\n".join(lines)


class GateVerdict(BaseModel):
    schema_version: int = VERDICT_SCHEMA_VERSION
    overall: Status
    capabilities: list[CapabilityResult]
    policy: GatePolicy

    @property
    def ok(self) -> bool:
        """What CI should do: True only for an overall PASS."""
        return self.overall == "PASS"

    def summary(self) -> str:
        """One line for a terminal: ``FAIL: 2 failed, 1 inconclusive, 4 passed (7 capabilities)``."""
        n = {s: sum(c.status == s for c in self.capabilities) for s in ("FAIL", "INCONCLUSIVE", "PASS")}
        parts = [f"{n['FAIL']} failed"] * bool(n["FAIL"]) + [f"{n['INCONCLUSIVE']} inconclusive"] * bool(
            n["INCONCLUSIVE"]
        )
        parts.append(f"{n['PASS']} passed")
        return f"{self.overall}: {', '.join(parts)} ({len(self.capabilities)} capabilities)"


def verdict_exit_code(overall: Status) -> int:
    """Process exit code: 0 PASS, 1 FAIL, 3 INCONCLUSIVE (2 is reserved for user errors)."""
    return {"PASS": 0, "FAIL": 1, "INCONCLUSIVE": 3}[overall]


def read_verdict(data: object, *, where: str = "verdict") -> GateVerdict:
    """A verdict read back (from report.json), refused in one line when another moegate wrote it."""
    version = data.get("schema_version") if isinstance(data, dict) else None
    if version != VERDICT_SCHEMA_VERSION:
        raise UserError(
            f"{where} has verdict schema version {version!r}; this moegate reads version {VERDICT_SCHEMA_VERSION}",
            "recompute it with this moegate: moegate verdict RUN_DIR --gate GATE",
        )
    try:
        return GateVerdict.model_validate(data)
    except ValidationError as exc:
        raise UserError(f"{where} is not a valid moegate verdict ({exc.errors()[0]['msg']})",
                        "recompute it: moegate verdict RUN_DIR --gate GATE") from exc
