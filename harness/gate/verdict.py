"""From budgets and two sets of suite runs to a verdict CI can act on (pure, no models, no I/O).

Non-inferiority per capability: with the regression ``r`` (bigger = worse) and the budget ``m``,
PASS when the one-sided upper bound of ``r`` is within ``m``, FAIL when the one-sided lower bound is
beyond ``m``, INCONCLUSIVE otherwise. Each statistical capability contributes the p-value of the
claim its data support (within or beyond); Holm across capabilities decides which claims stand and
sets the per-capability level of its bounds. Exact counts (``new_flags_count``) and refused
comparisons (errors, missing items) are decided outside the family.
"""

from __future__ import annotations

from harness.gate._estimate import FlagOverrides, measure
from harness.gate._measured import Measured, Refused
from harness.gate._sequential import (
    decide_budget,
    not_covered,
    remaining_alpha,
    sequential_alpha,
    stopped_early,
)
from harness.gate.budgets import ANY_FLAG, PAIRED_FLAG_KINDS, Budget, GatePolicy, check_labels
from harness.gate.results import (
    CapabilityResult,
    Flips,
    GateVerdict,
    SequentialLook,
    SequentialSummary,
    Status,
)
from harness.records import SuiteRun, display_output
from harness.stats import holm, items_to_decide
from harness.stats.interval import Estimator


def _short(text: str | None, limit: int = 240) -> str | None:
    if text is None:
        return None
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _num(x: float | None) -> str:
    if x is None:
        return "n/a"
    return f"{x:.3g}" if abs(x) < 0.01 or abs(x) >= 1000 else f"{x:.2f}".rstrip("0").rstrip(".")


def _pct(alpha: float) -> str:
    return f"{100 * (1 - alpha):.3g}%"


def _what(budget: Budget, m: Measured, change: float, higher_is_better: bool, scale: float) -> str:
    unit = " points" if budget.kind in PAIRED_FLAG_KINDS or scale == 100 else ""
    if budget.kind == "drop":
        word = (
            ("dropped" if change >= 0 else "rose")
            if higher_is_better
            else ("rose" if change >= 0 else "fell")
        )
        return f"{budget.metric} {word} {_num(abs(change))}{unit}"
    if budget.kind == "ratio":
        return f"{budget.metric} ratio {change:.4f}"
    if budget.kind in PAIRED_FLAG_KINDS:
        flag = "any flag" if budget.metric == ANY_FLAG else f"{budget.metric!r}"
        return f"{flag} net rate of new flags {'rose' if change >= 0 else 'fell'} {_num(abs(change))} points"
    if budget.kind == "max_quantile":
        return f"{budget.metric} {change:.4g}"
    return f"mean {budget.metric} {change:.4g}"


def _decide_count(budget: Budget, m: Measured) -> CapabilityResult:
    count = int(m.count or 0)
    status: Status = "FAIL" if count > budget.max else "PASS"
    flag = "flagged" if budget.metric == ANY_FLAG else f"{budget.metric!r}"
    some = ", ".join(m.changed[:5]) + (", …" if len(m.changed) > 5 else "")
    reason = f"{count} newly {flag} item{'s' if count != 1 else ''}, budget {budget.max:g}"
    reason += (": " + some if some else "") + (": beyond budget" if status == "FAIL" else ": within budget")
    reason += _not_evidence(m)
    return _result(budget, status, m, reason, change=float(count), low=float(count), high=float(count))


def _not_evidence(m: Measured) -> str:
    ids = ", ".join(m.not_evidence[:3]) + (", …" if len(m.not_evidence) > 3 else "")
    return f" ({len(m.not_evidence)} more flagged on items the baseline already failed, not counted: {ids})" if ids else ""


def _result(
    budget: Budget, status: Status, m: Measured | Refused, reason: str, **kw: object
) -> CapabilityResult:
    extra: dict[str, object] = {}
    if isinstance(m, Measured):
        extra = dict(
            baseline_value=m.baseline_value,
            candidate_value=m.candidate_value,
            mcnemar_p=m.mcnemar_p,
            method=m.method,
            flips=Flips(right_to_wrong=m.flips[0], wrong_to_right=m.flips[1]) if m.flips else None,
            changed_items=m.changed,
            worst_items=[w.model_copy() for w in m.worst],
        )
    return CapabilityResult(
        label=budget.display_label, suite=budget.suite, metric=budget.metric, kind=budget.kind, status=status,
        budget=budget.max, reason=reason, n_items=m.n_items,
        ci_low=kw.get("low"), ci_high=kw.get("high"), change=kw.get("change"),
        p_value=kw.get("p"), adjusted_alpha=kw.get("alpha"), items_to_decide=kw.get("need"), **extra,
    )  # fmt: skip


