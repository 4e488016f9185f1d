"""Sequential early stopping in the gate: which budgets it covers, and their decisions (pure, records only).

A budget is *covered* when its test can be made look by look on a prefix of the items: a paired
``drop`` budget on a per-item metric (0/1 items: Tango's score test; continuous: the z-test of
``harness.stats.sequential``) that every baseline item scores, on items that do not cluster (both tests
assume independent items). A suite whose budgets are all covered runs in chunks, in the baseline's
stored item order (fixed before the run by a seeded selection, never by outcomes), and stops when every
budget is decided.

Error control: each look spends part of alpha (Lan-DeMets), so a capability's wrong PASS and wrong FAIL
each stay <= its alpha over all looks. Against the gate's Holm correction over ``m`` statistical
capabilities, a sequential one gets Bonferroni's alpha / m and the other ``m - s`` go through Holm at
alpha (m - s) / m; by the union bound the family-wise error stays <= alpha.
"""

from __future__ import annotations

from dataclasses import dataclass

from harness.gate._estimate import _clusters, _spec
from harness.gate._measured import Refused, finite
from harness.gate.budgets import Budget, GatePolicy
from harness.records import ItemRecord, MetricSpec, SequentialInfo, SuiteRun
from harness.stats.interval import Status
from harness.stats.sequential import (
    SequentialResult,
    Spending,
    look_bounds,
    look_points,
    sequential_noninferiority,
)


def not_covered(budget: Budget, base: SuiteRun) -> str | None:
    """Why ``budget`` cannot be decided sequentially on ``base``'s items; None when it can."""
    if budget.kind != "drop":
        return f"a {budget.kind} budget needs every item"
    spec = _spec(budget, [base])
    if spec is None:
        return f"the baseline has no metric {budget.metric!r}"
    if spec.kind == "perplexity":
        return "perplexity is a corpus ratio, not a mean over items"
    if spec.kind == "token":
        return "a per-token metric pools tokens, not a mean over items"
    if base.error or not base.records:
        return "the baseline run has no items"
    if not all(finite(r.scores.get(spec.name)) for r in base.records):
        return f"not every baseline item has a {spec.name!r} score"
    if _clusters(base.records) is not None:
        return "its items cluster (the sequential tests assume independent items)"
    return None


def _statistical(budgets: list[Budget]) -> int:
    """m: the capabilities decided by a test (``new_flags_count`` budgets are exact counts, outside the correction)."""
    return sum(not b.is_count for b in budgets)


def sequential_alpha(budgets: list[Budget], policy: GatePolicy) -> float:
    """One-sided alpha of each sequential capability: alpha / m with Holm over m statistical budgets."""
    m = _statistical(budgets)
    return policy.alpha / m if policy.correction == "holm" and m > 1 else policy.alpha


def remaining_alpha(budgets: list[Budget], policy: GatePolicy, n_sequential: int) -> float:
    """Alpha left for Holm over the non-sequential capabilities: alpha (m - s) / m."""
    m = _statistical(budgets)
    if policy.correction != "holm" or not n_sequential or m <= 1:
        return policy.alpha
    return policy.alpha * max(m - n_sequential, 0) / m


def stopped_early(run: SuiteRun | None) -> bool:
    info = run.sequential if run else None
    return info is not None and info.items_used < info.items_total


@dataclass(frozen=True)
class SequentialDecision:
    """A covered budget's sequential outcome, in the budget's display units."""

    result: SequentialResult
    estimate: float
    """Regression at the last look made."""
    low: float | None
    high: float | None
    """One-sided bounds at the alpha the last look made spent (None: no look was made)."""
    look_alpha: float | None
    p_value: float | None
    """p-value of the claim the last look supports (within or beyond)."""
    base_prefix: SuiteRun
    """The baseline run cut to the items the candidate answered, for the usual summaries."""


def prefix_of(base: SuiteRun, cand: SuiteRun) -> SuiteRun | Refused:
    """The baseline cut to the candidate's items, which must be its first items in its order."""
    ids = [r.item_id for r in cand.records]
    if ids != [r.item_id for r in base.records[: len(ids)]]:
        return Refused(
            f"the candidate's {len(ids)} items are not the baseline's first {len(ids)} in order", len(ids)
        )
    return base.model_copy(update={"records": base.records[: len(ids)]})


def _diffs(spec: MetricSpec, base: list[ItemRecord], cand: list[ItemRecord]) -> tuple[list[float], bool] | Refused:
    """Per-item regression (binary: -1/0/1; continuous: display units) and whether it is 0/1."""
    yb = [r.scores.get(spec.name) for r in base]
    yc = [r.scores.get(spec.name) for r in cand]
    bad = [r.item_id for r, v in zip(cand, yc, strict=True) if not finite(v)]
    if bad:
        return Refused(f"{len(bad)} candidate items have no finite {spec.name!r} score (e.g. {bad[0]!r})", len(cand))
    sign = 1.0 if spec.higher_is_better else -1.0
    binary = spec.kind in ("binary", "rate") and all(v in (0.0, 1.0) for v in yb + yc)
    unit = 1.0 if binary else spec.scale
    return [sign * unit * (b - c) for b, c in zip(yb, yc, strict=True)], binary  # type: ignore[operator]


