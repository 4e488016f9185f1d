"""HumanEval suite: canonical solutions pass in the sandbox, wrong and hostile completions fail, no
early exit counts as a pass, and no secret reaches a record."""

from __future__ import annotations

import functools
import os
import uuid
from pathlib import Path

import pytest

import harness.sandbox
from harness.backends.base import GenerateRequest
from harness.cli import main
from harness.errors import UserError
from harness.resources import data_file
from harness.sandbox import ALLOW_UNSANDBOXED_VAR, run_sandboxed
from harness.suites import humaneval, suite_settings
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
    escape = f"/tmp/moegate-humaneval-escape-{uuid.uuid4().hex}.txt"
    hostile = [
        "    while True:\n        pass\n",
        "    import os\n    while True:\n        os.fork()\n",
        "    x = bytearray(50 * 1024**3)\n    return len(string)\n",
        "    import socket\n    socket.create_connection(('127.0.0.1', 80))\n    return len(string)\n",
    ]
    settings = HumanEvalSettings(timeout_s=3, cpu_s=2, memory_mb=512)
    results = execute([program_for(problem, c) for c in hostile], settings)
    assert [r.passed for r in results] == [False] * len(hostile)
    assert results[0].status == "timeout"
    # A write to /tmp lands in the sandbox's own /tmp (mount namespace) or is refused, never on the host's.
    execute([program_for(problem, f"    open({escape!r}, 'w').write('x')\n    return len(string)\n")], settings)
    assert not os.path.exists(escape)


EARLY_EXITS = {
    "sys.exit(0)": "    import sys\n    sys.exit(0)\n",
    "raise SystemExit": "    raise SystemExit\n",
    "raise SystemExit(0)": "    raise SystemExit(0)\n",
    "os._exit(0)": "    import os\n    os._exit(0)\n",
    "os._exit(0) at module level": "    return 0\nimport os\nos._exit(0)\n",
    "exit() put into builtins": "    import builtins, sys\n    builtins.exit = sys.exit\n    exit(0)\n",
    "quit()": "    quit()\n",
    "atexit handler": "    import atexit, os\n    atexit.register(os._exit, 0)\n    return 0\n",
    "signal handler": (
        "    import os, signal\n    signal.signal(signal.SIGUSR1, lambda *a: os._exit(0))\n"
        "    signal.raise_signal(signal.SIGUSR1)\n    return 0\n"
    ),
    "SIGALRM timer": (
        "    import os, signal, time\n    signal.signal(signal.SIGALRM, lambda *a: os._exit(0))\n"
        "    signal.setitimer(signal.ITIMER_REAL, 0.01)\n    time.sleep(1)\n    return 0\n"
    ),
    "os.kill(os.getpid(), SIGKILL)": "    import os, signal\n    os.kill(os.getpid(), signal.SIGKILL)\n    return 0\n",
    "a thread calls os._exit(0)": (
        "    import os, threading, time\n    threading.Thread(target=os._exit, args=(0,)).start()\n"
        "    time.sleep(1)\n    return 0\n"
    ),
    "__del__ calls os._exit(0)": (
        "    import os\n    class Bye:\n        def __del__(self):\n            os._exit(0)\n    Bye()\n    return 0\n"
    ),
    "SystemExit from __del__": (
        "    class Bye:\n        def __del__(self):\n            raise SystemExit(0)\n    Bye()\n    return 0\n"
    ),
    "closed stdout and stderr, then os._exit(0)": (
        "    import os, sys\n    sys.stdout.close()\n    os.close(1)\n    os.close(2)\n    os._exit(0)\n"
    ),
    "KeyboardInterrupt from a thread": "    import _thread, time\n    _thread.interrupt_main()\n    time.sleep(0.5)\n    return 0\n",
    "a BaseException subclass": "    class Stop(BaseException):\n        pass\n    raise Stop\n",
    "os.abort()": "    import os\n    os.abort()\n",
    "exec of a program that exits 0": "    import os\n    os.execv('/bin/true', ['true'])\n",
    "the harness's traceback printer patched to exit 0": (
        "    import os, traceback\n    traceback.print_exc = lambda *a, **k: os._exit(0)\n    return 0\n"
    ),
    "garbage on every file descriptor, then os._exit(0)": (
        "    import os\n    for fd in range(3, 64):\n        try:\n            os.write(fd, b'0' * 32)\n"
        "        except OSError:\n            pass\n    os._exit(0)\n"
    ),
}


