"""Pure statistics of the profiler: properties that must hold for any count array."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from harness.profiler.curve import curve_sizes, dead_curve_from_presence
from harness.profiler.stats import (
    dead_experts,
    entropy_ratio,
    gini,
    layer_stats,
    top_n_share,
    top_share_of_experts,
)

counts_st = hnp.arrays(np.int64, st.integers(1, 64), elements=st.integers(0, 10_000))


@given(counts_st)
def test_gini_and_entropy_bounded(counts: np.ndarray) -> None:
    assert 0.0 <= gini(counts) <= 1.0
    assert 0.0 <= entropy_ratio(counts) <= 1.0
    assert 0.0 <= top_n_share(counts, 10) <= 1.0


@given(st.integers(1, 128), st.integers(1, 10_000))
def test_uniform_usage(n: int, value: int) -> None:
    counts = np.full(n, value)
    assert gini(counts) == pytest.approx(0.0, abs=1e-12)
    assert entropy_ratio(counts) == pytest.approx(1.0)
    assert top_n_share(counts, 10) == pytest.approx(min(10, n) / n)
    assert dead_experts(counts) == []


@given(st.integers(2, 128), st.integers(1, 10_000), st.data())
def test_one_expert_takes_all(n: int, value: int, data: st.DataObject) -> None:
    counts = np.zeros(n, dtype=np.int64)
    hot = data.draw(st.integers(0, n - 1))
    counts[hot] = value
    assert gini(counts) == pytest.approx((n - 1) / n)
    assert entropy_ratio(counts) == pytest.approx(0.0, abs=1e-12)
    assert top_n_share(counts, 1) == 1.0
    assert dead_experts(counts) == [i for i in range(n) if i != hot]


@given(counts_st, st.integers(1, 50), st.randoms(use_true_random=False))
def test_scale_and_permutation_invariance(counts: np.ndarray, scale: int, rnd) -> None:
    perm = list(range(counts.size))
    rnd.shuffle(perm)
    for fn in (gini, entropy_ratio, lambda c: top_n_share(c, 3)):
        assert fn(counts * scale) == pytest.approx(fn(counts), abs=1e-9)
        assert fn(counts[perm]) == pytest.approx(fn(counts), abs=1e-9)


@given(counts_st)
def test_top_share_monotone_in_n(counts: np.ndarray) -> None:
    shares = [top_n_share(counts, n) for n in range(1, counts.size + 2)]
    assert all(a <= b + 1e-12 for a, b in itertools.pairwise(shares))
    if counts.sum() > 0:
        assert shares[-1] == pytest.approx(1.0)
    assert top_share_of_experts(counts, 1.0) == pytest.approx(shares[-1])


def test_known_values() -> None:
    assert gini(np.array([0, 0, 1, 1])) == pytest.approx(0.5)
    assert entropy_ratio(np.array([1, 1, 0, 0])) == pytest.approx(math.log(2) / math.log(4))
    assert gini(np.zeros(4)) == 0.0 and entropy_ratio(np.zeros(4)) == 0.0
    stats = layer_stats(np.array([5, 0, 3, 0]))
    assert stats["dead"] == 2 and stats["dead_experts"] == [1, 3] and stats["selections"] == 8


@pytest.mark.parametrize("bad", [np.array([]), np.array([[1, 2]]), np.array([1, -1]), np.array([1.0, np.nan])])
def test_bad_counts_rejected(bad: np.ndarray) -> None:
    with pytest.raises(ValueError):
        gini(bad)


presence_st = hnp.arrays(np.bool_, st.tuples(st.integers(1, 40), st.integers(1, 3), st.integers(1, 8)),
                         elements=st.booleans())


@settings(max_examples=60, deadline=None)
@given(presence_st, st.integers(0, 2**16))
def test_curve_monotone_and_ends_at_full_set(presence: np.ndarray, seed: int) -> None:
    curve = dead_curve_from_presence(presence, sizes=(1, 2, 5, 10, 20), shuffles=4, seed=seed)
    fractions = curve.dead_fraction
    assert all(b <= a + 1e-12 for a, b in itertools.pairwise(fractions))
    assert all(0.0 <= f <= 1.0 for f in fractions)
    assert curve.sizes[-1] == presence.shape[0]
    full_dead = 1.0 - presence.any(axis=0).mean()
    assert fractions[-1] == pytest.approx(full_dead)
    assert curve.dead_fraction_std[-1] == pytest.approx(0.0, abs=1e-12)
    assert curve.per_layer.shape == (len(curve.sizes), presence.shape[1])
    again = dead_curve_from_presence(presence, sizes=(1, 2, 5, 10, 20), shuffles=4, seed=seed)
    assert again.dead_fraction == fractions


def test_small_sets_overstate_dead_experts() -> None:
    """Each prompt touches few experts: five prompts leave many unseen, a hundred almost none."""
    rng = np.random.default_rng(0)
    presence = rng.random((200, 4, 64)) < 0.05
    curve = dead_curve_from_presence(presence, sizes=(5, 20, 50, 100), shuffles=10, seed=1)
    assert curve.sizes == (5, 20, 50, 100, 200)
    assert curve.dead_fraction[0] > 0.7 and curve.dead_fraction[3] < 0.02


def test_curve_sizes() -> None:
    assert curve_sizes(3) == (3,)
    assert curve_sizes(120) == (5, 20, 50, 100, 120)
    assert curve_sizes(100) == (5, 20, 50, 100)
    with pytest.raises(ValueError):
        curve_sizes(0)
