"""Turn one budget and two suite runs into a regression estimate (pure; no decisions here).

Each ``Measured`` carries an estimator with ``bounds(alpha)``, ``p_within(margin)`` and
``p_beyond(margin)`` on the budget's scale, so ``verdict`` can apply one rule (and Holm) to all kinds.
Anything that makes a comparison silently wrong (missing items, errors, absent scores) becomes a
``Refused`` with a sentence saying why: the gate fails it instead of guessing.
"""

from __future__ import annotations

import math
import zlib
from collections import Counter

import numpy as np

from harness.errors import UserError
from harness.gate._measured import Measured, Refused, finite, item_scores, worst_by
from harness.gate._token import token_bound, token_drop
from harness.gate.budgets import ANY_FLAG, FLAG_KINDS, Budget
from harness.gate.results import WorstItem
from harness.records import ItemRecord, MetricSpec, SuiteRun
from harness.stats import (
    TInterval,
    clustered_se,
    mcnemar_exact_p,
    mean_difference,
    mean_of,
    perplexity_difference,
    perplexity_ratio,
    ratio_of_means,
)
from harness.stats.interval import Envelope, Estimator, TangoEstimator

FlagOverrides = dict[str, dict[str, tuple[set[str], set[str]]]]


def _seed(budget: Budget, base: int) -> int:
    return (zlib.crc32(f"{budget.suite}/{budget.metric}/{budget.kind}".encode()) + base) % 2**32


def _spec(budget: Budget, runs: list[SuiteRun]) -> MetricSpec | None:
    for run in runs:
        for spec in run.metrics:
            if spec.name == budget.metric:
                return spec
    return None


def _pair(base: SuiteRun, cand: SuiteRun) -> tuple[list[ItemRecord], list[ItemRecord]] | Refused:
    """Match records by item_id; refuse duplicates and items present on one side only."""
    for side, run in (("baseline", base), ("candidate", cand)):
        counts = Counter(r.item_id for r in run.records)
        dups = {item_id for item_id, count in counts.items() if count > 1}
        if dups:
            return Refused(f"{len(dups)} duplicate item ids in the {side} records (e.g. {sorted(dups)[0]!r})")
    b_by = {r.item_id: r for r in base.records}
    c_by = {r.item_id: r for r in cand.records}
    only_b = [i for i in b_by if i not in c_by]
    only_c = [i for i in c_by if i not in b_by]
    if only_b or only_c:
        parts = []
        if only_b:
            parts.append(f"{len(only_b)} missing from the candidate (e.g. {only_b[0]!r})")
        if only_c:
            parts.append(f"{len(only_c)} missing from the baseline (e.g. {only_c[0]!r})")
        return Refused(f"{len(only_b) + len(only_c)} items missing: " + ", ".join(parts), len(b_by))
    if not b_by:
        return Refused("no items to compare")
    ids = list(b_by)
    return [b_by[i] for i in ids], [c_by[i] for i in ids]


def item_flags(record: ItemRecord, extra: set[str] | None = None) -> set[str]:
    """Flags of one item: detector flags, failed checks (by check name), and caller-supplied extras."""
    out = set(record.flags) | {name for name, ok in record.checks.items() if not ok}
    return out | (extra or set())


def _clusters(records: list[ItemRecord]) -> list[str] | None:
    """Group labels when items really cluster (>= 2 clusters, some with several items), else None."""
    groups = [r.group for r in records]
    if any(g is None for g in groups):
        return None
    distinct = len(set(groups))
    return [str(g) for g in groups] if 2 <= distinct < len(groups) else None


def measure(
    budget: Budget,
    baseline: dict[str, SuiteRun],
    candidate: dict[str, SuiteRun],
    *,
    flags: FlagOverrides | None = None,
    n_resamples: int = 10_000,
    seed: int = 0,
) -> Measured | Refused:
    """Estimate the regression that ``budget`` bounds, or say why it cannot be compared."""
    cand = candidate.get(budget.suite)
    if cand is None:
        return Refused(f"suite {budget.suite!r} was not run on the candidate")
    if cand.error:
        return Refused(f"the candidate's {budget.suite} run failed: {cand.error}", len(cand.records))
    base = baseline.get(budget.suite)
    if budget.kind in ("max_mean", "max_quantile"):
        spec = _spec(budget, [cand] + ([base] if base else []))
        if spec is not None and spec.kind == "token":
            return token_bound(budget, spec, base, cand, n_resamples, _seed(budget, seed))
        if budget.kind == "max_quantile":
            return Refused(f"max_quantile needs a per-token quantile metric; {budget.metric!r} of suite "
                           f"{budget.suite!r} is not one (e.g. kld's kl_p99)", len(cand.records))
        return _max_mean(budget, base, cand, n_resamples, _seed(budget, seed))
    if base is None:
        return Refused(f"the baseline has no {budget.suite!r} run to compare with")
    if base.error:
        return Refused(f"the baseline's {budget.suite} run failed: {base.error}", len(base.records))
    paired = _pair(base, cand)
    if isinstance(paired, Refused):
        return paired
    b_recs, c_recs = paired
    if budget.kind in FLAG_KINDS:
        return _flags(budget, b_recs, c_recs, (flags or {}).get(budget.suite, {}))
    spec = _spec(budget, [base, cand])
    if spec is None:
        names = sorted({m.name for m in base.metrics} | {m.name for m in cand.metrics})
        raise UserError(
            f"budget {budget.display_label}: suite {budget.suite!r} has no metric {budget.metric!r} "
            f"(it has: {', '.join(names) or 'none'})",
            "fix the metric name in the gate file",
        )
    s = _seed(budget, seed)
    if spec.kind == "token":
        return token_drop(budget, spec, b_recs, c_recs, n_resamples, s)
    if spec.kind == "perplexity":
        return _perplexity(budget, spec, b_recs, c_recs, n_resamples, s)
    return _mean_metric(budget, spec, b_recs, c_recs, n_resamples, s)