def decide_budget(budget: Budget, base: SuiteRun, cand: SuiteRun, alpha: float) -> SequentialDecision | Refused:
    """Re-decide a covered budget from a sequentially run suite's records with the run's own look plan."""
    info = cand.sequential
    if info is None:
        raise ValueError(f"suite {cand.suite} was not run sequentially")
    if info.items_total != len(base.records):
        return Refused(f"the run was planned on {info.items_total} items, the baseline has {len(base.records)}")
    why = not_covered(budget, base)
    if why:
        return Refused(f"the suite stopped early and this budget cannot be decided sequentially: {why}")
    base_prefix = prefix_of(base, cand)
    if isinstance(base_prefix, Refused):
        return base_prefix
    if len(cand.records) != info.items_used:
        return Refused(f"{len(cand.records)} candidate records, the run says {info.items_used} were used")
    spec = _spec(budget, [base])
    assert spec is not None  # not_covered checked it
    diffs = _diffs(spec, base_prefix.records, cand.records)
    if isinstance(diffs, Refused):
        return diffs
    values, binary = diffs
    unit = spec.scale if binary else 1.0
    result = sequential_noninferiority(
        values, budget.max / unit, alpha=alpha, looks=info.looks, spending=info.spending, binary=binary,
        min_items=info.min_items, items_total=info.items_total,
    )  # fmt: skip
    if not result.looks:
        return SequentialDecision(result, 0.0, None, None, None, None, base_prefix)
    last = result.looks[-1]
    low, high = look_bounds(values[: last.n], last.alpha, binary) if last.alpha > 0 else (None, None)
    return SequentialDecision(
        result, last.estimate * unit, None if low is None else low * unit, None if high is None else high * unit,
        last.alpha, min(last.p_within, last.p_beyond), base_prefix,
    )  # fmt: skip


def suite_decisions(budgets: list[Budget], base: SuiteRun, cand: SuiteRun, alpha: float) -> dict[str, Status]:
    """Budget label -> PASS / FAIL / INCONCLUSIVE (a refused comparison counts as decided: FAIL)."""
    out: dict[str, Status] = {}
    for budget in budgets:
        d = decide_budget(budget, base, cand, alpha)
        out[budget.display_label] = "FAIL" if isinstance(d, Refused) else d.result.decision
    return out


@dataclass(frozen=True)
class SequentialRule:
    """The gate's stopping rule for suites run in chunks (``harness.runner.StoppingRule``), pure.

    A suite runs in chunks when every budget on it is covered; at each planned look the rule re-decides
    those budgets on the items seen so far, and the suite stops when none is undecided.
    """

    looks: int
    spending: Spending
    min_items: int
    alpha: float
    """One-sided alpha per sequential capability (``sequential_alpha``)."""
    budgets: dict[str, list[Budget]]
    """Suite -> its budgets, for the suites whose budgets are all covered."""
    baseline: dict[str, SuiteRun]
    notes: dict[str, str]
    """Suite -> why it runs in full (a budget the sequential test does not cover)."""

    def why_not(self, suite: str) -> str | None:
        """Why ``suite`` runs in full, or None when it runs in chunks."""
        if suite in self.notes:
            return self.notes[suite]
        return None if suite in self.budgets else "no budget"

    def look_points(self, total: int) -> list[int]:
        return look_points(total, self.looks, self.min_items)

    def look(self, suite: str, partial: SuiteRun, total: int) -> SequentialInfo:
        """The run so far, as the verdict will re-decide it: the plan and each budget's decision."""
        info = SequentialInfo(items_total=total, items_used=len(partial.records), looks=self.looks,
                              spending=self.spending, min_items=self.min_items, alpha=self.alpha)  # fmt: skip
        run = partial.model_copy(update={"sequential": info})
        info.decisions = dict(suite_decisions(self.budgets[suite], self.baseline[suite], run, self.alpha))
        return info


def sequential_rule(
    budgets: list[Budget], baseline: dict[str, SuiteRun], policy: GatePolicy, *, looks: int, spending: Spending,
    min_items: int,
) -> SequentialRule:  # fmt: skip
    """Which suites run in chunks (those with budgets, every one covered by the sequential test), and when they stop."""
    by_suite: dict[str, list[Budget]] = {}
    for budget in budgets:
        by_suite.setdefault(budget.suite, []).append(budget)
    chunked, notes = {}, {}
    for suite, own in by_suite.items():
        base = baseline.get(suite)
        reasons = [f"{b.display_label}: {why}" for b in own if base is None or (why := not_covered(b, base))]
        if base is None:
            notes[suite] = "the baseline has no run of it"
        elif reasons:
            notes[suite] = reasons[0]
        else:
            chunked[suite] = own
    return SequentialRule(looks, spending, min_items, sequential_alpha(budgets, policy), chunked, baseline, notes)
