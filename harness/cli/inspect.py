"""``moegate inspect MODEL [--against BASELINE] [--json]``: audit a checkpoint's weights without loading the model.

Exit 0 clean, 1 when a finding must fail a gate (NaN/Inf, weights that contradict the config,
tensors outside experts/routers changed vs the baseline in a way no
precision cast explains), 2 when the checkpoint cannot be read.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from harness.cli._model_arg import testbed_keyword
from harness.inspect import InspectReport, audit_lines, inspect_checkpoint


def _fmt(mapping: dict[int, list[int]]) -> str:
    return "; ".join(f"layer {k}: {v}" for k, v in mapping.items()) or "none"


def print_report(report: InspectReport) -> None:
    """Human-readable findings on stdout (rich table of the MoE layout and counts)."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title=f"moegate inspect {report.path}", show_header=False)
    layout = report.layout
    table.add_row("tensors", str(len(report.tensors)))
    table.add_row("dtypes (params)", ", ".join(f"{k} {v:,}" for k, v in report.dtypes.items()))
    if layout:
        table.add_row("MoE", f"{layout['family']}: {layout['routed_experts']} experts, top-{layout['top_k']}, "
                             f"{len(layout['moe_layers'])}/{layout['num_layers']} MoE layers")
    else:
        table.add_row("MoE", "dense (config names no routed experts)")
    table.add_row("NaN / Inf tensors", f"{len(report.nan_tensors)} / {len(report.inf_tensors)}")
    table.add_row("all-zero tensors", str(len(report.zero_tensors)))
    table.add_row("tokenizer sha256", (report.tokenizer_sha256 or "missing")[:16])
    if report.against:
        table.add_row("against", report.against)
        table.add_row("changed tensors", str(len(report.changed)))
    table.add_row("zeroed experts", _fmt(report.zeroed_experts))
    table.add_row("masked router rows", _fmt(report.masked_router_rows))
    console.print(table)
    for line in audit_lines(report.model_dump(mode="json", exclude={"tensors"})):
        console.print(line, markup=False, highlight=False, soft_wrap=True)
    for note in report.notes:
        console.print(f"note: {note}", markup=False)
    for problem in report.problems:
        console.print(f"[red]problem:[/red] {problem}", highlight=False)
    console.print(report.summary(), markup=False)


@click.command("inspect")
@click.argument("model", callback=testbed_keyword)
@click.option("--against", default=None, callback=testbed_keyword, help="baseline checkpoint the model was compressed from")
@click.option("--json", "as_json", is_flag=True, help="print the report as JSON")
def inspect_cmd(model: str, against: str | None, as_json: bool) -> None:
    """Audit a safetensors checkpoint (and what changed vs --against): exit 0 clean, 1 must fail, 2 unreadable."""
    report = inspect_checkpoint(Path(model), against=Path(against) if against else None)
    if as_json:
        click.echo(report.model_dump_json(indent=2))
    else:
        print_report(report)
    sys.exit(1 if report.must_fail else 0)
