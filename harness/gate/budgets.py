"""Budgets: the non-inferiority margin per capability, and the gate's statistical policy.

A budget says how much worse the candidate may be on one metric of one suite. Every ``kind`` is
expressed as a *regression* (bigger = worse) so one rule decides them all: PASS when the upper
confidence bound of the regression is within ``max``, FAIL when its lower bound is beyond it.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from harness.errors import UserError

BudgetKind = Literal["drop", "ratio", "new_flags", "rate_increase", "max_mean"]

ANY_FLAG = "any"
"""``metric`` value for ``new_flags`` / ``rate_increase`` meaning "any flag or failed check"."""


class Budget(BaseModel):
    """How much worse the candidate may be on one capability."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    suite: str
    """Suite name (key of the SuiteRun dicts)."""
    metric: str
    """``MetricSpec.name`` for drop / ratio / max_mean; a flag or check name (or ``"any"``) for
    new_flags / rate_increase."""
    kind: BudgetKind
    """drop: baseline minus candidate in display units (``MetricSpec.scale``, e.g. points) for
    higher-is-better metrics, candidate minus baseline for lower-is-better ones. ratio: candidate /
    baseline for lower-is-better metrics (perplexity), baseline / candidate for higher-is-better.
    new_flags: count of items flagged in the candidate but not the baseline. rate_increase: flag
    rate increase in points. max_mean: the candidate's mean per-item score (e.g. KL) itself."""
    max: float
    """The margin: the largest regression that still passes."""
    label: str | None = None
    """Name shown in reports; defaults to ``suite/metric``."""

    @field_validator("suite", "metric")
    @classmethod
    def _non_empty(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must be a non-empty name")
        return v

    @model_validator(mode="after")
    def _check_max(self) -> Budget:
        where = f"budget {self.display_label}"
        if not math.isfinite(self.max):
            raise ValueError(f"{where}: max must be a finite number, got {self.max}")
        if self.kind == "ratio" and self.max <= 0:
            raise ValueError(f"{where}: a ratio budget needs max > 0 (e.g. 1.05 for +5%), got {self.max}")
        if self.kind == "new_flags" and (self.max < 0 or self.max != int(self.max)):
            raise ValueError(f"{where}: new_flags max is a count of items (0, 1, 2, ...), got {self.max}")
        if self.kind in ("drop", "rate_increase") and self.max < 0:
            raise ValueError(
                f"{where}: {self.kind} max must be >= 0 (a tolerated regression), got {self.max}"
            )
        return self

    @property
    def display_label(self) -> str:
        return self.label or f"{self.suite}/{self.metric}"


class GatePolicy(BaseModel):
    """How sure the gate must be, and what an undecided capability means."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    confidence: float = Field(default=0.95, gt=0.5, lt=1.0)
    """Family-wise confidence of each one-sided claim (PASS or FAIL)."""
    correction: Literal["holm", "none"] = "holm"
    """Multiple-testing correction across capabilities."""
    inconclusive: Literal["fail", "pass"] = "fail"
    """``fail``: an INCONCLUSIVE capability makes the overall verdict INCONCLUSIVE (exit 3, a CI
    failure). ``pass``: INCONCLUSIVE capabilities are tolerated and the overall verdict is PASS."""

    bootstrap_resamples: int = Field(default=10_000, ge=1_000, le=1_000_000)
    """Resamples per bootstrap interval."""
    seed: int = 0
    """Base seed of every bootstrap (each capability derives its own from its name): verdicts repeat."""

    @property
    def alpha(self) -> float:
        return 1.0 - self.confidence


def check_labels(budgets: list[Budget]) -> None:
    """Every budget needs a budget to decide, and a label of its own (reports and JUnit name them)."""
    if not budgets:
        raise UserError("the gate has no budgets", "add at least one [[budgets]] to the gate file")
    labels = [b.display_label for b in budgets]
    dup = sorted({x for x in labels if labels.count(x) > 1})
    if dup:
        raise UserError(f"two budgets share the label {dup[0]!r}", "give each budget a distinct label")
