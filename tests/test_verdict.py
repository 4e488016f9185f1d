"""Budgets and verdicts on synthetic runs: semantics, refusals, and trustworthiness over seeds."""

from __future__ import annotations

import math

import numpy as np
import pytest
from pydantic import ValidationError

from harness.errors import UserError
from harness.gate import Budget, GatePolicy, evaluate_gate, verdict_exit_code
from harness.records import ItemRecord, MetricSpec, SuiteRun

ACC = MetricSpec(name="acc", kind="binary", higher_is_better=True, scale=100)
CHRF = MetricSpec(name="chrf", kind="continuous", higher_is_better=True)
PPL = MetricSpec(name="perplexity", kind="perplexity", higher_is_better=False)
KL = MetricSpec(name="kl", kind="continuous", higher_is_better=False)
POLICY = GatePolicy(bootstrap_resamples=2000)


def acc_run(correct, suite="arc", groups=None, outputs=None) -> SuiteRun:
    recs = [
        ItemRecord(
            suite=suite,
            item_id=f"q{i}",
            prompt=f"question {i}",
            output=outputs[i] if outputs else f"answer {i}",
            scores={"acc": float(c)},
            group=groups[i] if groups else None,
        )
        for i, c in enumerate(correct)
    ]
    return SuiteRun(suite=suite, settings={}, metrics=[ACC], records=recs)


def score_run(values, suite="flores", spec=CHRF) -> SuiteRun:
    recs = [
        ItemRecord(suite=suite, item_id=f"s{i}", scores={spec.name: float(v)}) for i, v in enumerate(values)
    ]
    return SuiteRun(suite=suite, settings={}, metrics=[spec], records=recs)


def ppl_run(nll, tok) -> SuiteRun:
    recs = [
        ItemRecord(suite="wikitext2", item_id=f"w{i}", scores={"nll": float(a), "tokens": float(t)})
        for i, (a, t) in enumerate(zip(nll, tok, strict=True))
    ]
    return SuiteRun(suite="wikitext2", settings={}, metrics=[PPL], records=recs)


def flag_run(flags_per_item, checks_per_item=None) -> SuiteRun:
    recs = [
        ItemRecord(
            suite="collapse",
            item_id=f"c{i}",
            prompt=f"prompt {i}",
            output=f"<script>alert({i})</script> output {i}",
            flags=list(f),
            checks=(checks_per_item[i] if checks_per_item else {}),
        )
        for i, f in enumerate(flags_per_item)
    ]
    return SuiteRun(suite="collapse", settings={}, metrics=[], records=recs)


BUDGETS = [
    Budget(suite="arc", metric="acc", kind="drop", max=5, label="ARC accuracy"),
    Budget(suite="flores", metric="chrf", kind="drop", max=1),
    Budget(suite="wikitext2", metric="perplexity", kind="ratio", max=1.05),
    Budget(suite="collapse", metric="script_mixing", kind="new_flags_count", max=0),
]


def world(seed: int, *, broken: bool = False, noise: bool = True):
    """A baseline and a candidate over four capabilities: benign (small noise) or clearly broken."""
    rng = np.random.default_rng(seed)
    n = 400
    base_acc = rng.random(n) < 0.6
    cand_acc = base_acc.copy()
    if noise:  # symmetric flips: no true change
        swap = rng.random(n) < 0.04
        cand_acc[swap] = ~cand_acc[swap]
    if broken:  # about -30 points
        cand_acc[base_acc & (rng.random(n) < 0.5)] = False
    chrf_b = rng.uniform(30, 60, 200)
    chrf_c = chrf_b + (rng.normal(0, 0.5, 200) if noise else 0) - (15 if broken else 0)
    tok = rng.integers(200, 400, 60).astype(float)
    nll_b = tok * rng.uniform(2.8, 3.2, 60)
    nll_c = nll_b + (tok * rng.normal(0, 0.002, 60) if noise else 0) + (tok * math.log(3) if broken else 0)
    flags_b = [[] for _ in range(50)]
    flags_c = [(["script_mixing"] if broken and i < 5 else []) for i in range(50)]
    baseline = {
        "arc": acc_run(base_acc),
        "flores": score_run(chrf_b),
        "wikitext2": ppl_run(nll_b, tok),
        "collapse": flag_run(flags_b),
    }
    candidate = {
        "arc": acc_run(cand_acc),
        "flores": score_run(chrf_c),
        "wikitext2": ppl_run(nll_c, tok),
        "collapse": flag_run(flags_c),
    }
    return baseline, candidate


