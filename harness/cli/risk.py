"""``moegate risk``: which capabilities a candidate puts at risk, in seconds, before any suite runs."""

from __future__ import annotations

from pathlib import Path

import click
from rich.console import Console


@click.command("risk")
@click.option("--gate", "gate_path", required=True, type=click.Path(path_type=Path), help="gate file")
@click.option("--candidate", required=True, help="candidate checkpoint (a local safetensors folder)")
@click.option("--baseline-dir", default=None, type=click.Path(path_type=Path), help="override the gate's baseline dir")
def risk(gate_path: Path, candidate: str, baseline_dir: Path | None) -> None:
    """Rank the gate's capabilities by the baseline routing mass they send to the candidate's changed experts."""
    from harness.api import load_gate
    from harness.api.risk import assess_risk

    config = load_gate(gate_path)
    outcome = assess_risk(config, candidate, baseline_dir=baseline_dir)
    console = Console()
    if outcome.note:
        console.print(f"no risk ranking: {outcome.note}", highlight=False)
        return
    n = sum(len(v) for v in outcome.changed.values())
    console.print(f"{n} changed experts in {len(outcome.changed)} layers; riskiest first "
                  f"(share of the baseline's routing mass sent to them), {outcome.seconds:.1f} s:", highlight=False)  # fmt: skip
    for rank, r in enumerate(outcome.risks, start=1):
        share = "no route traces" if r.share is None else f"{100 * r.share:5.1f}%"
        console.print(f"  {rank}. {share}  {r.label} ({r.suite})", highlight=False)
