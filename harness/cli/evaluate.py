"""``moegate eval MODEL --suite NAME ...``: run suites on one model and store its item records.

No gate, no baseline: the records and a metric table, e.g. to look at a model before writing a gate.
"""

from __future__ import annotations

from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from harness.api.gating import unsandboxed_warnings
from harness.cli._sandbox_option import allow_unsandboxed_option
from harness.cli.gate import backend_options, model_options
from harness.records import metric_value


@click.command()
@click.argument("model")
@click.option("--suite", "suites", multiple=True, required=True, help="suite name (repeatable); see `moegate suites list`")
@click.option("--profile", type=click.Choice(["ci", "full"]), default="ci", show_default=True)
@click.option("--limit", type=click.IntRange(min=1), default=None, help="override every suite's item count (a pinned item list is cut to its first N)")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="store the records here (as a baseline store)")
@backend_options
@allow_unsandboxed_option
def evaluate(model: str, suites: tuple[str, ...], profile: str, limit: int | None, out: Path | None, backend, base_url, model_name, dtype, device,
             trust_pickle) -> None:  # fmt: skip
    """Run suites on MODEL and print each metric; with --out, store the per-item records."""
    from harness.api import evaluate as run_evaluation

    console = Console(stderr=True)
    result = run_evaluation(model, list(suites), profile=profile, limit=limit, backend=backend,
                            options=model_options(base_url, model_name, dtype, device, trust_pickle), out=out,
                            log=lambda m: console.print(f"[dim]{m}[/]", highlight=False))  # fmt: skip
    runs = result.runs
    table = Table(title=f"{model} ({profile})")
    for column in ("suite", "metric", "value", "items", "seconds"):
        table.add_column(column)
    for name, run in runs.items():
        if run.error:
            table.add_row(name, "[red]error[/]", run.error, "0", f"{run.seconds:.0f}")
            continue
        for spec_ in run.metrics:
            value = metric_value(run.records, spec_)
            shown = "n/a" if value is None else f"{value:.4g}"
            table.add_row(name, spec_.name, shown, str(len(run.records)), f"{run.seconds:.0f}")
    Console().print(table)
    for line in unsandboxed_warnings(runs):
        console.print(f"[red]warning[/]: {line}", highlight=False, soft_wrap=True)
    if out:
        Console().print(f"records stored in {out}")
    if any(run.error for run in runs.values()):
        raise SystemExit(1)
