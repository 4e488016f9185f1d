"""HumanEval pass@1, executed offline in moegate's sandbox (never in the moegate process).

Same task as lm-eval's ``humaneval``: the problem's prompt as a plain completion (no chat template),
greedy, stop at ``\\nclass``, ``\\ndef``, ``\\n#``, ``\\nif``, ``\\nprint``; the program run is
``prompt + completion + "\\n" + test + "\\ncheck(entry_point)"`` (lm-eval's ``build_predictions`` and
``doc_to_target``). lm-eval loads ``code_eval`` from the hub and runs code in-process with
``HF_ALLOW_CODE_EVAL``; moegate runs each program through :func:`harness.sandbox.run_sandboxed`.

A program passes only when it ran to its last line (the sandbox's success token; as in the reference
human-eval harness, any ``BaseException`` fails): ``sys.exit(0)``, ``os._exit(0)``, a signal or any other
early exit is a failure, not a pass. Where the kernel cannot sandbox generated code the suite refuses
to start, before any generation, unless the user opted in (``--allow-unsandboxed``).

One record per problem: ``item_id`` the task id (``HumanEval/0``), score ``pass@1`` (0/1); in ``meta``
the sandbox status, the isolation that held (``sandbox``) and the last 500 characters of stderr.
``lang`` is None: the output is code, not prose in a language.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import ClassVar

from pydantic import Field

from harness.backends.base import Backend, GenerateRequest
from harness.errors import UserError
from harness.progress import progress_bar
from harness.records import ItemRecord, MetricSpec, SuiteRun
from harness.sandbox import SandboxResult, require_kernel_isolation, run_sandboxed
from harness.suites._common import choose, finish_run, load_rows
from harness.suites.base import ChosenItems, SuiteSettings, as_settings

HUMANEVAL_FILE = "HumanEval.jsonl.gz"
HUMANEVAL_SHA256 = "b796127e635a67f93fb35c04f4cb03cf06f38c8072ee7cee8833d7bee06979ef"
ERROR_TAIL_CHARS = 500
"""Stderr kept per record: enough for the failing line; the sandbox decides what the program could read."""
LM_EVAL_STOP = ("\nclass", "\ndef", "\n#", "\nif", "\nprint")
"""``generation_kwargs.until`` of lm-eval 0.4's tasks/humaneval/humaneval.yaml."""

PASS_AT_1 = MetricSpec(
    name="pass@1",
    kind="binary",
    higher_is_better=True,
    scale=100.0,
    description="greedy completion passes the tests",
)


class HumanEvalSettings(ChosenItems):
    """``item_ids`` are task ids (``HumanEval/0``); None: all 164 (then ``limit``/``seed`` apply)."""

    data_file: str = HUMANEVAL_FILE
    data_sha256: str = HUMANEVAL_SHA256
    limit: int | None = Field(None, ge=1)
    seed: int = 42
    max_tokens: int = Field(1024, ge=1)
    stop: list[str] = Field(default_factory=lambda: list(LM_EVAL_STOP))
    timeout_s: float = Field(10.0, gt=0)
    """Wall-clock limit per program."""
    cpu_s: int = Field(10, ge=1)
    memory_mb: int = Field(1024, ge=64)
    workers: int = Field(2, ge=1)
    """Programs executed at once (each in its own sandbox)."""


def program_for(problem: dict[str, str], completion: str) -> str:
    """The program lm-eval's ``code_eval`` would run for this completion."""
    return f"{problem['prompt']}{completion}\n{problem['test']}\ncheck({problem['entry_point']})\n"


def execute(programs: list[str], settings: HumanEvalSettings) -> list[SandboxResult]:
    """Run programs in sandboxes, ``settings.workers`` at a time, results in order."""

    with progress_bar(len(programs), "humaneval: executing") as advance:

        def one(code: str) -> SandboxResult:
            result = run_sandboxed(
                code, timeout_s=settings.timeout_s, memory_mb=settings.memory_mb, cpu_s=settings.cpu_s
            )
            advance()
            return result

        with ThreadPoolExecutor(max_workers=settings.workers) as pool:
            return list(pool.map(one, programs))


class HumanEvalSuite:
    """HumanEval (164 Python problems), greedy pass@1 with sandboxed execution."""

    name: ClassVar[str] = "humaneval"
    request_kinds: ClassVar[frozenset[str]] = frozenset({"generate"})
    Settings: ClassVar[type[HumanEvalSettings]] = HumanEvalSettings
    metrics: ClassVar[tuple[MetricSpec, ...]] = (PASS_AT_1,)

    def run(self, backend: Backend, settings: SuiteSettings, *, baseline: SuiteRun | None = None) -> SuiteRun:
        started = time.monotonic()
        settings = as_settings(settings, HumanEvalSettings)
        require_kernel_isolation()  # before any generation: no model time spent on programs that cannot run
        fields = ("task_id", "prompt", "entry_point", "canonical_solution", "test")
        rows, path = load_rows(settings.data_file, settings.data_sha256, required=fields)
        if settings.item_ids is not None:
            by_id = {row["task_id"]: row for row in rows}
            unknown = [t for t in settings.item_ids if t not in by_id]
            if unknown:
                raise UserError(
                    f"unknown HumanEval task id(s) {', '.join(unknown)}", f"use task ids from {path}"
                )
            problems = [by_id[t] for t in settings.item_ids]
        else:
            problems = choose(rows, settings.limit, settings.seed)
        requests = [
            GenerateRequest(
                prompt=p["prompt"], max_tokens=settings.max_tokens, stop=tuple(settings.stop), chat=False
            )
            for p in problems
        ]
        generations = backend.generate(requests)
        results = execute(
            [program_for(p, g.text) for p, g in zip(problems, generations, strict=True)], settings
        )
        records = [
            ItemRecord(
                suite=self.name,
                item_id=problem["task_id"],
                prompt=problem["prompt"],
                output=generation.text,
                reference=problem["canonical_solution"],
                scores={"pass@1": float(result.passed)},
                meta={
                    "status": result.status,
                    "error_tail": result.stderr_tail[-ERROR_TAIL_CHARS:],
                    "sandbox": result.isolation.get("summary", "none"),
                    "entry_point": problem["entry_point"],
                    "finish_reason": generation.finish_reason,
                    "tokens": generation.tokens,
                },
            )
            for problem, generation, result in zip(problems, generations, results, strict=True)
        ]
        return finish_run(
            self.name, settings, {settings.data_file: settings.data_sha256}, self.metrics, records, started
        )
