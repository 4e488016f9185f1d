"""The pytest plugin: one test per capability, failure messages with numbers, JUnit XML, usage errors."""

from __future__ import annotations

import shutil
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from harness.api import load_gate, record_baseline
from tests.gate_toys import write_gate

BODY = textwrap.dedent(
    """
    [suites.toy]
    n_items = 6

    [[budgets]]
    label = "toy log-likelihood"
    suite = "toy"
    metric = "logprob"
    kind = "drop"
    max = 0.5

    [[budgets]]
    suite = "toy"
    metric = "logprob"
    kind = "max_mean"
    max = -1000.0
    """
)


pytestmark = pytest.mark.usefixtures("gate_toys")


def test_one_test_per_capability_with_junit(tiny: Path, pytester: pytest.Pytester) -> None:
    gate = write_gate(pytester.path, str(tiny), body=BODY)
    record_baseline(load_gate(gate), log=lambda _: None)
    candidate = pytester.path / "candidate"
    shutil.copytree(tiny, candidate)
    junit = pytester.path / "junit.xml"
    result = pytester.runpytest(
        "--moegate-gate", str(gate), "--moegate-candidate", str(candidate),
        "--moegate-report-dir", str(pytester.path / "run"), f"--junitxml={junit}", "-p", "no:cacheprovider",
    )
    result.assert_outcomes(passed=1, failed=1)
    text = result.stdout.str()
    assert "toy/logprob: FAIL" in text  # a budget without a label is named suite/metric
    assert "interval [" in text and "budget -1000" in text
    assert "moegate gate" in text and "report (html)" in text
    cases = {case.get("name"): case for case in ET.parse(junit).getroot().iter("testcase")}
    assert set(cases) == {"moegate[toy log-likelihood]", "moegate[toy/logprob]"}
    failure = cases["moegate[toy/logprob]"].find("failure")
    assert failure is not None and "budget -1000" in (failure.get("message", "") + (failure.text or ""))
    assert cases["moegate[toy log-likelihood]"].find("failure") is None


def test_a_missing_baseline_fails_every_capability_with_one_line(tiny: Path, pytester: pytest.Pytester) -> None:
    gate = write_gate(pytester.path, str(tiny), body=BODY)
    result = pytester.runpytest("--moegate-gate", str(gate), "--moegate-candidate", str(tiny), "-p", "no:cacheprovider")
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines(["*moegate: no stored run at*moegate baseline record*"])


def test_usage_errors(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest("--moegate-gate", "gates/none.toml")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--moegate-gate needs --moegate-candidate*"])
    bad = pytester.path / "bad.toml"
    bad.write_text("[gate\n")
    result = pytester.runpytest("--moegate-gate", str(bad), "--moegate-candidate", "x")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*not valid TOML*"])