@pytest.mark.parametrize("seed", range(12))
def test_benign_candidate_never_fails(seed: int) -> None:
    v = evaluate_gate(*world(seed), BUDGETS, POLICY)
    assert v.overall != "FAIL", [c.reason for c in v.capabilities]
    assert all(c.status != "FAIL" for c in v.capabilities)


@pytest.mark.parametrize("seed", range(12))
def test_broken_candidate_always_fails(seed: int) -> None:
    v = evaluate_gate(*world(seed, broken=True), BUDGETS, POLICY)
    assert v.overall == "FAIL"
    assert [c.status for c in v.capabilities] == ["FAIL"] * 4, [c.reason for c in v.capabilities]
    assert verdict_exit_code(v.overall) == 1
    assert v.summary() == "FAIL: 4 failed, 0 passed (4 capabilities)" and not v.ok


def test_identical_candidate_passes_with_zero_change() -> None:
    base, _ = world(0)
    v = evaluate_gate(base, base, BUDGETS, POLICY)
    assert v.overall == "PASS" and verdict_exit_code(v.overall) == 0
    arc = v.capabilities[0]
    assert arc.change == 0 and arc.flips is not None and arc.flips.right_to_wrong == 0
    assert arc.ci_low < 0 < arc.ci_high <= 5
    assert v.capabilities[2].change == pytest.approx(1.0)


def test_fail_reason_reads_like_a_sentence() -> None:
    v = evaluate_gate(*world(1, broken=True), BUDGETS, POLICY)
    arc = v.capabilities[0]
    assert arc.reason.startswith("acc dropped") and "points" in arc.reason
    assert "confidently beyond budget" in arc.reason and "budget 5" in arc.reason
    assert arc.flips is not None and arc.flips.right_to_wrong > 50 and arc.flips.wrong_to_right < 15
    assert arc.mcnemar_p is not None and arc.mcnemar_p < 1e-10
    assert len(arc.changed_items) == arc.flips.right_to_wrong
    assert arc.worst_items and arc.worst_items[0].baseline_text.startswith("answer")
    assert arc.baseline_value > arc.candidate_value
    assert arc.ci_low > 5 and arc.ci_low <= arc.change <= arc.ci_high


def test_holm_levels_and_no_correction() -> None:
    v = evaluate_gate(*world(2, broken=True), BUDGETS, POLICY)
    levels = sorted(c.adjusted_alpha for c in v.capabilities if c.adjusted_alpha is not None)
    assert levels == pytest.approx(
        [0.05 / 3, 0.05 / 2, 0.05]
    )  # new_flags_count is an exact count: not in the family
    v2 = evaluate_gate(*world(2, broken=True), BUDGETS, POLICY.model_copy(update={"correction": "none"}))
    assert {c.adjusted_alpha for c in v2.capabilities if c.adjusted_alpha is not None} == {0.05}


def test_inconclusive_and_items_to_decide() -> None:
    rng = np.random.default_rng(5)
    base = rng.random(60) < 0.7
    cand = base.copy()
    cand[np.flatnonzero(base)[:2]] = False  # ~3.3 points drop on 60 items, budget 5
    budgets = [Budget(suite="arc", metric="acc", kind="drop", max=5)]
    v = evaluate_gate({"arc": acc_run(base)}, {"arc": acc_run(cand)}, budgets, POLICY)
    cap = v.capabilities[0]
    assert v.overall == "INCONCLUSIVE" and verdict_exit_code(v.overall) == 3
    assert cap.items_to_decide is not None and cap.items_to_decide > 60
    assert "items would decide it" in cap.reason
    tiles = math.ceil(cap.items_to_decide / 60) + 1
    more = evaluate_gate(
        {"arc": acc_run(np.tile(base, tiles))}, {"arc": acc_run(np.tile(cand, tiles))}, budgets, POLICY
    )
    assert more.capabilities[0].status == "PASS"
    lenient = evaluate_gate(
        {"arc": acc_run(base)}, {"arc": acc_run(cand)}, budgets, GatePolicy(inconclusive="pass")
    )
    assert lenient.overall == "PASS" and lenient.capabilities[0].status == "INCONCLUSIVE"


