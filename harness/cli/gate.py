"""``moegate baseline record``, ``moegate run`` and ``moegate verdict``.

Exit codes: 0 PASS, 1 FAIL, 3 INCONCLUSIVE, 2 usage or input error.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click
from rich.console import Console

from harness.api import GateOutcome, decide, default_run_dir, gate_candidate, load_gate, record_baseline
from harness.api.calibrate import CALIBRATION_FILE, PERTURBATIONS, benign_failures, calibrate_baseline
from harness.api.gating import UNSANDBOXED
from harness.backends import BACKENDS
from harness.cli._sandbox_option import allow_unsandboxed_option
from harness.gate import verdict_exit_code
from harness.store import manifest_sha256

_STATUS_STYLE = {"PASS": "bold green", "FAIL": "bold red", "INCONCLUSIVE": "bold yellow"}


def print_outcome(outcome: GateOutcome, console: Console | None = None) -> None:
    console = console or Console()
    verdict = outcome.verdict
    for cap in verdict.capabilities:
        style = _STATUS_STYLE.get(cap.status, "")
        console.print(f"  [{style}]{cap.status:<12}[/] {cap.label}: {cap.reason}", highlight=False)
    console.print(f"[{_STATUS_STYLE[verdict.overall]}]{verdict.summary()}[/]", highlight=False)
    used: dict[str, tuple[int, int]] = {}  # suite -> (items run, items planned) of sequentially run suites
    for cap in verdict.capabilities:
        if cap.sequential:
            before = used.get(cap.suite, (0, cap.sequential.items_total))[0]
            used[cap.suite] = (max(before, cap.sequential.items_used), cap.sequential.items_total)
    if used:
        saved, total = sum(t - u for u, t in used.values()), sum(t for _, t in used.values())
        console.print(f"  sequential stopping: {saved} of {total} items saved", highlight=False)
    for line in outcome.backend_differences:
        console.print(f"  [yellow]backend settings differ[/]: {line}", highlight=False)
    for line in outcome.warnings:
        if line.startswith(UNSANDBOXED):
            console.print(f"  [red]warning[/]: {line}", highlight=False, soft_wrap=True)
    for kind, path in outcome.reports.items():
        console.print(f"  report ({kind}): {path}", highlight=False)


def model_options(base_url: str | None, model_name: str | None, dtype: str | None, device: str | None,
                  trust_pickle: bool = False) -> dict[str, Any]:  # fmt: skip
    """The backend options named on the command line (only those: the rest come from the baseline)."""
    options: dict[str, Any] = {"trust_pickle": True} if trust_pickle else {}
    if base_url:
        options["base_url"] = base_url
    if model_name:
        options["model_name"] = model_name
    if dtype:
        options["dtype"] = dtype
    if device:
        options["device"] = device
    return options


_backend_options = [
    click.option("--backend", type=click.Choice(BACKENDS.names()), default=None, help="default: the baseline's backend"),
    click.option("--base-url", default=None, help="OpenAI-compatible server URL (--backend openai)"),
    click.option("--model-name", default=None, help="served model name (--backend openai)"),
    click.option("--dtype", default=None, help="float32, bfloat16, float16 or auto (transformers)"),
    click.option("--device", default=None, help="cpu, cuda, mps or auto (transformers)"),
    click.option("--trust-pickle", is_flag=True, help="allow pickle weights (*.bin, transformers); only for sources you trust"),
]


def backend_options(func):
    for option in reversed(_backend_options):
        func = option(func)
    return func


@click.group()
def baseline() -> None:
    """Stored baselines."""


@baseline.command("record")
@click.option("--gate", "gate_path", required=True, type=click.Path(path_type=Path), help="gate file")
@click.option("--model", default=None, help="override the gate's baseline model")
@click.option("--out", default=None, type=click.Path(path_type=Path), help="override the gate's baseline dir")
@backend_options
@allow_unsandboxed_option
def record(gate_path: Path, model: str | None, out: Path | None, backend, base_url, model_name, dtype, device, trust_pickle) -> None:
    """Run the gate's suites on the baseline model and store its per-item records (flags override [baseline])."""
    config = load_gate(gate_path)
    options = model_options(base_url, model_name, dtype, device, trust_pickle)
    manifest = record_baseline(config, model=model, backend=backend, options=options, out=out)
    console = Console(soft_wrap=True)
    console.print(f"baseline recorded: {len(manifest.suites)} suites, fingerprint {manifest.fingerprint[:16]}")
    console.print("pin it: put this line under [baseline] in the gate file (changing the baseline then changes the gate file):")
    console.print(f'manifest_sha256 = "{manifest_sha256(out or config.baseline_dir)}"', highlight=False, markup=False)


