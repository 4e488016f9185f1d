"""Gate files: a valid file resolves suite settings; every mistake is one clear UserError."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from harness.api import load_gate
from harness.errors import UserError
from harness.resources import gates_dir
from harness.suites import SUITES
from tests.gate_toys import register_toys, write_gate


@pytest.fixture(autouse=True)
def toys():
    saved = register_toys()
    yield
    SUITES.restore(saved)


def test_builtin_testbed_gate_is_valid() -> None:
    config = load_gate(gates_dir() / "testbed.toml")
    assert config.name == "testbed"
    assert config.baseline.model == "testbed"
    assert config.baseline_dir == gates_dir().parent / "baselines" / "testbed"
    assert set(config.settings) == {b.suite for b in config.budgets}
    policy = config.policy()
    assert (policy.confidence, policy.correction, policy.inconclusive) == (0.95, "holm", "fail")


def test_overrides_reach_the_suite_settings(tmp_path: Path) -> None:
    config = load_gate(write_gate(tmp_path, "some/model"))
    assert config.settings["toy"].n_items == 6
    assert config.baseline_dir == tmp_path / "baselines" / "toy"
    assert config.budgets[0].display_label == "toy/logprob"


BAD = {
    "not toml": ("[gate\nname=1", "not valid TOML"),
    "unknown key": ('[gate]\nname="x"\ncolour="red"\n', "colour"),
    "unknown suite": (
        '[gate]\nname="x"\n[baseline]\nmodel="m"\ndir="b"\n[suites.tyo]\n'
        '[[budgets]]\nsuite="tyo"\nmetric="logprob"\nkind="drop"\nmax=1\n',
        "did you mean 'toy'",
    ),
    "budget wrong type": (
        '[gate]\nname="x"\n[baseline]\nmodel="m"\ndir="b"\n[suites.toy]\n'
        '[[budgets]]\nsuite="toy"\nmetric="logprob"\nkind="drop"\nmax="two"\n',
        "budgets.0.max",
    ),
    "budget unknown kind": (
        '[gate]\nname="x"\n[baseline]\nmodel="m"\ndir="b"\n[suites.toy]\n'
        '[[budgets]]\nsuite="toy"\nmetric="logprob"\nkind="drops"\nmax=1\n',
        "budgets.0.kind",
    ),
    "budget for a suite not run": (
        '[gate]\nname="x"\n[baseline]\nmodel="m"\ndir="b"\n[suites.toy]\n'
        '[[budgets]]\nsuite="toy_crash"\nmetric="logprob"\nkind="drop"\nmax=1\n',
        "which [suites] does not run",
    ),
    "bad suite setting": (
        '[gate]\nname="x"\n[baseline]\nmodel="m"\ndir="b"\n[suites.toy]\nn_items="many"\n'
        '[[budgets]]\nsuite="toy"\nmetric="logprob"\nkind="drop"\nmax=1\n',
        "n_items",
    ),
    "no budgets": ('[gate]\nname="x"\n[baseline]\nmodel="m"\ndir="b"\n[suites.toy]\n', "budgets"),
    "unknown metric": (
        '[gate]\nname="x"\n[baseline]\nmodel="m"\ndir="b"\n[suites.toy]\n'
        '[[budgets]]\nsuite="toy"\nmetric="logprb"\nkind="drop"\nmax=1\n',
        "names metric 'logprb', which suite 'toy' does not report (it has: logprob, acc)",
    ),
    "unknown flag": (
        '[gate]\nname="x"\n[baseline]\nmodel="m"\ndir="b"\n[suites.toy]\n'
        '[[budgets]]\nsuite="toy"\nmetric="script_mix"\nkind="new_flags_count"\nmax=0\n',
        "names flag or check 'script_mix'",
    ),
    "two budgets, one label": (
        '[gate]\nname="x"\n[baseline]\nmodel="m"\ndir="b"\n[suites.toy]\n'
        '[[budgets]]\nsuite="toy"\nmetric="logprob"\nkind="drop"\nmax=1\n'
        '[[budgets]]\nsuite="toy"\nmetric="logprob"\nkind="max_mean"\nmax=1\n',
        "two budgets share the label 'toy/logprob'",
    ),
    "unknown backend": ('[gate]\nname="x"\n[baseline]\nmodel="m"\ndir="b"\nbackend="vllm"\n', "unknown backend 'vllm'"),
    "backend option typo": (
        '[gate]\nname="x"\n[baseline]\nmodel="m"\ndir="b"\noptions={dtyp="bfloat16"}\n',
        "unknown transformers backend option 'dtyp'",
    ),
    "backend option value": (
        '[gate]\nname="x"\n[baseline]\nmodel="m"\ndir="b"\noptions={dtype="bf16"}\n', "option 'dtype'",
    ),
    "detector threshold typo": (
        '[gate]\nname="x"\n[baseline]\nmodel="m"\ndir="b"\n[suites.toy]\n[detectors]\nlength_ration=0.3\n'
        '[[budgets]]\nsuite="toy"\nmetric="logprob"\nkind="drop"\nmax=1\n',
        "detectors.length_ration",
    ),
    "bad confidence": (
        '[gate]\nname="x"\nconfidence=95\n[baseline]\nmodel="m"\ndir="b"\n[suites.toy]\n'
        '[[budgets]]\nsuite="toy"\nmetric="logprob"\nkind="drop"\nmax=1\n',
        "gate.confidence",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_mistakes_are_one_line_user_errors(tmp_path: Path, case: str) -> None:
    text, expected = BAD[case]
    path = tmp_path / "g.toml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    with pytest.raises(UserError) as info:
        load_gate(path)
    line = info.value.line()
    assert expected in line, line
    assert "\n" not in line


def test_detector_thresholds_and_backend_options_are_read(tmp_path: Path) -> None:
    body = textwrap.dedent(
        """
        [detectors]
        length_ratio = 0.3
        [suites.collapse]
        [suites.toy]
        [[budgets]]
        suite = "collapse"
        metric = "script"
        kind = "new_flags_count"
        max = 0
        """
    )
    gate = write_gate(tmp_path, "some/model", body=body)
    gate.write_text(gate.read_text().replace('dir = "baselines/toy"', 'dir = "baselines/toy"\noptions = {dtype = "bfloat16"}'))
    config = load_gate(gate)
    assert config.detectors.length_ratio == 0.3
    assert config.settings["collapse"].detectors == config.detectors  # the collapse checks use them
    assert config.baseline.options == {"dtype": "bfloat16"}


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="not found"):
        load_gate(tmp_path / "nope.toml")