def test_suite_error_and_missing_items_fail_with_reasons() -> None:
    base, cand = world(3)
    cand["flores"] = cand["flores"].model_copy(update={"error": "CUDA out of memory"})
    cand["arc"] = cand["arc"].model_copy(update={"records": cand["arc"].records[:-7]})
    del cand["wikitext2"]
    v = evaluate_gate(base, cand, BUDGETS, POLICY)
    arc, flores, wiki, _ = v.capabilities
    assert v.overall == "FAIL"
    assert arc.status == "FAIL" and "7 items missing" in arc.reason
    assert flores.status == "FAIL" and "CUDA out of memory" in flores.reason
    assert wiki.status == "FAIL" and "not run on the candidate" in wiki.reason


def test_pairing_is_by_item_id_not_order() -> None:
    base, cand = world(4, broken=True)
    shuffled = dict(cand)
    recs = list(cand["arc"].records)
    np.random.default_rng(0).shuffle(recs)
    shuffled["arc"] = cand["arc"].model_copy(update={"records": recs})
    a = evaluate_gate(base, cand, BUDGETS[:1], POLICY).capabilities[0]
    b = evaluate_gate(base, shuffled, BUDGETS[:1], POLICY).capabilities[0]
    assert (a.change, a.ci_low, a.ci_high, a.flips) == (b.change, b.ci_low, b.ci_high, b.flips)


def test_duplicate_ids_and_missing_scores_are_refused() -> None:
    base, cand = world(0)
    dup = cand["arc"].model_copy(update={"records": [*cand["arc"].records, cand["arc"].records[0]]})
    v = evaluate_gate(base, {**cand, "arc": dup}, BUDGETS[:1], POLICY)
    assert v.capabilities[0].status == "FAIL" and "duplicate item ids" in v.capabilities[0].reason
    recs = [r.model_copy(update={"scores": {}}) if i == 3 else r for i, r in enumerate(cand["arc"].records)]
    v = evaluate_gate(
        base, {**cand, "arc": cand["arc"].model_copy(update={"records": recs})}, BUDGETS[:1], POLICY
    )
    assert "no finite 'acc' score" in v.capabilities[0].reason


def test_flag_counts_from_flags_checks_and_overrides() -> None:
    base = {"collapse": flag_run([[], [], ["denial"], []], [{"min_len": True}] * 4)}
    cand = {
        "collapse": flag_run(
            [["script_mixing"], [], ["denial"], []],
            [{"min_len": True}, {"min_len": False}, {"min_len": True}, {"min_len": True}],
        )
    }
    budgets = [
        Budget(suite="collapse", metric="script_mixing", kind="new_flags_count", max=0),
        Budget(suite="collapse", metric="denial", kind="new_flags_count", max=0),
        Budget(suite="collapse", metric="min_len", kind="new_flags_count", max=1),
        Budget(suite="collapse", metric="any", kind="new_flags_count", max=1, label="anything"),
    ]
    extra = {"collapse": {"c3": (set(), {"denial"})}}
    v = evaluate_gate(base, cand, budgets, POLICY, flags=extra)
    sm, den, ml, anything = v.capabilities
    assert sm.status == "FAIL" and sm.change == 1 and sm.changed_items == ["c0"] and "c0" in sm.reason
    assert den.status == "FAIL" and den.changed_items == ["c3"]  # c2 was flagged on both sides
    assert ml.status == "PASS" and ml.changed_items == ["c1"]
    assert anything.status == "FAIL" and anything.changed_items == ["c0", "c1", "c3"]
    assert sm.worst_items[0].candidate_text.startswith("<script>")


def test_rate_increase_uses_paired_flag_rates() -> None:
    n = 300
    base = [[] for _ in range(n)]
    cand = [(["length_collapse"] if i % 4 == 0 else []) for i in range(n)]  # +25 points
    b = Budget(suite="collapse", metric="length_collapse", kind="rate_increase", max=5)
    v = evaluate_gate({"collapse": flag_run(base)}, {"collapse": flag_run(cand)}, [b], POLICY)
    cap = v.capabilities[0]
    assert cap.status == "FAIL" and cap.change == pytest.approx(25.0) and cap.ci_low > 5
    assert cap.flips is not None and cap.flips.right_to_wrong == 75
    v = evaluate_gate({"collapse": flag_run(base)}, {"collapse": flag_run(base)}, [b], POLICY)
    assert v.capabilities[0].status == "PASS"


