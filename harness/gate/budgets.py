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
from harness.stats import mcnemar_exact_p, paired_items_to_pass, tango_bounds

BudgetKind = Literal["drop", "ratio", "new_flags", "rate_increase", "new_flags_count", "max_mean"]

ANY_FLAG = "any"
"""``metric`` value for flag budgets meaning "any flag or failed check"."""
PAIRED_FLAG_KINDS: tuple[BudgetKind, ...] = ("new_flags", "rate_increase")
"""Flag budgets decided by the paired test on flag flips (Tango score bounds, in points)."""
FLAG_KINDS: tuple[BudgetKind, ...] = (*PAIRED_FLAG_KINDS, "new_flags_count")


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
    new_flags: the net rate of newly flagged items in points, (newly flagged - cleared) / items, by a
    paired test on the flag flips; a flag is evidence only against a healthy item (newly flagged: no
    flag or failed check on the baseline; cleared: the mirror image). rate_increase: the same test.
    new_flags_count: a literal count of newly flagged items (exact, no test: one noisy item counts
    as much as a regression). max_mean: the candidate's mean per-item score (e.g. KL) itself."""
    max: float
    """The margin: the largest regression that still passes."""
    label: str | None = None
    """Name shown in reports; defaults to ``suite/metric``."""
    churn_multiple: float | None = Field(None, gt=0, le=100)
    """Widen ``max`` to this multiple of the baseline's own churn on the capability (its largest change
    under benign perturbations, ``moegate baseline calibrate``) where that is wider; ``max`` stays the floor."""

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
        if self.kind == "new_flags_count" and (self.max < 0 or self.max != int(self.max)):
            raise ValueError(f"{where}: new_flags_count max is a count of items (0, 1, 2, ...), got {self.max}")
        if self.kind in PAIRED_FLAG_KINDS and not 0 < self.max <= 100:
            raise ValueError(
                f"{where}: {self.kind} max is a tolerated rate in points, in (0, 100] (e.g. 10), got {self.max:g}; "
                'a rate of 0 can never be confirmed — for a literal count of newly flagged items use kind = "new_flags_count"'
            )
        if self.kind == "drop" and self.max < 0:
            raise ValueError(
                f"{where}: {self.kind} max must be >= 0 (a tolerated regression), got {self.max}"
            )
        return self

    @property
    def display_label(self) -> str:
        return self.label or f"{self.suite}/{self.metric}"

    @property
    def is_count(self) -> bool:
        """Decided by an exact count, outside the tests and the multiple-testing family."""
        return self.kind == "new_flags_count"


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


def flag_budget_warnings(budgets: list[Budget], planned_items: dict[str, int | None], alpha: float) -> list[str]:
    """Flag budgets that cannot tell one noisy item from a regression, one line each (for ``load_gate``).

    A paired budget warns when its suite (``planned_items``: suite -> items, None when unknown) is too
    small for a candidate with one noisy newly flagged item, and nothing else changed, to PASS at
    ``alpha``. A count budget warns when ``max + 1`` newly flagged items — enough to FAIL it — are
    not evidence of a regression (exact McNemar p > ``alpha``): one line per suite.
    """
    out: list[str] = []
    counted: dict[str, list[Budget]] = {}
    for budget in budgets:
        n = planned_items.get(budget.suite)
        if budget.kind in PAIRED_FLAG_KINDS and n:
            upper = 100 * tango_bounds(1, 0, n, alpha)[1]
            if upper > budget.max:
                need = paired_items_to_pass(1, 0, budget.max / 100, alpha)
                more = f"about {need} items" if need else "more items than is practical"
                out.append(
                    f"budget '{budget.display_label}': suite {budget.suite} has {n} items, too few to tell one noisy "
                    f"item from a regression (one newly flagged item gives an upper bound of {upper:.0f} points, "
                    f"budget {budget.max:g}); it needs {more}, or a larger max"
                )
        elif budget.is_count and mcnemar_exact_p(int(budget.max) + 1, 0) > alpha:
            counted.setdefault(budget.suite, []).append(budget)
    for suite, group in counted.items():
        n = planned_items.get(suite)
        labels = ", ".join(f"'{b.display_label}'" for b in group)
        k = int(min(b.max for b in group)) + 1
        noisy = f"{k} newly flagged item{'s' if k > 1 else ''}"
        line = f"suite {suite}{f' has {n} items' if n else ''}: literal count budgets {labels} FAIL on {noisy} "
        line += f"(exact McNemar p {mcnemar_exact_p(k, 0):.2g}: no evidence of a regression)"
        if n:
            line += f"; a paired new_flags budget would tolerate one noisy item only at max >= {100 * tango_bounds(1, 0, n, alpha)[1]:.0f} points"
        out.append(line)
    return out