def _attach_texts(
    result: CapabilityResult, baseline: dict[str, SuiteRun], candidate: dict[str, SuiteRun]
) -> None:
    """Fill the short baseline/candidate texts of the worst items from the records."""
    runs = [baseline.get(result.suite), candidate.get(result.suite)]
    by_id = [{r.item_id: r for r in run.records} if run else {} for run in runs]
    for w in result.worst_items:
        w.baseline_text, w.candidate_text = (_short(display_output(t.get(w.item_id))) for t in by_id)


def evaluate_gate(
    baseline: dict[str, SuiteRun],
    candidate: dict[str, SuiteRun],
    budgets: list[Budget],
    policy: GatePolicy | None = None,
    *,
    flags: FlagOverrides | None = None,
) -> GateVerdict:
    """Decide every budget and the overall verdict.

    Args:
        baseline, candidate: suite name -> run. Items are paired by ``item_id``.
        budgets: one per capability.
        policy: confidence, correction and what INCONCLUSIVE means.
        flags: optional extra flags per suite and item id, ``(baseline_flags, candidate_flags)``,
            merged with the records' own flags and failed checks.
    """
    policy = policy or GatePolicy()
    check_labels(budgets)
    sequential = _sequential_results(budgets, baseline, candidate, policy, flags)
    measured = [
        None if i in sequential else
        measure(b, baseline, candidate, flags=flags, n_resamples=policy.bootstrap_resamples, seed=policy.seed)
        for i, b in enumerate(budgets)
    ]  # fmt: skip
    results: list[CapabilityResult | None] = [sequential.get(i) for i in range(len(budgets))]
    family: list[int] = []
    for i, (budget, m) in enumerate(zip(budgets, measured, strict=True)):
        if m is None:
            continue
        if isinstance(m, Refused):
            results[i] = _result(budget, "FAIL", m, f"cannot compare: {m.reason}")
        elif m.estimator is None:
            results[i] = _decide_count(budget, m)
        else:
            family.append(i)
    alpha = round(remaining_alpha(budgets, policy, len(sequential)), 12)
    estimators = {i: _estimator(measured[i]) for i in family}
    p_within = {i: est.p_within(budgets[i].max) for i, est in estimators.items()}
    p_beyond = {i: est.p_beyond(budgets[i].max) for i, est in estimators.items()}
    decisive = [min(p_within[i], p_beyond[i]) for i in family]
    if policy.correction == "holm" and family:
        h = holm(decisive, alpha)
        reject, levels = h.reject, [round(t, 12) for t in h.thresholds]
    else:
        reject, levels = [p <= alpha for p in decisive], [alpha] * len(family)
    for j, i in enumerate(family):
        m = measured[i]
        assert isinstance(m, Measured)
        results[i] = _decide(budgets[i], m, p_within[i], p_beyond[i], reject[j], levels[j], baseline, candidate)
    final = [r for r in results if r is not None]
    for r in final:
        _attach_texts(r, baseline, candidate)
    statuses = {r.status for r in final}
    overall: Status = "PASS"
    if "FAIL" in statuses:
        overall = "FAIL"
    elif "INCONCLUSIVE" in statuses and policy.inconclusive == "fail":
        overall = "INCONCLUSIVE"
    return GateVerdict(overall=overall, capabilities=final, policy=policy)


def _estimator(m: Measured | Refused | None) -> Estimator:
    assert isinstance(m, Measured) and m.estimator is not None
    return m.estimator


def _direction(budget: Budget, runs: list[SuiteRun | None]) -> tuple[bool, float]:
    """(higher_is_better, scale) of the budget's metric, for wording."""
    for run in runs:
        for spec in run.metrics if run else []:
            if spec.name == budget.metric:
                return spec.higher_is_better, spec.scale
    return True, 1.0


