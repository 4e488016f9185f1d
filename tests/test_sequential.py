"""Sequential early stopping: error rates by simulation at the budget boundary, and items saved."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from harness.stats.sequential import sequential_noninferiority, spent_alpha


def paired(rng: np.random.Generator, n: int, p_b: float, p_c: float) -> list[int]:
    """Per-item regression of paired 0/1 items: +1 with prob p_b (right->wrong), -1 with p_c."""
    u = rng.random(n)
    return [1 if x < p_b else (-1 if x < p_b + p_c else 0) for x in u]


@given(st.floats(0.001, 0.2), st.sampled_from(["obf", "pocock"]), st.floats(0, 1), st.floats(0, 1))
def test_spending_is_monotone_and_totals_alpha(alpha: float, kind: str, t1: float, t2: float) -> None:
    lo, hi = sorted((t1, t2))
    assert 0 <= spent_alpha(lo, alpha, kind) <= spent_alpha(hi, alpha, kind) <= alpha + 1e-12
    assert spent_alpha(1.0, alpha, kind) == pytest.approx(alpha)


@pytest.mark.parametrize("spending", ["obf", "pocock"])
def test_wrong_pass_rate_within_alpha_at_the_boundary(spending: str) -> None:
    """True regression exactly at the budget: PASS is the wrong answer and must stay <= alpha."""
    rng = np.random.default_rng(0)
    alpha, margin, sims = 0.05, 0.05, 1000
    wrong_pass = wrong_fail_lo = 0
    for _ in range(sims):
        diffs = paired(rng, 300, 0.10, 0.05)
        wrong_pass += sequential_noninferiority(diffs, margin, alpha=alpha, spending=spending).decision == "PASS"
        # regression 0.05 against a budget of 0.15: FAIL is wrong
        wrong_fail_lo += sequential_noninferiority(diffs, 0.15, alpha=alpha, spending=spending).decision == "FAIL"
    tolerance = 3 * np.sqrt(alpha * (1 - alpha) / sims)
    assert wrong_pass / sims <= alpha + tolerance
    assert wrong_fail_lo / sims <= alpha + tolerance


def test_naive_repeated_looks_would_inflate_the_error() -> None:
    """The same five looks at a constant alpha (no spending) exceed alpha; with spending they do not."""
    from harness.stats.sequential import _p_values

    rng = np.random.default_rng(1)
    sims, alpha, naive = 600, 0.05, 0
    for _ in range(sims):
        diffs = paired(rng, 300, 0.10, 0.05)
        naive += any(_p_values(diffs[:n], 0.05, True)[1] <= alpha for n in (60, 120, 180, 240, 300))
    assert naive / sims > alpha + 3 * np.sqrt(alpha * (1 - alpha) / sims)


def test_clear_cases_decided_with_half_the_items() -> None:
    rng = np.random.default_rng(2)
    used_pass, used_fail = [], []
    for _ in range(100):
        clean = sequential_noninferiority(paired(rng, 400, 0.04, 0.04), 0.10)  # no regression, budget 10 points
        broken = sequential_noninferiority(paired(rng, 400, 0.35, 0.02), 0.05)  # 33-point regression
        assert clean.decision in ("PASS", "INCONCLUSIVE") and broken.decision in ("FAIL", "INCONCLUSIVE")
        used_pass.append(clean.fraction_used if clean.decision == "PASS" else 1.0)
        used_fail.append(broken.fraction_used if broken.decision == "FAIL" else 1.0)
    assert np.median(used_pass) <= 0.5 and np.median(used_fail) <= 0.5


def test_continuous_diffs_and_boundary() -> None:
    rng = np.random.default_rng(3)
    sims, wrong = 500, 0
    for _ in range(sims):
        diffs = list(rng.normal(0.02, 0.1, 200))  # mean regression 0.02 == budget: PASS is wrong
        wrong += sequential_noninferiority(diffs, 0.02).decision == "PASS"
    assert wrong / sims <= 0.05 + 3 * np.sqrt(0.05 * 0.95 / sims)
    res = sequential_noninferiority(list(rng.normal(0.0, 0.05, 400)), 0.05)
    assert res.decision == "PASS" and res.items_saved > 0


def test_degenerate_inputs() -> None:
    assert sequential_noninferiority([], 0.1).decision == "INCONCLUSIVE"
    with pytest.raises(ValueError):
        sequential_noninferiority([0, 1], 0.1, alpha=0.7)
    with pytest.raises(ValueError):
        spent_alpha(0.5, 0.05, "linear")  # type: ignore[arg-type]
