"""Pooled per-token statistics bootstrapped over items (harness.stats.pooled), as the kld budgets use them."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.stats.pooled import pooled_mean, pooled_mean_difference, pooled_quantile

units = st.lists(st.lists(st.floats(0, 10, allow_nan=False), min_size=1, max_size=30), min_size=1, max_size=12)


@settings(max_examples=40, deadline=None)
@given(units, st.sampled_from([0.0, 0.5, 0.9, 0.99, 1.0]))
def test_the_quantile_estimate_is_numpys_and_its_replicates_are_quantiles_of_item_resamples(values, level) -> None:
    dist = pooled_quantile(values, level, n_resamples=200, seed=1)
    pooled = np.concatenate([np.asarray(v) for v in values])
    assert dist.estimate == float(np.quantile(pooled, level))
    assert np.all(dist.samples >= pooled.min()) and np.all(dist.samples <= pooled.max())
    assert set(dist.samples.tolist()) <= set(pooled.tolist())  # thresholds are data values


def test_quantile_replicates_follow_the_items_drawn() -> None:
    """One item all zeros, one all ones: a replicate's median is 0 or 1 by which item dominates the draw."""
    dist = pooled_quantile([[0.0] * 50, [1.0] * 50], 0.5, n_resamples=2000, seed=0)
    assert set(np.unique(dist.samples).tolist()) <= {0.0, 1.0} and 0.15 < dist.samples.mean() < 0.85
    lo, hi = dist.bounds(0.05)
    assert lo == 0.0 and hi == 1.0


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 5, allow_nan=False), st.integers(1, 500)), min_size=1, max_size=20))
def test_pooled_means_weight_items_by_their_tokens(items) -> None:
    values, tokens = np.array([v for v, _ in items]), np.array([n for _, n in items], float)
    mean = pooled_mean(values, tokens, n_resamples=100)
    assert np.isclose(mean.estimate, (values * tokens).sum() / tokens.sum())
    rms = pooled_mean(values, tokens, rms=True, n_resamples=100)
    assert np.isclose(rms.estimate, np.sqrt((values ** 2 * tokens).sum() / tokens.sum()))
    same = pooled_mean_difference(values, values, tokens, n_resamples=100)
    assert same.estimate == 0 and np.all(same.samples == 0)