def test_max_mean_needs_only_the_candidate() -> None:
    rng = np.random.default_rng(6)
    b = Budget(suite="divergence", metric="kl", kind="max_mean", max=0.05)
    low = {"divergence": score_run(rng.exponential(0.01, 200), "divergence", KL)}
    high = {"divergence": score_run(rng.exponential(0.5, 200), "divergence", KL)}
    assert evaluate_gate({}, low, [b], POLICY).capabilities[0].status == "PASS"
    cap = evaluate_gate({}, high, [b], POLICY).capabilities[0]
    assert cap.status == "FAIL" and cap.worst_items[0].candidate_score == max(
        r.scores["kl"] for r in high["divergence"].records
    )


def test_clustered_items_widen_the_interval() -> None:
    rng = np.random.default_rng(8)
    subjects = np.repeat([f"subj{i}" for i in range(8)], 50)
    base = rng.random(400) < 0.5
    cand = base.copy()
    hit = np.isin(subjects, ["subj0", "subj1"]) & base  # the damage is concentrated in two subjects
    cand[hit] = False
    budgets = [Budget(suite="mmlu_pro", metric="acc", kind="drop", max=2)]
    plain = evaluate_gate(
        {"mmlu_pro": acc_run(base, "mmlu_pro")}, {"mmlu_pro": acc_run(cand, "mmlu_pro")}, budgets, POLICY
    ).capabilities[0]
    clustered = evaluate_gate(
        {"mmlu_pro": acc_run(base, "mmlu_pro", groups=list(subjects))},
        {"mmlu_pro": acc_run(cand, "mmlu_pro", groups=list(subjects))},
        budgets,
        POLICY,
    ).capabilities[0]
    assert "cluster-robust" in clustered.method and "cluster" not in plain.method
    assert clustered.change == pytest.approx(plain.change)
    assert clustered.ci_low < plain.ci_low and clustered.ci_high > plain.ci_high


def test_continuous_drop_and_lower_is_better_direction() -> None:
    rng = np.random.default_rng(9)
    chrf = rng.uniform(30, 60, 150)
    b = [Budget(suite="flores", metric="chrf", kind="drop", max=1)]
    cap = evaluate_gate({"flores": score_run(chrf)}, {"flores": score_run(chrf - 3)}, b, POLICY).capabilities[
        0
    ]
    assert cap.status == "FAIL" and cap.change == pytest.approx(3.0) and "dropped" in cap.reason
    kl = [Budget(suite="d", metric="kl", kind="drop", max=0.1)]
    cap = evaluate_gate(
        {"d": score_run(chrf / 100, "d", KL)}, {"d": score_run(chrf / 100 + 0.5, "d", KL)}, kl, POLICY
    )
    assert cap.capabilities[0].change == pytest.approx(0.5) and "rose" in cap.capabilities[0].reason


def test_budget_and_gate_input_validation() -> None:
    with pytest.raises(ValidationError, match="ratio budget needs max > 0"):
        Budget(suite="w", metric="perplexity", kind="ratio", max=0)
    with pytest.raises(ValidationError, match="count of items"):
        Budget(suite="c", metric="denial", kind="new_flags_count", max=0.5)
    with pytest.raises(ValidationError, match=r"tolerated rate in points.*new_flags_count"):
        Budget(suite="c", metric="denial", kind="new_flags", max=0)
    with pytest.raises(ValidationError, match="kind"):
        Budget(suite="c", metric="denial", kind="fewer", max=1)
    with pytest.raises(ValidationError, match="extra"):
        Budget(suite="c", metric="denial", kind="new_flags_count", max=0, maximum=3)
    with pytest.raises(ValidationError):
        GatePolicy(confidence=1.5)
    base, cand = world(0)
    with pytest.raises(UserError, match=r"has no metric 'accuracy'.*it has: acc"):
        evaluate_gate(base, cand, [Budget(suite="arc", metric="accuracy", kind="drop", max=2)])
    with pytest.raises(UserError, match="no budgets"):
        evaluate_gate(base, cand, [])
    with pytest.raises(UserError, match="share the label"):
        evaluate_gate(base, cand, [BUDGETS[0], BUDGETS[0]])


