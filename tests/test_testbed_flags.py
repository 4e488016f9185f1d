"""The issue's int8 false FAIL, replayed through the real collapse suite and the shipped gate's budgets.

``tests/data/testbed_collapse_outputs.jsonl`` holds the test bed's own greedy answers to the 8 CI
collapse prompts (test bed ``model.safetensors`` sha256 ``acccfe09…``, recorded with ``moegate baseline
record --gate gates/testbed.toml``), with the model tokens each generated and why it stopped. The
candidate is the same but for the answer the issue reports for the int8 candidate on
``knowledge-monad``: one whitespace word, ``monad_def_def_def…``, cut at the token limit like the
baseline's. Scoring, checks and flags are moegate's own; only the model calls are replayed.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pytest

from harness.api.config import load_gate
from harness.backends.base import GenerateRequest, Generation
from harness.gate.flags import detector_flags
from harness.gate.verdict import evaluate_gate
from harness.resources import gates_dir, suites_dir
from harness.suites.collapse import CollapseSuite, load_prompts
from tests.suite_fakes import WordBackend

OUTPUTS = Path(__file__).resolve().parent / "data" / "testbed_collapse_outputs.jsonl"
ISSUE_INT8_MONAD = Generation(text="A monad is monad_def" + "_def" * 150, tokens=160, finish_reason="length")


class ReplayBackend(WordBackend):
    """Answers each prompt with a stored generation."""

    def __init__(self, by_prompt: dict[str, Generation]) -> None:
        super().__init__()
        self.by_prompt = by_prompt

    def generate(self, requests: Sequence[GenerateRequest]) -> list[Generation]:
        return [self.by_prompt[r.prompt] for r in requests]


def test_the_issue_int8_case_does_not_fail_the_shipped_gate() -> None:
    config = load_gate(gates_dir() / "testbed.toml")
    prompts = {p.id: p.prompt for p in load_prompts(suites_dir() / "collapse_prompts.toml")}
    rows = [json.loads(line) for line in OUTPUTS.read_text(encoding="utf-8").splitlines()]
    stored = {prompts[r["id"]]: Generation(r["output"], r["tokens"], r["finish_reason"]) for r in rows}
    # the recorded answers are to the CI profile's 8 prompts; the gate's budgets and detectors are the shipped ones
    settings = config.settings["collapse"].model_copy(update={"item_ids": [r["id"] for r in rows], "max_tokens": 160})
    base = {"collapse": CollapseSuite().run(ReplayBackend(stored), settings)}
    noisy = {**stored, prompts["knowledge-monad"]: ISSUE_INT8_MONAD}
    cand = {"collapse": CollapseSuite().run(ReplayBackend(noisy), settings)}
    budgets = [b for b in config.budgets if b.suite == "collapse"]
    verdict = evaluate_gate(base, cand, budgets, config.policy(), flags=detector_flags(base, cand))
    assert verdict.overall == "PASS", [c.reason for c in verdict.capabilities]
    flags = detector_flags(base, cand)["collapse"]["knowledge-monad"][1]
    assert "length_collapse" not in flags and "repetition" in flags  # a loop, not a short answer
    # the baseline itself already failed the item: a new flag there is no evidence
    assert not base["collapse"].records[[r.item_id for r in base["collapse"].records].index("knowledge-monad")].scores["pass"]


@pytest.mark.slow
@pytest.mark.testbed
def test_real_int8_experts_pass_the_shipped_flag_budgets(tmp_path: Path) -> None:
    """Routed experts RTN int8 (benign: perplexity ratio ~0.9997) through the real collapse and FLORES
    suites on the test bed: its flag budgets must not FAIL it (minutes on a CPU; requests are cached)."""
    from harness.api.config import ModelSpec
    from harness.api.models import open_model
    from harness.compress import quantize
    from harness.runner import run_suites
    from harness.testbed import ensure_testbed

    config = load_gate(gates_dir() / "testbed.toml")
    settings = {name: config.settings[name] for name in ("collapse", "flores")}
    testbed = ensure_testbed()
    int8 = quantize(testbed, tmp_path / "int8", plan="uniform:8", group_size=64)
    base = run_suites(open_model(ModelSpec(model=str(testbed))), settings)
    cand = run_suites(open_model(ModelSpec(model=str(int8))), settings)
    budgets = [b for b in config.budgets if b.suite in settings]
    verdict = evaluate_gate(base, cand, budgets, config.policy(), flags=detector_flags(base, cand))
    assert verdict.overall != "FAIL", [c.reason for c in verdict.capabilities]
