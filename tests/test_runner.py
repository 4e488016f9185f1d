"""The heavy half: suites on a real tiny model through the request cache; crashes become errors; flags."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from harness.api import ModelSpec, open_model, resolve_testbed
from harness.cache import CachedBackend
from harness.gate.flags import detector_flags
from harness.records import ItemRecord, SuiteRun
from harness.runner import run_suites, sharing_order
from harness.suites import SuiteSettings
from tests.gate_toys import ToySettings

pytestmark = pytest.mark.usefixtures("gate_toys")


def test_suites_run_through_the_cache_and_a_crash_is_recorded(tiny: Path) -> None:
    backend = open_model(ModelSpec(model=str(tiny)))
    assert isinstance(backend, CachedBackend)
    lines: list[str] = []
    runs = run_suites(backend, {"toy": ToySettings(), "toy_crash": SuiteSettings()}, log=lines.append)
    toy, crash = runs["toy"], runs["toy_crash"]
    assert toy.error is None and len(toy.records) == 6
    assert all(math.isfinite(r.scores["logprob"]) and r.scores["logprob"] < 0 for r in toy.records)
    assert crash.error == "RuntimeError: toy suite exploded" and crash.records == []
    assert crash.settings == SuiteSettings().model_dump(mode="json")
    assert any("toy_crash: ERROR RuntimeError" in line for line in lines)
    again = run_suites(open_model(ModelSpec(model=str(tiny))), {"toy": ToySettings()})["toy"]
    assert [r.scores for r in again.records] == [r.scores for r in toy.records]


def test_the_testbed_keyword_is_for_local_backends_only() -> None:
    assert resolve_testbed("some/hub-id") == "some/hub-id"
    assert resolve_testbed("testbed", "openai") == "testbed"  # a served model of that name is the server's


def _translation(item: str, text: str) -> SuiteRun:
    record = ItemRecord(suite="flores", item_id=item, prompt="Translate into Spanish: The beach is beautiful today.",
                        output=text, lang="spa")
    mc = ItemRecord(suite="flores", item_id="mc", prompt="pick", scores={"acc": 1.0})
    return SuiteRun(suite="flores", settings={}, records=[record, mc])


def test_detector_flags_compare_candidate_text_with_the_baseline() -> None:
    base = {"flores": _translation("x", "La playa es muy bonita hoy, y el mar también.")}
    cand = {"flores": _translation("x", "La playa es muy bonita hoy, 海滩 y el mar también.")}
    flags = detector_flags(base, cand)
    assert set(flags) == {"flores"} and set(flags["flores"]) == {"x"}  # no text, nothing to read
    base_flags, cand_flags = flags["flores"]["x"]
    assert base_flags == set() and "script_mixing" in cand_flags
    same = detector_flags(base, base)["flores"]["x"]
    assert same == (set(), set())


def test_detector_flags_use_the_gate_files_thresholds() -> None:
    from harness.detectors import DetectorSettings

    long = " ".join(["The beach is lovely today and the sea is calm and warm."] * 6)
    base = {"collapse": SuiteRun(suite="collapse", settings={}, records=[
        ItemRecord(suite="collapse", item_id="x", prompt="Describe the beach.", output=long, lang="en")])}
    cand = {"collapse": SuiteRun(suite="collapse", settings={}, records=[
        ItemRecord(suite="collapse", item_id="x", prompt="Describe the beach.", output=long[:120], lang="en")])}
    assert "length_collapse" in detector_flags(base, cand)["collapse"]["x"][1]
    lenient = detector_flags(base, cand, DetectorSettings(length_ratio=0.1))
    assert "length_collapse" not in lenient["collapse"]["x"][1]


def test_a_top_k_suite_runs_before_the_rolling_suite_it_can_answer() -> None:
    """kld's tables answer wikitext2's windows from the cache, not the reverse: kld moves just before it."""
    assert sharing_order(["wikitext2", "arc_challenge", "kld", "collapse"]) == ["kld", "wikitext2", "arc_challenge", "collapse"]
    assert sharing_order(["arc_challenge", "kld", "flores", "wikitext2"]) == ["arc_challenge", "kld", "flores", "wikitext2"]
    assert sharing_order(["wikitext2", "arc_challenge"]) == ["wikitext2", "arc_challenge"]