def test_no_early_exit_scores_as_a_pass(problems: dict[str, dict]) -> None:
    """Each completion is wrong (strlen returning 0) and leaves before the tests can fail it."""
    problem = problems["HumanEval/23"]
    settings = HumanEvalSettings(timeout_s=5, cpu_s=3, memory_mb=512)
    results = execute([program_for(problem, c) for c in EARLY_EXITS.values()], settings)
    scored = {route: r.status for route, r in zip(EARLY_EXITS, results, strict=True)}
    assert {route: s for route, s in scored.items() if s != "failed"} == {}, [r.stderr_tail[-200:] for r in results]


def test_a_passing_completion_cannot_carry_a_secret_into_the_records(
    problems: dict[str, dict], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The completion is right, and also reads ~/.ssh/id_rsa (through a path the old hook misjudged)
    and writes it to stderr, whose tail the record keeps."""
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    value = f"TOP-SECRET-{uuid.uuid4().hex}"
    (home / ".ssh" / "id_rsa").write_text(value)
    monkeypatch.setenv("HOME", str(home))
    steal = (
        "    import os, sys\n    try:\n"
        f"        os.chdir({str(home / '.ssh')!r})\n        sys.stderr.write(open('id_rsa').read() * 100)\n"
        "    except OSError as exc:\n        sys.stderr.write(f'denied: {exc!r}' + '.' * 3000)\n"
    )
    backend = _by_prompt(problems, lambda p: steal + p["canonical_solution"])
    run = HumanEvalSuite().run(backend, HumanEvalSettings(item_ids=["HumanEval/23", "HumanEval/2"]))
    assert [r.scores["pass@1"] for r in run.records] == [1.0, 1.0], [r.meta for r in run.records]
    assert value not in run.model_dump_json()
    assert all(len(r.meta["error_tail"]) <= 500 for r in run.records)
    assert {r.meta["sandbox"] for r in run.records} == {harness.sandbox.kernel_isolation()["summary"]}


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


def test_the_cli_refuses_humaneval_without_kernel_walls_unless_allowed(
    tiny: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """The refusal comes before any generation, in one line; ``--allow-unsandboxed`` lets it run. The
    report of "this machine" is a real wall-less sandbox run's."""
    report = run_sandboxed("pass", timeout_s=10, isolation="none", allow_unsandboxed=True).isolation
    monkeypatch.setattr(harness.sandbox, "kernel_isolation", lambda: report)
    monkeypatch.delenv(ALLOW_UNSANDBOXED_VAR, raising=False)  # and restored: the flag sets it in this process
    assert _moegate("eval", tiny, "--suite", "humaneval", "--limit", "1") == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith("moegate: error: no kernel sandbox for generated code") and "--allow-unsandboxed" in line
    # the programs then run without walls too, as on such a machine, and the output says so
    monkeypatch.setattr(humaneval, "run_sandboxed", functools.partial(run_sandboxed, isolation="none"))
    assert _moegate("eval", tiny, "--suite", "humaneval", "--limit", "1", "--allow-unsandboxed") == 0
    assert "warning: generated code ran without kernel isolation for suite 'humaneval' (UNSANDBOXED:" in capsys.readouterr().err


def _moegate(*args: str | Path) -> int:
    with pytest.raises(SystemExit) as info:
        main([str(a) for a in args])
    return int(info.value.code or 0)