def _decide(
    budget: Budget, m: Measured, p_in: float, p_out: float, rejected: bool, level: float,
    baseline: dict[str, SuiteRun], candidate: dict[str, SuiteRun],
) -> CapabilityResult:  # fmt: skip
    est = m.estimator
    assert est is not None
    low, high = est.bounds(level)
    change = est.estimate
    status: Status = "INCONCLUSIVE"
    if rejected:
        status = "PASS" if p_in <= p_out else "FAIL"
    need = (
        None
        if status != "INCONCLUSIVE"
        else items_to_decide(change, low, high, budget.max, m.n_items, log_scale=m.log_scale)
    )
    hib, scale = _direction(budget, [baseline.get(budget.suite), candidate.get(budget.suite)])
    what = _what(budget, m, change, hib, scale)
    flips = (
        f", {m.flips[0]} right→wrong / {m.flips[1]} wrong→right" if m.flips and budget.kind == "drop" else ""
    )
    if m.flips and budget.kind in PAIRED_FLAG_KINDS:
        flips = f", {m.flips[0]} newly flagged / {m.flips[1]} cleared"
    fmt = (lambda x: f"{x:.4f}") if budget.kind == "ratio" else _num
    reason = f"{what} (bounds {fmt(low)}–{fmt(high)} at {_pct(level)}{flips}), budget {_num(budget.max)}: "
    if status == "PASS":
        reason += "upper bound within budget"
    elif status == "FAIL":
        reason += "confidently beyond budget"
    elif not rejected and min(p_in, p_out) <= level:
        reason += "not decided: the multiple-testing correction stopped at a less certain capability"
    else:
        reason += "the interval straddles the budget; " + (
            f"about {need} items would decide it" if need else "more items would not decide it"
        )
    reason += _not_evidence(m)
    return _result(budget, status, m, reason, change=change, low=low, high=high,
                   p=p_in if p_in <= p_out else p_out, alpha=level, need=need)  # fmt: skip


def _sequential_results(
    budgets: list[Budget], baseline: dict[str, SuiteRun], candidate: dict[str, SuiteRun], policy: GatePolicy,
    flags: FlagOverrides | None,
) -> dict[int, CapabilityResult]:  # fmt: skip
    """Budget index -> result, for budgets of suites the candidate ran sequentially.

    A budget the sequential test covers gets the sequential decision; one it does not cover is
    refused when the suite stopped early, and left to the usual test when every item was run.
    """
    alpha = sequential_alpha(budgets, policy)
    out: dict[int, CapabilityResult] = {}
    for i, budget in enumerate(budgets):
        base, cand = baseline.get(budget.suite), candidate.get(budget.suite)
        if base is None or cand is None or cand.sequential is None or cand.error or base.error:
            continue
        if stopped_early(cand) or not_covered(budget, base) is None:
            out[i] = _decide_sequential(budget, base, cand, alpha, policy, flags)
    return out


def _decide_sequential(
    budget: Budget, base: SuiteRun, cand: SuiteRun, alpha: float, policy: GatePolicy, flags: FlagOverrides | None
) -> CapabilityResult:  # fmt: skip
    d = decide_budget(budget, base, cand, alpha)
    m = d if isinstance(d, Refused) else measure(
        budget, {budget.suite: d.base_prefix}, {budget.suite: cand}, flags=flags,
        n_resamples=policy.bootstrap_resamples, seed=policy.seed,
    )  # fmt: skip
    if isinstance(m, Refused):
        return _result(budget, "FAIL", m, f"cannot compare: {m.reason}")
    assert not isinstance(d, Refused) and cand.sequential is not None
    res, info = d.result, cand.sequential
    hib, scale = _direction(budget, [base, cand])
    what = _what(budget, m, d.estimate, hib, scale)
    flips = f", {m.flips[0]} right→wrong / {m.flips[1]} wrong→right" if m.flips else ""
    bounds = f"bounds {_num(d.low)}–{_num(d.high)} at {_pct(d.look_alpha)}" if d.look_alpha else "no look made"
    outcome = {
        "PASS": "upper bound within budget",
        "FAIL": "confidently beyond budget",
        "INCONCLUSIVE": "not decided after all items" if res.items_used == res.items_total
        else "not decided when the suite stopped",
    }[res.decision]
    reason = (
        f"{what} ({bounds}{flips}), budget {_num(budget.max)}: {outcome}; sequential look {len(res.looks)} of "
        f"{info.looks}, {res.items_used}/{res.items_total} items (saved {res.items_saved})"
    )
    result = _result(budget, res.decision, m, reason, change=d.estimate, low=d.low, high=d.high, p=d.p_value,
                     alpha=d.look_alpha)  # fmt: skip
    test = "Tango score test" if m.flips else "z-test"
    result.method = f"group-sequential {test}, {info.spending} alpha spending over {info.looks} looks"
    result.n_items = res.items_used
    result.sequential = SequentialSummary(
        items_used=res.items_used, items_total=res.items_total, looks_planned=info.looks, spending=info.spending,
        alpha=alpha, looks=[SequentialLook(n=k.n, estimate=k.estimate * (scale if m.flips else 1.0), alpha=k.alpha,
                                           p_within=k.p_within, p_beyond=k.p_beyond) for k in res.looks],
    )  # fmt: skip
    return result