def test_metric_on_a_subset_of_items_compares_those_items() -> None:
    """chrF per translation direction: only that direction's records carry the score."""

    def run(shift: float) -> SuiteRun:
        recs = []
        for i in range(120):
            d = "eng-spa" if i % 2 else "eng-zho"
            base = 40.0 + (i % 7)
            val = base - (shift if d == "eng-zho" else 0.0)
            recs.append(
                ItemRecord(
                    suite="flores", item_id=f"{d}:{i}", group=d, scores={"chrf": val, f"chrf_{d}": val}
                )
            )
        specs = [
            CHRF,
            *(
                MetricSpec(name=f"chrf_{d}", kind="continuous", higher_is_better=True)
                for d in ("eng-spa", "eng-zho")
            ),
        ]
        return SuiteRun(suite="flores", settings={}, metrics=specs, records=recs)

    budgets = [Budget(suite="flores", metric=f"chrf_{d}", kind="drop", max=1) for d in ("eng-spa", "eng-zho")]
    v = evaluate_gate({"flores": run(0)}, {"flores": run(5)}, budgets, POLICY)
    spa, zho = v.capabilities
    assert spa.status == "PASS" and spa.n_items == 60 and spa.change == 0
    assert zho.status == "FAIL" and zho.n_items == 60 and zho.change == pytest.approx(5)
    broken = run(5)
    broken.records[1].scores.pop("chrf_eng-spa")
    v = evaluate_gate({"flores": run(0)}, {"flores": broken}, budgets[:1], POLICY)
    assert v.capabilities[0].status == "FAIL" and "no finite 'chrf_eng-spa' score" in v.capabilities[0].reason


def test_holm_stops_at_the_first_undecided_capability() -> None:
    # Identical 100-item runs: Tango's p for "drop < m" is Phi(-sqrt(n m / (1 - m))):
    # about 0.030 for 3.4 points and 0.039 for 3.0 points. Holm compares 0.030 with 0.025 (miss,
    # stop), so the 0.039 one is not decided either, though it is below 0.05 on its own.
    correct = np.random.default_rng(12).random(100) < 0.6
    runs = {"a": acc_run(correct, "a"), "b": acc_run(correct, "b")}
    budgets = [
        Budget(suite="a", metric="acc", kind="drop", max=3.4),
        Budget(suite="b", metric="acc", kind="drop", max=3.0),
    ]
    v = evaluate_gate(runs, runs, budgets, POLICY)
    a, b = v.capabilities
    assert a.p_value == pytest.approx(0.030, abs=0.002) and b.p_value == pytest.approx(0.039, abs=0.002)
    assert (a.status, b.status) == ("INCONCLUSIVE", "INCONCLUSIVE")
    assert a.adjusted_alpha == pytest.approx(0.025) and b.adjusted_alpha == pytest.approx(0.05)
    assert "correction stopped" in b.reason and "straddles" in a.reason
    plain = evaluate_gate(runs, runs, budgets, POLICY.model_copy(update={"correction": "none"}))
    assert [c.status for c in plain.capabilities] == ["PASS", "PASS"]


def test_multiple_choice_answers_are_shown_and_explain_lists_items() -> None:
    def run(picks) -> SuiteRun:
        recs = [
            ItemRecord(
                suite="arc",
                item_id=f"q{i}",
                prompt="Which is a planet?",
                reference="Mars",
                scores={"acc": float(p == 1)},
                meta={
                    "choices": ["Moon", "Mars", "Sun"],
                    "loglikelihoods": [-2.0 if j == p else -5.0 for j in range(3)],
                },
            )
            for i, p in enumerate(picks)
        ]
        return SuiteRun(suite="arc", settings={}, metrics=[ACC], records=recs)

    v = evaluate_gate({"arc": run([1] * 40)}, {"arc": run([0] * 20 + [1] * 20)}, BUDGETS[:1], POLICY)
    cap = v.capabilities[0]
    assert cap.status == "FAIL"
    assert (cap.worst_items[0].baseline_text, cap.worst_items[0].candidate_text) == ("(B) Mars", "(A) Moon")
    text = cap.explain(max_items=3)
    assert text.startswith("ARC accuracy: FAIL — acc dropped 50 points")
    assert (
        "q0 (right → wrong): baseline '(B) Mars' -> candidate '(A) Moon'" in text and "… and 17 more" in text
    )
