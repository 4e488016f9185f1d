"""Statistics against brute force and scipy references."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats as sps

from harness.stats import (
    clustered_se,
    holm,
    items_to_decide,
    mcnemar_exact_p,
    mean_difference,
    mean_of,
    ordinary_se,
    perplexity_ratio,
    resampled_means,
    tango_bounds,
    tango_p_beyond,
    tango_p_within,
    tango_statistic,
)
from harness.stats.mcnemar import _constrained_p21


@given(st.integers(0, 40), st.integers(0, 40))
def test_mcnemar_matches_enumeration(b: int, c: int) -> None:
    n = b + c
    brute = 1.0 if n == 0 else sum(math.comb(n, k) for k in range(b, n + 1)) / 2**n
    assert mcnemar_exact_p(b, c) == pytest.approx(brute, rel=1e-9, abs=1e-12)


def test_mcnemar_rejects_negative_counts() -> None:
    with pytest.raises(ValueError, match="flip counts"):
        mcnemar_exact_p(-1, 2)


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 15), st.integers(0, 15), st.integers(0, 30), st.floats(-0.6, 0.6))
def test_tango_constrained_mle_maximizes_likelihood(b: int, c: int, rest: int, delta: float) -> None:
    n = b + c + rest
    if n == 0:
        return
    x = _constrained_p21(b, c, n, delta)

    def loglik(p21: float) -> float:
        p12, p_same = p21 + delta, 1 - 2 * p21 - delta
        if min(p21, p12, p_same) < -1e-12:
            return -math.inf
        p21, p12, p_same = max(p21, 0.0), max(p12, 0.0), max(p_same, 0.0)
        terms = [(c, p21), (b, p12), (rest, p_same)]
        if any(k > 0 and p <= 0 for k, p in terms):
            return -math.inf
        return sum(k * math.log(p) for k, p in terms if k > 0)

    lo, hi = max(0.0, -delta), (1 - delta) / 2
    grid = np.linspace(lo, hi, 2001)
    best = max(loglik(float(g)) for g in grid)
    assert loglik(x) >= best - 1e-6


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 20), st.integers(0, 20), st.integers(0, 60))
def test_tango_bounds_bracket_estimate_and_invert_the_test(b: int, c: int, rest: int) -> None:
    n = b + c + rest
    if n == 0:
        return
    alpha = 0.05
    lo, hi = tango_bounds(b, c, n, alpha)
    est = (b - c) / n
    assert -1 <= lo <= est + 1e-9 <= hi + 2e-9 <= 1 + 2e-9
    z = sps.norm.isf(alpha)
    if hi < 1 - 1e-6:
        assert tango_statistic(b, c, n, hi) == pytest.approx(-z, abs=1e-5)
        assert tango_p_within(b, c, n, hi) == pytest.approx(alpha, abs=1e-5)
    if lo > -1 + 1e-6:
        assert tango_p_beyond(b, c, n, lo) == pytest.approx(alpha, abs=1e-5)


def test_tango_zero_discordant_closed_form() -> None:
    z = sps.norm.isf(0.05)
    lo, hi = tango_bounds(0, 0, 100, 0.05)
    assert hi == pytest.approx(z**2 / (100 + z**2), rel=1e-6)
    assert lo == pytest.approx(-hi, rel=1e-6)


@pytest.mark.parametrize(("p_b", "p_c"), [(0.05, 0.05), (0.15, 0.03), (0.02, 0.0)])
def test_tango_one_sided_coverage(p_b: float, p_c: float) -> None:
    rng = np.random.default_rng(7)
    n, alpha, reps = 150, 0.05, 600
    truth = p_b - p_c
    draws = rng.multinomial(n, [p_b, p_c, 1 - p_b - p_c], size=reps)
    miss_hi = miss_lo = 0
    for b, c, _ in draws:
        lo, hi = tango_bounds(int(b), int(c), n, alpha)
        miss_hi += hi < truth
        miss_lo += lo > truth
    # One-sided 95% bounds: each side misses about 5%; allow simulation noise.
    assert miss_hi / reps < 0.085 and miss_lo / reps < 0.085


def test_bootstrap_is_seeded_and_vectorized() -> None:
    rng = np.random.default_rng(0)
    v = rng.normal(size=(300, 2))
    a = resampled_means(v, n_resamples=2000, seed=3)
    b = resampled_means(v, n_resamples=2000, seed=3)
    assert a.shape == (2000, 2) and np.array_equal(a, b)
    assert np.allclose(a.mean(axis=0), v.mean(axis=0), atol=0.02)


def test_bootstrap_percentile_matches_scipy() -> None:
    rng = np.random.default_rng(1)
    base = rng.normal(50, 10, size=250)
    cand = base - 1.0 + rng.normal(0, 3, size=250)
    ours = mean_difference(base, cand, n_resamples=10_000, seed=0)
    ref = sps.bootstrap(
        (base, cand),
        lambda x, y, axis: np.mean(x, axis=axis) - np.mean(y, axis=axis),
        paired=True,
        confidence_level=0.90,
        method="percentile",
        n_resamples=10_000,
        random_state=0,
    )
    lo, hi = ours.bounds(0.05)
    assert ours.estimate == pytest.approx(float(np.mean(base - cand)))
    assert lo == pytest.approx(ref.confidence_interval.low, abs=0.06)
    assert hi == pytest.approx(ref.confidence_interval.high, abs=0.06)


def test_bootstrap_identical_models_is_degenerate_at_zero() -> None:
    x = np.random.default_rng(2).random(40)
    dist = mean_difference(x, x, scale=100)
    assert dist.bounds(0.05) == (0.0, 0.0)
    assert dist.p_within(0.0) < 0.001 and dist.p_beyond(0.0) == 1.0


def test_perplexity_ratio_estimate_and_identity() -> None:
    rng = np.random.default_rng(3)
    tok = rng.integers(50, 200, size=30).astype(float)
    nll = tok * rng.uniform(2.5, 3.5, size=30)
    same = perplexity_ratio(nll, tok, nll, tok, n_resamples=500)
    assert same.estimate == pytest.approx(1.0) and np.allclose(same.samples, 1.0)
    worse = perplexity_ratio(nll, tok, nll + tok * math.log(3), tok, n_resamples=500)
    assert worse.estimate == pytest.approx(3.0)
    assert worse.bounds(0.05)[0] == pytest.approx(3.0)
    with pytest.raises(ValueError, match="positive token"):
        perplexity_ratio(nll, tok * 0, nll, tok)


def test_cluster_bootstrap_is_wider_for_clustered_data() -> None:
    rng = np.random.default_rng(4)
    groups = np.repeat(np.arange(10), 30)
    values = rng.normal(size=10)[groups] + rng.normal(0, 0.1, size=300)
    flat = mean_of(values, n_resamples=3000)
    clus = mean_of(values, groups=groups.tolist(), n_resamples=3000)
    assert np.std(clus.samples) > 3 * np.std(flat.samples)


@given(st.lists(st.floats(-5, 5, allow_nan=False), min_size=2, max_size=40))
def test_clustered_se_with_singleton_clusters_is_ordinary(diffs: list[float]) -> None:
    se, g = clustered_se(diffs, [f"i{i}" for i in range(len(diffs))])
    assert g == len(diffs)
    assert se == pytest.approx(ordinary_se(diffs), rel=1e-9, abs=1e-12)


@given(st.lists(st.tuples(st.floats(-3, 3, allow_nan=False), st.integers(0, 4)), min_size=3, max_size=40))
def test_clustered_se_matches_loop_formula(rows: list[tuple[float, int]]) -> None:
    d = [r[0] for r in rows]
    groups = [r[1] for r in rows]
    labels = sorted(set(groups))
    se, g = clustered_se(d, groups)
    if len(labels) < 2:
        assert se == math.inf
        return
    mean = sum(d) / len(d)
    total = sum(sum(x - mean for x, gg in rows if gg == lab) ** 2 for lab in labels)
    expected = math.sqrt(len(labels) / (len(labels) - 1) * total / len(d) ** 2)
    assert g == len(labels)
    assert se == pytest.approx(expected, rel=1e-9, abs=1e-12)


def _closed_testing(p: list[float], alpha: float) -> list[bool]:
    """Holm = closed testing with Bonferroni local tests: reject H_i iff every subset holding i rejects."""
    m = len(p)
    out = []
    for i in range(m):
        ok = True
        for size in range(1, m + 1):
            for subset in itertools.combinations(range(m), size):
                if i in subset and min(p[j] for j in subset) > alpha / size:
                    ok = False
        out.append(ok)
    return out


@given(st.lists(st.floats(0, 1), min_size=1, max_size=7), st.sampled_from([0.01, 0.05, 0.1]))
def test_holm_matches_closed_testing(p: list[float], alpha: float) -> None:
    res = holm(p, alpha)
    assert res.reject == _closed_testing(p, alpha)
    assert [a <= alpha for a in res.adjusted] == res.reject
    assert all(alpha / len(p) <= t <= alpha for t in res.thresholds)


@given(st.floats(-5, 5), st.floats(0.01, 3), st.floats(0.01, 3), st.floats(-5, 5), st.integers(10, 5000))
def test_items_to_decide_clears_the_budget(est: float, h_lo: float, h_hi: float, m: float, n: int) -> None:
    need = items_to_decide(est, est - h_lo, est + h_hi, m, n)
    if est == m or need is None:
        assert est == m or abs(est - m) < 1e-5 * max(h_lo, h_hi)
        return
    assert need >= n
    shrink = math.sqrt(n / need)
    if est < m:
        assert est + h_hi * shrink <= m + 1e-9
    else:
        assert est - h_lo * shrink >= m - 1e-9
    if need > n + 1:  # one item fewer would not be enough
        shrink = math.sqrt(n / (need - 1))
        assert (est + h_hi * shrink > m) if est < m else (est - h_lo * shrink < m)


def test_items_to_decide_on_log_scale() -> None:
    need = items_to_decide(1.04, 1.01, 1.07, 1.05, 100, log_scale=True)
    assert need is not None and need > 100
    assert items_to_decide(1.0, 0.9, 1.1, 0.0, 10, log_scale=True) is None
