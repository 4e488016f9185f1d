"""HumanEval suite: canonical solutions pass in the sandbox, wrong and hostile completions fail."""

from __future__ import annotations

import pytest

from harness.backends.base import GenerateRequest
from harness.errors import UserError
from harness.resources import data_file
from harness.suites import suite_settings
from harness.suites._common import read_jsonl
from harness.suites.humaneval import (
    HUMANEVAL_FILE,
    HUMANEVAL_SHA256,
    LM_EVAL_STOP,
    HumanEvalSettings,
    HumanEvalSuite,
    execute,
    program_for,
)
from tests.suite_fakes import WordBackend


@pytest.fixture(scope="module")
def problems() -> dict[str, dict]:
    return {row["task_id"]: row for row in read_jsonl(data_file(HUMANEVAL_FILE, HUMANEVAL_SHA256))}


def _by_prompt(problems: dict[str, dict], answer) -> WordBackend:
    by_prompt = {p["prompt"]: p for p in problems.values()}
    return WordBackend(lambda request: answer(by_prompt[request.prompt]))


def test_canonical_solutions_pass_and_wrong_ones_fail(problems: dict[str, dict]) -> None:
    assert len(problems) == 164
    settings = suite_settings("humaneval", "ci")
    # The canonical solution, followed by what a model might ramble on with (cut by the stop sequences).
    backend = _by_prompt(problems, lambda p: p["canonical_solution"] + "\n\ndef unrelated():\n    pass\n")
    run = HumanEvalSuite().run(backend, settings)
    assert backend.calls == [("generate", 6)]
    assert [r.item_id for r in run.records] == settings.item_ids
    assert all(r.scores["pass@1"] == 1.0 for r in run.records), [r.meta for r in run.records]
    assert all(r.meta["status"] == "passed" and r.lang is None for r in run.records)
    request = backend.generate_requests[0]
    assert not request.chat and request.stop == LM_EVAL_STOP and request.max_tokens == 128
    wrong = HumanEvalSuite().run(_by_prompt(problems, lambda p: "    return None\n"), settings)
    assert all(r.scores["pass@1"] == 0.0 and r.meta["status"] == "failed" for r in wrong.records)
    assert run.metrics[0].name == "pass@1" and run.metrics[0].kind == "binary"


def test_hostile_completions_are_failures(problems: dict[str, dict]) -> None:
    problem = problems["HumanEval/23"]  # strlen
    hostile = [
        "    while True:\n        pass\n",
        "    import os\n    while True:\n        os.fork()\n",
        "    x = bytearray(50 * 1024**3)\n    return len(string)\n",
        "    open('/tmp/moegate-humaneval-escape.txt', 'w').write('x')\n    return len(string)\n",
        "    import socket\n    socket.create_connection(('127.0.0.1', 80))\n    return len(string)\n",
    ]
    settings = HumanEvalSettings(timeout_s=3, cpu_s=2, memory_mb=512)
    results = execute([program_for(problem, c) for c in hostile], settings)
    assert [r.passed for r in results] == [False] * len(hostile)
    assert results[0].status == "timeout"
    import os

    assert not os.path.exists("/tmp/moegate-humaneval-escape.txt")


def test_bad_settings() -> None:
    with pytest.raises(UserError, match="unknown HumanEval task id"):
        HumanEvalSuite().run(WordBackend(), HumanEvalSettings(item_ids=["HumanEval/999"]))
    with pytest.raises(UserError, match="timeout_s"):
        suite_settings("humaneval", "ci", {"timeout_s": 0})
    assert suite_settings("humaneval", "full").item_ids is None


@pytest.mark.slow
def test_every_canonical_solution_passes(problems: dict[str, dict]) -> None:
    settings = HumanEvalSettings(workers=2)
    backend = _by_prompt(problems, lambda p: p["canonical_solution"])
    run = HumanEvalSuite().run(backend, settings)
    failed = [
        (r.item_id, r.meta["status"], r.meta["error_tail"][-200:])
        for r in run.records
        if r.scores["pass@1"] != 1.0
    ]
    assert not failed
    assert isinstance(backend.generate_requests[0], GenerateRequest)


@pytest.mark.slow
def test_real_model_completion_is_executed() -> None:
    from harness.backends import open_backend
    from harness.smollm2 import smollm2_gguf

    backend = open_backend(str(smollm2_gguf()))
    run = HumanEvalSuite().run(
        backend, HumanEvalSettings(item_ids=["HumanEval/23", "HumanEval/2"], max_tokens=48)
    )
    for record in run.records:
        assert record.meta["status"] in ("passed", "failed", "timeout")
        assert record.scores["pass@1"] == float(record.meta["status"] == "passed")
        assert not any(s in record.output for s in LM_EVAL_STOP), "cut at the stop sequences"