def _mean_metric(
    budget: Budget,
    spec: MetricSpec,
    b_recs: list[ItemRecord],
    c_recs: list[ItemRecord],
    n_res: int,
    seed: int,
) -> Measured | Refused:
    # A metric may cover a subset of the suite's items (chrF per translation direction): compare the
    # items the baseline scored, and require the candidate to have scored exactly those.
    keep = [i for i, r in enumerate(b_recs) if finite(r.scores.get(spec.name))]
    if not keep:
        return Refused(f"no baseline item has a {spec.name!r} score", len(b_recs))
    b_recs, c_recs = [b_recs[i] for i in keep], [c_recs[i] for i in keep]
    yb, yc = item_scores(b_recs, spec.name, "baseline"), item_scores(c_recs, spec.name, "candidate")
    if isinstance(yb, Refused):
        return yb
    if isinstance(yc, Refused):
        return yc
    n, scale, ids = len(yb), spec.scale, [r.item_id for r in b_recs]
    sign = 1.0 if spec.higher_is_better else -1.0
    reg_items = sign * (yb - yc) * scale
    base_value, cand_value = float(yb.mean() * scale), float(yc.mean() * scale)
    groups = _clusters(b_recs)
    if budget.kind == "ratio":
        if yb.mean() <= 0 or yc.mean() <= 0:
            return Refused(f"a ratio needs positive means of {spec.name!r}", n)
        num, den = (yb, yc) if spec.higher_is_better else (yc, yb)
        dist = ratio_of_means(num, den, groups=groups, n_resamples=n_res, seed=seed)
        worst = worst_by(ids, yb * scale, yc * scale, reg_items, "largest per-item regression")
        return Measured(dist, base_value, cand_value, n, log_scale=True, method="paired bootstrap of the ratio of means",
                        worst=worst)  # fmt: skip
    binary = spec.kind in ("binary", "rate") and bool(
        np.all(np.isin(yb, (0, 1))) and np.all(np.isin(yc, (0, 1)))
    )
    if binary:
        good_b, good_c = (yb == 1, yc == 1) if spec.higher_is_better else (yb == 0, yc == 0)
        worse = good_b & ~good_c
        b, c = int(worse.sum()), int((~good_b & good_c).sum())
        est: Estimator = TangoEstimator(b, c, n, scale)
        method = "Tango score bounds for paired proportions"
        if groups is not None:
            se, g = clustered_se(reg_items, groups)
            est = Envelope(est, TInterval(float(reg_items.mean()), se, g - 1))
            method += f" enveloped by cluster-robust SE ({g} clusters)"
        changed = [ids[i] for i in np.flatnonzero(worse)]
        worst = [
            WorstItem(
                item_id=i,
                baseline_score=1.0 if spec.higher_is_better else 0.0,
                candidate_score=0.0 if spec.higher_is_better else 1.0,
                note="right → wrong",
            )
            for i in changed[:10]
        ]
        return Measured(
            est,
            base_value,
            cand_value,
            n,
            method=method,
            flips=(b, c),
            mcnemar_p=mcnemar_exact_p(b, c),
            changed=changed,
            worst=worst,
        )
    dist = mean_difference(yb, yc, scale=sign * scale, groups=groups, n_resamples=n_res, seed=seed)
    method = "paired cluster bootstrap" if groups else "paired bootstrap"
    worst = worst_by(ids, yb * scale, yc * scale, reg_items, "largest per-item regression")
    return Measured(dist, base_value, cand_value, n, method=method + " of the mean difference", worst=worst)


