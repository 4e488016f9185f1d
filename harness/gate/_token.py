"""Budgets on per-token metrics (the kld suite's): the statistic pooled over every token, items resampled."""

from __future__ import annotations

import math

import numpy as np

from harness.gate._measured import Measured, Refused, item_scores, worst_by
from harness.gate.budgets import Budget
from harness.gate.results import WorstItem
from harness.records import ItemRecord, MetricSpec, SuiteRun, metric_value
from harness.stats.pooled import pooled_mean, pooled_mean_difference, pooled_quantile


def _token_scores(records: list[ItemRecord], spec: MetricSpec, side: str) -> tuple[np.ndarray, np.ndarray] | Refused:
    """Per-item values of a token metric and each item's token count."""
    tokens = item_scores(records, "tokens", side)
    if isinstance(tokens, Refused):
        return tokens
    if np.any(tokens <= 0):
        return Refused(f"every {side} item of a per-token metric needs a positive token count", len(records))
    values = item_scores(records, spec.name, side)
    return values if isinstance(values, Refused) else (values, tokens)


def token_bound(budget: Budget, spec: MetricSpec, base: SuiteRun | None, cand: SuiteRun, n_res: int,
                 seed: int) -> Measured | Refused:
    """max_mean / max_quantile on a token metric: the candidate's statistic over every token, items resampled."""
    records = cand.records
    if not records:
        return Refused("no items to compare")
    quantile = not isinstance(spec.statistic, str)
    if (budget.kind == "max_quantile") != quantile:
        want = "max_quantile" if quantile else "max_mean"
        return Refused(f"{budget.metric!r} is a per-token {'quantile' if quantile else spec.statistic}: "
                       f"budget it with kind {want}", len(records))
    ids = [r.item_id for r in records]
    if quantile:
        key = spec.values or spec.name
        missing = [r.item_id for r in records if not r.per_token.get(key)]
        if missing:
            return Refused(f"{len(missing)} candidate items have no per-token {key!r} values (e.g. {missing[0]!r})", len(records))
        level = float(spec.statistic)
        dist = pooled_quantile([r.per_token[key] for r in records], level, scale=spec.scale, n_resamples=n_res, seed=seed)
        method = f"bootstrap over items of the pooled per-token {key} quantile {level:g}"
    else:
        scored = _token_scores(records, spec, "candidate")
        if isinstance(scored, Refused):
            return scored
        dist = pooled_mean(*scored, rms=spec.statistic == "rms", scale=spec.scale, n_resamples=n_res, seed=seed)
        method = f"bootstrap over items of the token-weighted {spec.statistic}"
    per_item = np.asarray([r.scores.get(spec.name, math.nan) for r in records], float) * spec.scale
    order = [i for i in np.argsort(-np.nan_to_num(per_item, nan=-np.inf), kind="stable")][:10]
    worst = [WorstItem(item_id=ids[i], candidate_score=float(per_item[i]), note=f"highest {budget.metric}") for i in order]
    base_value = None
    if base is not None and not base.error and base.records:
        base_value = metric_value(base.records, spec)
    return Measured(dist, base_value, dist.estimate, len(records), method=method, worst=worst)


def token_drop(budget: Budget, spec: MetricSpec, b_recs: list[ItemRecord], c_recs: list[ItemRecord], n_res: int,
                seed: int) -> Measured | Refused:
    """drop on a token mean (``same_top``): paired over items scored on the same tokens, token-weighted."""
    if not isinstance(spec.statistic, str) or spec.statistic != "mean":
        return Refused(f"a drop budget needs a per-token mean; {budget.metric!r} is a per-token "
                       f"{spec.statistic}", len(b_recs))
    b, c = _token_scores(b_recs, spec, "baseline"), _token_scores(c_recs, spec, "candidate")
    if isinstance(b, Refused):
        return b
    if isinstance(c, Refused):
        return c
    if not np.array_equal(b[1], c[1]):
        return Refused("baseline and candidate items were scored on different numbers of tokens", len(b_recs))
    sign = 1.0 if spec.higher_is_better else -1.0
    dist = pooled_mean_difference(b[0], c[0], b[1], scale=sign * spec.scale, n_resamples=n_res, seed=seed)
    ids = [r.item_id for r in b_recs]
    worst = worst_by(ids, b[0] * spec.scale, c[0] * spec.scale, sign * (b[0] - c[0]), "largest per-item regression")
    base_value = float((b[0] * b[1]).sum() / b[1].sum() * spec.scale)
    cand_value = float((c[0] * c[1]).sum() / c[1].sum() * spec.scale)
    return Measured(dist, base_value, cand_value, len(ids), method="paired bootstrap over items of the token-weighted mean",
                    worst=worst)
