"""The Python API (``harness.api``): suites that score the candidate against the baseline's stored
artifacts, open backends instead of specs, and ``evaluate``'s limit on every suite."""

from __future__ import annotations

import struct
import textwrap
from pathlib import Path

import pytest

import harness
from harness.api import evaluate, gate_candidate, load_gate, open_model, record_baseline
from harness.api.config import ModelSpec
from harness.errors import UserError
from harness.store import load_store
from tests.gate_toys import EchoSuite, write_gate
from tests.suite_fakes import WordBackend

pytestmark = pytest.mark.usefixtures("gate_toys")

ECHO_GATE = textwrap.dedent(
    """
    [suites.toy_echo]
    n_items = 4

    [[budgets]]
    suite = "toy_echo"
    metric = "drift"
    kind = "max_mean"
    max = 0.001
    """
)


def test_a_suite_scores_the_candidate_against_the_baselines_artifacts(tiny: Path, tmp_path: Path) -> None:
    config = load_gate(write_gate(tmp_path, str(tiny), body=ECHO_GATE))
    quiet = lambda _m: None  # noqa: E731
    record_baseline(config, log=quiet)
    _, stored = load_store(config.baseline_dir)
    blob = stored["toy_echo"].artifacts[EchoSuite.ARTIFACT]
    assert len(struct.unpack("<4d", blob)) == 4
    assert (config.baseline_dir / "artifacts" / "toy_echo" / EchoSuite.ARTIFACT).read_bytes() == blob

    opened = open_model(ModelSpec(model=str(tiny)))  # an open backend works as well as a spec
    outcome = gate_candidate(config, opened, tmp_path / "run", log=quiet)
    cap = outcome.verdict.capabilities[0]
    assert cap.status == "PASS" and cap.candidate_value == 0.0  # same model: no drift from the stored values
    _, candidate = load_store(tmp_path / "run" / "candidate")
    assert candidate["toy_echo"].artifacts[EchoSuite.ARTIFACT] == blob

    path = config.baseline_dir / "artifacts" / "toy_echo" / EchoSuite.ARTIFACT
    path.write_bytes(struct.pack("<4d", 0.0, 0.0, 0.0, 0.0))
    with pytest.raises(UserError, match="edited by hand"):
        gate_candidate(config, str(tiny), tmp_path / "run2", log=quiet)
    assert not (tmp_path / "run2").exists()


def test_evaluate_limits_every_suite_a_pinned_item_list_too() -> None:
    backend = WordBackend(lambda request: "An answer of a reasonable length for the collapse checks to read.")
    result = evaluate(backend, ["collapse"], limit=3, log=lambda _m: None)
    records = result.runs["collapse"].records
    from harness.suites import suite_settings

    pinned = suite_settings("collapse", "ci").item_ids  # type: ignore[attr-defined]
    assert pinned is not None and len(pinned) > 3
    assert [r.item_id for r in records] == pinned[:3]


def test_the_package_map_re_exports_the_api() -> None:
    assert harness.gate_candidate is gate_candidate and harness.load_gate is load_gate
    assert {"record_baseline", "gate_candidate", "decide", "evaluate"} <= set(harness.__all__)