def _perplexity(
    budget: Budget,
    spec: MetricSpec,
    b_recs: list[ItemRecord],
    c_recs: list[ItemRecord],
    n_res: int,
    seed: int,
) -> Measured | Refused:
    arrays = []
    for recs, side in ((b_recs, "baseline"), (c_recs, "candidate")):
        for key in ("nll", "tokens"):
            a = item_scores(recs, key, side)
            if isinstance(a, Refused):
                return a
            arrays.append(a)
    nll_b, tok_b, nll_c, tok_c = arrays
    if np.any(tok_b <= 0) or np.any(tok_c <= 0):
        return Refused("every perplexity window needs a positive token count", len(b_recs))
    ppl_b = math.exp(nll_b.sum() / tok_b.sum())
    ppl_c = math.exp(nll_c.sum() / tok_c.sum())
    log_scale = budget.kind == "ratio"
    estimate = perplexity_ratio if log_scale else perplexity_difference
    dist = estimate(nll_b, tok_b, nll_c, tok_c, n_resamples=n_res, seed=seed)
    ids = [r.item_id for r in b_recs]
    per_b, per_c = nll_b / tok_b, nll_c / tok_c
    worst = worst_by(ids, per_b, per_c, per_c - per_b, "largest rise in nll per token")
    return Measured(
        dist, ppl_b, ppl_c, len(ids), log_scale=log_scale, method="paired bootstrap over windows", worst=worst
    )


def _flags(
    budget: Budget,
    b_recs: list[ItemRecord],
    c_recs: list[ItemRecord],
    extra: dict[str, tuple[set[str], set[str]]],
) -> Measured:
    """Flag flips, counted only against a healthy item: newly flagged = the baseline had no flag and no
    failed check, the candidate has the budget's flag; cleared = the mirror image. A new flag on an
    item the baseline already failed is no evidence of a regression (``not_evidence``)."""
    base = [item_flags(r, extra.get(r.item_id, (set(), set()))[0]) for r in b_recs]
    cand = [item_flags(r, extra.get(r.item_id, (set(), set()))[1]) for r in c_recs]

    def has(flags: set[str]) -> bool:
        return bool(flags) if budget.metric == ANY_FLAG else budget.metric in flags

    items = list(zip([r.item_id for r in b_recs], base, cand, strict=True))
    changed = [i for i, fb, fc in items if not fb and has(fc)]
    cleared = [i for i, fb, fc in items if has(fb) and not fc]
    ignored = [i for i, fb, fc in items if fb and not has(fb) and has(fc)]
    note = f"newly flagged {budget.metric}" if budget.metric != ANY_FLAG else "newly flagged"
    worst = [WorstItem(item_id=i, baseline_score=0.0, candidate_score=1.0, note=note) for i in changed[:10]]
    b, c, n = len(changed), len(cleared), len(items)
    flagged_b, flagged_c = sum(map(has, base)), sum(map(has, cand))
    if budget.is_count:
        return Measured(
            None, float(flagged_b), float(flagged_c), method="exact count of newly flagged items", count=b,
            n_items=n, flips=(b, c), changed=changed, worst=worst, not_evidence=ignored,
        )  # fmt: skip
    return Measured(
        TangoEstimator(b, c, n, 100.0),
        100.0 * flagged_b / n,
        100.0 * flagged_c / n,
        method="Tango score bounds for the paired flag flips (newly flagged vs cleared)",
        mcnemar_p=mcnemar_exact_p(b, c),
        n_items=n, flips=(b, c), changed=changed, worst=worst, not_evidence=ignored,
    )  # fmt: skip


def _max_mean(
    budget: Budget, base: SuiteRun | None, cand: SuiteRun, n_res: int, seed: int
) -> Measured | Refused:
    spec = _spec(budget, [cand] + ([base] if base else []))
    scale = spec.scale if spec else 1.0
    if not cand.records:
        return Refused("no items to compare")
    scored = [r for r in cand.records if finite(r.scores.get(budget.metric))]
    if not scored:
        return Refused(f"no candidate item has a {budget.metric!r} score", len(cand.records))
    vals = item_scores(scored, budget.metric, "candidate")
    if isinstance(vals, Refused):
        return vals
    vals = vals * scale
    dist = mean_of(vals, groups=_clusters(scored), n_resamples=n_res, seed=seed)
    base_value = None
    if base is not None and not base.error and base.records:
        bv = [float(r.scores[budget.metric]) for r in base.records if finite(r.scores.get(budget.metric))]
        if bv:
            base_value = float(np.mean(bv) * scale)
    ids = [r.item_id for r in scored]
    order = np.argsort(-vals, kind="stable")[:10]
    worst = [WorstItem(item_id=ids[i], candidate_score=float(vals[i]), note=f"highest {budget.metric}") for i in order]
    return Measured(
        dist, base_value, float(vals.mean()), len(vals), method="bootstrap of the mean", worst=worst
    )


