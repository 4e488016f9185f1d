"""``moegate testbed build``: build (or find in the cache) the SmolLM2 MoE test bed."""

from __future__ import annotations

from pathlib import Path

import click


@click.group()
def testbed() -> None:
    """The MoE test bed built from SmolLM2-135M-Instruct (Qwen2-MoE layout)."""


@testbed.command("build")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Output folder (default: moegate's cache, keyed by the settings).")
@click.option("--experts", type=int, default=8, show_default=True, help="Routed experts per layer.")
@click.option("--top-k", type=int, default=2, show_default=True, help="Routed experts per token (< experts).")
@click.option("--shared-fraction", type=float, default=0.75, show_default=True,
              help="Fraction of each MLP's neurons in the always-on shared expert.")
@click.option("--seed", type=int, default=0, show_default=True)
def build(out: Path | None, experts: int, top_k: int, shared_fraction: float, seed: int) -> None:
    """Build the test bed (minutes on a CPU); prints its folder. A second call returns at once."""
    from harness.testbed import TestbedSettings, ensure_testbed

    settings = TestbedSettings(experts=experts, top_k=top_k, shared_fraction=shared_fraction, seed=seed)
    path = ensure_testbed(out, settings, progress=lambda msg: click.echo(msg, err=True))
    click.echo(str(path))