@baseline.command("calibrate")
@click.option("--gate", "gate_path", required=True, type=click.Path(path_type=Path), help="gate file")
@click.option("--perturbation", "perturbations", multiple=True, type=click.Choice(PERTURBATIONS),
              help="repeatable; default: all of them")  # fmt: skip
@allow_unsandboxed_option
def calibrate(gate_path: Path, perturbations: tuple[str, ...]) -> None:
    """Measure the baseline's noise floor: gate it against benign perturbations of itself and store the churn."""
    config = load_gate(gate_path)
    found = calibrate_baseline(config, perturbations=perturbations or PERTURBATIONS,
                               log=lambda m: click.echo(m, err=True))  # fmt: skip
    console = Console()
    for perturbation in found.perturbations:
        statuses = ", ".join(f"{label} {seen.status}" for label, seen in perturbation.capabilities.items())
        console.print(f"{perturbation.name}: {statuses}")
    failures = benign_failures(config.budgets, found)
    for line in failures:
        console.print(f"[red]warning:[/red] {line}")
    console.print(f"calibration stored in {config.baseline_dir / CALIBRATION_FILE}")


@click.command()
@click.option("--gate", "gate_path", required=True, type=click.Path(path_type=Path), help="gate file")
@click.option("--candidate", required=True, help="candidate checkpoint: path, hub id, or served model name")
@click.option("--report-dir", default=None, type=click.Path(path_type=Path), help="default: reports/<gate>/<time>-<candidate>")
@click.option("--sequential/--no-sequential", default=None, help="stop each suite once its budgets are decided (default: the gate's [gate] sequential)")
@click.option("--fail-fast", is_flag=True, help="stop at the first FAIL the remaining suites cannot overturn (suites run riskiest first)")
@backend_options
@allow_unsandboxed_option
def run(gate_path: Path, candidate: str, report_dir: Path | None, sequential: bool | None, fail_fast: bool, backend, base_url, model_name,
        dtype, device, trust_pickle) -> None:  # fmt: skip
    """Gate a candidate against the stored baseline: exit 0 PASS, 1 FAIL, 3 INCONCLUSIVE, 2 bad input."""
    config = load_gate(gate_path)
    run_dir = report_dir or default_run_dir(config.name, candidate)
    options = model_options(base_url, model_name, dtype, device, trust_pickle)
    outcome = gate_candidate(config, candidate, run_dir, backend=backend, options=options, sequential=sequential,
                             fail_fast=fail_fast)  # fmt: skip
    print_outcome(outcome)
    sys.exit(verdict_exit_code(outcome.verdict.overall))


@click.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--gate", "gate_path", required=True, type=click.Path(path_type=Path), help="gate file (budgets may differ from the run's)")
def verdict(run_dir: Path, gate_path: Path) -> None:
    """Recompute the verdict and reports of a stored run from its records (no model is loaded)."""
    config = load_gate(gate_path)
    outcome = decide(config, run_dir)
    print_outcome(outcome)
    sys.exit(verdict_exit_code(outcome.verdict.overall))
