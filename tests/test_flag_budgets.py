"""Flag budgets that know noise: a paired test on flag flips, health-aware, and warnings on small suites."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.api.config import load_gate
from harness.gate import Budget, GatePolicy, evaluate_gate
from harness.gate.budgets import flag_budget_warnings
from harness.records import ItemRecord, SuiteRun
from harness.resources import gates_dir
from harness.stats import paired_items_to_pass, tango_bounds

POLICY = GatePolicy(correction="none")
STATE = st.sampled_from(["healthy", "flagged", "other"])
"""An item's state for a budget on flag ``f``: no flag at all, flag ``f``, or only another failure."""


def run(states: list[str]) -> SuiteRun:
    flags = {"healthy": [], "flagged": ["f"], "other": ["g"]}
    recs = [
        ItemRecord(suite="s", item_id=f"i{k}", output=f"out {k}", lang="en", flags=flags[s])
        for k, s in enumerate(states)
    ]
    return SuiteRun(suite="s", settings={}, metrics=[], records=recs)


def decide(base: list[str], cand: list[str], kind: str = "new_flags", max_: float = 10.0):
    budget = Budget(suite="s", metric="f", kind=kind, max=max_)  # type: ignore[arg-type]
    return evaluate_gate({"s": run(base)}, {"s": run(cand)}, [budget], POLICY).capabilities[0]


pairs = st.lists(st.tuples(STATE, STATE), min_size=1, max_size=60)


@settings(max_examples=150, deadline=None)
@given(pairs=pairs)
def test_flips_count_only_against_a_healthy_item(pairs: list[tuple[str, str]]) -> None:
    base, cand = [b for b, _ in pairs], [c for _, c in pairs]
    cap = decide(base, cand)
    newly = sum(b == "healthy" and c == "flagged" for b, c in pairs)
    cleared = sum(b == "flagged" and c == "healthy" for b, c in pairs)
    assert cap.flips is not None and (cap.flips.right_to_wrong, cap.flips.wrong_to_right) == (newly, cleared)
    assert cap.change == pytest.approx(100 * (newly - cleared) / len(pairs))
    not_counted = sum(b == "other" and c == "flagged" for b, c in pairs)
    assert (f"{not_counted} more flagged on items the baseline already failed" in cap.reason) == bool(not_counted)


@settings(max_examples=100, deadline=None)
@given(pairs=pairs)
def test_swapping_the_models_swaps_the_flips(pairs: list[tuple[str, str]]) -> None:
    base, cand = [b for b, _ in pairs], [c for _, c in pairs]
    forward, backward = decide(base, cand), decide(cand, base)
    assert forward.change == pytest.approx(-backward.change)
    assert forward.ci_high == pytest.approx(-backward.ci_low, abs=1e-6)


@settings(max_examples=150, deadline=None)
@given(pairs=pairs, max_=st.floats(0.5, 50))
def test_no_net_increase_never_fails(pairs: list[tuple[str, str]], max_: float) -> None:
    cap = decide([b for b, _ in pairs], [c for _, c in pairs], max_=max_)
    if cap.flips.right_to_wrong <= cap.flips.wrong_to_right:
        assert cap.status != "FAIL"


@settings(max_examples=60, deadline=None)
@given(n=st.integers(2, 120), max_=st.sampled_from([5.0, 10.0, 20.0, 40.0]))
def test_the_small_suite_warning_says_exactly_when_one_noisy_item_cannot_pass(n: int, max_: float) -> None:
    cap = decide(["healthy"] * n, ["flagged"] + ["healthy"] * (n - 1), max_=max_)
    budget = Budget(suite="s", metric="f", kind="new_flags", max=max_)
    warned = flag_budget_warnings([budget], {"s": n}, POLICY.alpha)
    assert bool(warned) == (cap.status != "PASS"), (warned, cap.reason)
    need = paired_items_to_pass(1, 0, max_ / 100, POLICY.alpha)
    assert (n >= need) == (cap.status == "PASS")


@settings(max_examples=60, deadline=None)
@given(b=st.integers(0, 5), c=st.integers(0, 5), margin=st.floats(0.02, 0.6), alpha=st.sampled_from([0.05, 0.0125]))
def test_paired_items_to_pass_is_the_smallest_such_count(b: int, c: int, margin: float, alpha: float) -> None:
    n = paired_items_to_pass(b, c, margin, alpha)
    assert n is not None and tango_bounds(b, c, n, alpha)[1] <= margin
    if n > max(1, b + c):
        assert tango_bounds(b, c, n - 1, alpha)[1] > margin


def test_one_noisy_item_is_inconclusive_on_a_small_suite_and_passes_on_a_big_one() -> None:
    small = decide(["healthy"] * 8, ["flagged"] + ["healthy"] * 7)
    assert small.status == "INCONCLUSIVE" and small.items_to_decide and small.items_to_decide > 8
    assert "1 newly flagged / 0 cleared" in small.reason
    assert decide(["healthy"] * 200, ["flagged"] + ["healthy"] * 199).status == "PASS"
    broken = decide(["healthy"] * 200, ["flagged"] * 60 + ["healthy"] * 140)
    assert broken.status == "FAIL" and broken.ci_low > 10


def test_a_literal_count_stays_exact_and_health_aware() -> None:
    cap = decide(["healthy", "other", "healthy"], ["flagged", "flagged", "healthy"], kind="new_flags_count", max_=0)
    assert cap.status == "FAIL" and cap.change == 1 and cap.changed_items == ["i0"]
    assert "1 more flagged on items the baseline already failed, not counted: i1" in cap.reason
    assert decide(["other"], ["flagged"], kind="new_flags_count", max_=0).status == "PASS"


def test_count_budgets_are_outside_the_family_and_paired_ones_inside() -> None:
    base, cand = run(["healthy"] * 300), run(["healthy"] * 300)
    budgets = [
        Budget(suite="s", metric="f", kind="new_flags", max=5),
        Budget(suite="s", metric="g", kind="rate_increase", max=5),
        Budget(suite="s", metric="any", kind="new_flags_count", max=0),
    ]
    caps = evaluate_gate({"s": base}, {"s": cand}, budgets, GatePolicy()).capabilities
    assert [c.status for c in caps] == ["PASS"] * 3
    assert caps[0].adjusted_alpha is not None and caps[2].adjusted_alpha is None


def test_the_shipped_test_bed_gate_warns_about_its_small_flag_suites() -> None:
    warnings = load_gate(gates_dir() / "testbed.toml").warnings
    assert len(warnings) == 2
    assert warnings[0].startswith("suite collapse has 5 items: literal count budgets")
    assert "FAIL on 1 newly flagged item (exact McNemar p 0.5" in warnings[0]
    assert warnings[1].startswith("suite flores has 12 items")


def test_paired_budgets_on_big_enough_suites_do_not_warn() -> None:
    budget = Budget(suite="s", metric="any", kind="new_flags", max=10)
    assert flag_budget_warnings([budget], {"s": 200}, 0.05) == []
    assert flag_budget_warnings([budget], {"s": None}, 0.05) == []
    (line,) = flag_budget_warnings([budget], {"s": 8}, 0.05)
    assert "suite s has 8 items, too few to tell one noisy item from a regression" in line
    assert "about 42 items" in line
