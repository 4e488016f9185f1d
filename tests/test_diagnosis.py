"""The expert diagnosis (pure): routes stored compactly, shares attributed to changed experts, risk ranking."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.api._diagnosis import calibration_usage, changed_experts, gate_diagnosis, risk_ranking
from harness.diagnosis import (
    CalibrationUsage,
    RouteMass,
    decode_routes,
    diagnose,
    encode_routes,
    item_route_mass,
    rank_risk,
    suite_order,
)
from harness.gate import CapabilityResult, GatePolicy, GateVerdict
from harness.records import SuiteRun


def routes(mass: list, item_ids: list[str] | None = None, layers: tuple[int, ...] = (0, 1)) -> RouteMass:
    m = np.array(mass, dtype=np.float32)
    ids = item_ids or [f"i{n}" for n in range(m.shape[0])]
    return RouteMass(item_ids=tuple(ids), layers=layers, mass=m, picks=(m > 0).astype(np.int64) * 3,
                     tokens=np.full(len(ids), 3, dtype=np.int64))  # fmt: skip


def verdict(*caps: tuple[str, str, list[str]]) -> GateVerdict:
    return GateVerdict(overall="FAIL", policy=GatePolicy(), capabilities=[
        CapabilityResult(label=label, suite=suite, metric="acc", kind="drop", status="FAIL", budget=5, reason="",
                         changed_items=items) for label, suite, items in caps])  # fmt: skip


# Two items, two layers, four experts: item a sends all of layer 0 to expert 1, item b none of it.
A = [[0, 3, 0, 0], [1, 1, 1, 0]]
B = [[2, 0, 1, 0], [0, 1, 1, 1]]


def test_flipped_items_share_of_routing_to_pruned_experts() -> None:
    r = {"arc": routes([A, B], ["a", "b"])}
    d = diagnose(r, {0: {1: "pruned (masked)"}}, verdict(("ARC", "arc", ["a"])))
    (cap,) = d.capabilities
    assert d.available and d.words == "pruned experts"
    assert cap.broke == 1 and cap.broke_mass == pytest.approx(0.5) and cap.other_mass == 0.0
    assert cap.broke_tokens == pytest.approx(3 / 12)  # 3 selections of expert 1 in layer 0, 9 in layer 1
    assert cap.items[0].top[0].layer == 0 and cap.items[0].top[0].expert == 1
    assert "right→wrong items sent 50% of their routing to pruned experts" in cap.line
    assert "unchanged items 0.0%" in cap.line
    assert d.heatmap == [[pytest.approx(0.5), 0.0]]  # layer 0: 3 of 6 mass units; layer 1: none changed


def test_layout_mismatch_is_one_line_and_no_diagnosis() -> None:
    d = diagnose({"arc": routes([A])}, {7: {0: "edited"}}, verdict(("ARC", "arc", [])))
    assert not d.available and d.note.startswith("layout mismatch") and "layer(s) [7]" in d.note
    d = diagnose({"arc": routes([A])}, {0: {9: "edited"}}, verdict(("ARC", "arc", [])))
    assert not d.available and "outside the baseline's 4 experts" in d.note


def test_no_route_traces_and_openai_say_why() -> None:
    run = SuiteRun(suite="arc", settings={})
    d = gate_diagnosis("transformers", {"arc": run}, {"masked_router_rows": {"0": [1]}}, verdict(), __file__)  # type: ignore[arg-type]
    assert not d.available and "moegate baseline record" in d.note
    d = gate_diagnosis("openai", {"arc": run}, None, verdict(), __file__)  # type: ignore[arg-type]
    assert not d.available and "openai" in d.note


mass_arrays = st.integers(1, 4).flatmap(lambda n: st.integers(1, 3).flatmap(lambda layers: st.lists(
    st.lists(st.lists(st.floats(0, 4, width=16), min_size=4, max_size=4), min_size=layers, max_size=layers),
    min_size=n, max_size=n)))  # fmt: skip


@settings(max_examples=60, deadline=None)
@given(mass_arrays, st.sets(st.tuples(st.integers(0, 2), st.integers(0, 3)), min_size=1))
def test_shares_are_fractions_and_grow_with_the_changed_set(mass: list, cells: set[tuple[int, int]]) -> None:
    layers = tuple(range(len(mass[0])))
    cells = {(layer, e) for layer, e in cells if layer in layers} or {(0, 0)}
    r = {"s": routes(mass, layers=layers)}
    ids = list(r["s"].item_ids)
    changed: dict[int, dict[int, str]] = {}
    for layer, e in sorted(cells):
        changed.setdefault(layer, {})[e] = "edited"
    bigger = {layer: {**changed.get(layer, {}), **{e: "edited" for e in range(4)}} if layer == 0 else dict(v)
              for layer, v in {**changed, 0: changed.get(0, {})}.items()}  # fmt: skip
    small = diagnose(r, changed, verdict(("c", "s", ids[:1]))).capabilities[0]
    large = diagnose(r, bigger, verdict(("c", "s", ids[:1]))).capabilities[0]
    for value in (small.broke_mass, small.other_mass, small.broke_tokens, small.other_tokens):
        assert value is None or -1e-6 <= value <= 1 + 1e-6
    if small.broke_mass is not None and large.broke_mass is not None:
        assert large.broke_mass >= small.broke_mass - 1e-6
    everything = {layer: dict.fromkeys(range(4), "edited") for layer in layers}
    whole = diagnose(r, everything, verdict(("c", "s", ids))).capabilities[0]
    assert whole.broke_mass is None or whole.broke_mass == pytest.approx(1.0)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 6).flatmap(lambda tokens: st.lists(st.lists(
    st.lists(st.integers(0, 3), min_size=2, max_size=2), min_size=tokens, max_size=tokens), min_size=1, max_size=3)))
def test_item_mass_and_artifact_round_trip(ids: list) -> None:
    weights = [[[0.75, 0.25] for _ in layer] for layer in ids]
    ids = [[row if row[0] != row[1] else [row[0], (row[0] + 1) % 4] for row in layer] for layer in ids]
    mass, picks = item_route_mass(ids, weights, 4)
    assert mass.sum() == pytest.approx(len(ids[0]) * len(ids)) and picks.sum() == 2 * sum(len(layer) for layer in ids)
    r = RouteMass(item_ids=("x",), layers=tuple(range(len(ids))), mass=mass[None].astype(np.float32),
                  picks=picks[None], tokens=np.array([len(ids[0])]))  # fmt: skip
    back = decode_routes(encode_routes(r))
    assert back.item_ids == ("x",) and back.layers == r.layers
    np.testing.assert_allclose(back.mass, r.mass, rtol=1e-3)
    np.testing.assert_array_equal(back.picks, r.picks)


def test_a_damaged_artifact_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="route artifact"):
        decode_routes(b"not a zip")


def test_risk_ranks_suites_by_mass_to_changed_experts() -> None:
    r = {"arc": routes([B]), "flores": routes([A]), "wiki": routes([[[1, 1, 1, 1], [1, 1, 1, 1]]])}
    changed = {0: {1: "pruned (zeroed)"}}
    risks = rank_risk(r, changed, [("ARC", "arc"), ("PPL", "wiki"), ("script", "flores"), ("collapse", "collapse")])
    assert [x.label for x in risks] == ["script", "PPL", "ARC", "collapse"]
    assert risks[0].share == pytest.approx(0.5) and risks[-1].share is None
    assert suite_order(risks, ["wiki", "arc", "collapse", "flores"]) == ["flores", "wiki", "arc", "collapse"]


def test_calibration_coverage_names_the_rare_experts_that_carry_a_suite() -> None:
    r = {"flores": routes([A]), "arc": routes([B])}
    calib = CalibrationUsage(source="pruning.json: scores on calib.jsonl", layers=(0, 1),
                             usage=np.array([[10, 0.1, 10, 10], [1, 1, 1, 1]]))  # fmt: skip
    d = diagnose(r, {0: {1: "pruned (masked)"}}, verdict(("s", "flores", ["i0"])), calib)
    (row,) = d.coverage
    assert row.calibration < 0.01 and row.suites["flores"] == pytest.approx(1.0) and row.carries == ["flores"]
    assert "1 of 1 changed experts were rare" in d.coverage_note


def test_the_adapter_reads_masked_zeroed_and_changed_expert_tensors() -> None:
    findings = {
        "masked_router_rows": {"3": [5]}, "zeroed_experts": {"1": [0, 2]},
        "changed": ["model.layers.3.mlp.gate.weight", "model.layers.4.mlp.experts.6.down_proj.weight",
                    "model.layers.1.mlp.experts.0.up_proj.weight", "model.layers.2.mlp.experts.gate_up_proj"],
        "layout": {"routed_experts": 2},
    }  # fmt: skip
    assert changed_experts(findings) == {
        1: {0: "pruned (zeroed)", 2: "pruned (zeroed)"}, 2: {0: "edited", 1: "edited"}, 3: {5: "pruned (masked)"},
        4: {6: "edited"},
    }  # fmt: skip


def test_calibration_usage_reads_pruning_json(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import json

    (tmp_path / "pruning.json").write_text(json.dumps({"criterion": "frequency", "calib_file": "/x/c4.jsonl",
        "layers": [{"layer": 0, "scores": [1, 2]}, {"layer": 2, "scores": [3, 4]}]}))  # fmt: skip
    usage = calibration_usage(tmp_path)
    assert usage is not None and usage.layers == (0, 2) and usage.usage.tolist() == [[1, 2], [3, 4]]
    assert "c4.jsonl" in usage.source
    (tmp_path / "pruning.json").write_text(json.dumps({"criterion": "reap", "layers": [{"layer": 0, "scores": [1, 2]}]}))
    assert calibration_usage(tmp_path) is None  # REAP scores are not a routing share


def test_risk_ranking_without_routes_says_how_to_add_them() -> None:
    risks, why = risk_ranking({"arc": SuiteRun(suite="arc", settings={})}, {"masked_router_rows": {"0": [1]}}, [("ARC", "arc")])
    assert risks == [] and why is not None and "moegate baseline record" in why


def test_recording_skips_a_backend_without_route_traces_with_a_reason() -> None:
    from harness.routing import record_routes
    from tests.suite_fakes import WordBackend

    runs = {"arc": SuiteRun(suite="arc", settings={})}
    said: list[str] = []
    assert record_routes(WordBackend(), runs, said.append) is runs  # type: ignore[arg-type]
    assert said and "cannot see inside the model" in said[0]


def test_an_inexact_router_mask_is_a_stated_caveat(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import json

    from harness.api._diagnosis import caveats

    record = {"mode": "mask", "layers": [{"layer": 0, "mask_exact": False, "pruned": [1]}]}
    (tmp_path / "pruning.json").write_text(json.dumps(record))
    (line,) = caveats(tmp_path)
    assert "mask_exact false" in line and "TO the masked experts" in line
    record["layers"][0]["mask_exact"] = True
    (tmp_path / "pruning.json").write_text(json.dumps(record))
    assert caveats(tmp_path) == []
