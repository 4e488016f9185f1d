"""``moegate compress prune|merge|quantize``: make compressed MoE checkpoints to gate."""

from __future__ import annotations

from pathlib import Path

import click

from harness.cli._model_arg import testbed_keyword

_CALIB = click.Path(dir_okay=False, path_type=Path)


@click.group()
def compress() -> None:
    """Prune, merge or fake-quantize the routed experts of a safetensors MoE checkpoint."""


@compress.command("prune")
@click.argument("model", type=click.Path(path_type=Path), callback=testbed_keyword)
@click.option("--fraction", type=float, required=True, help="Fraction of routed experts to prune, in (0, 1).")
@click.option("--criterion", default="frequency", show_default=True,
              help="Importance score: frequency, soft, ean, reap or random.")
@click.option("--scope", default="layer", show_default=True, help="layer (same count per layer) or global.")
@click.option("--mode", default="mask", show_default=True,
              help="mask (router rows to -1e9), zero (expert weights to 0) or mask+zero.")
@click.option("--calib", type=_CALIB, default=None, help="Calibration prompts (.txt or .jsonl[.gz]); not needed for random.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True, help="New output folder.")
@click.option("--max-tokens", type=int, default=512, show_default=True, help="Tokens per calibration prompt.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random criterion.")
def prune_cmd(model: Path, fraction: float, criterion: str, scope: str, mode: str, calib: Path | None,
              out: Path, max_tokens: int, seed: int) -> None:
    """Prune the least important routed experts; writes the checkpoint and pruning.json to --out."""
    from harness.compress import prune

    path = prune(model, out, fraction=fraction, criterion=criterion, scope=scope,  # type: ignore[arg-type]
                 mode=mode, calib=calib, max_tokens=max_tokens, seed=seed)  # type: ignore[arg-type]
    click.echo(str(path))


@compress.command("merge")
@click.argument("model", type=click.Path(path_type=Path), callback=testbed_keyword)
@click.option("--fraction", type=float, required=True,
              help="Fraction of routed experts merged away per layer, in (0, 1): 0.25 of 8 experts leaves 6 groups.")
@click.option("--method", required=True, help="msmoe (groups around the most used experts by router-logit "
              "similarity) or hcsmoe (hierarchical clustering of mean expert outputs).")
@click.option("--calib", type=_CALIB, default=None, help="Calibration prompts (.txt or .jsonl[.gz]); required.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True, help="New output folder.")
@click.option("--max-tokens", type=int, default=512, show_default=True, help="Tokens per calibration prompt.")
def merge_cmd(model: Path, fraction: float, method: str, calib: Path | None, out: Path, max_tokens: int) -> None:
    """Merge groups of routed experts (usage-weighted average, same layout); writes merging.json to --out."""
    from harness.compress import merge

    click.echo(str(merge(model, out, fraction=fraction, method=method, calib=calib, max_tokens=max_tokens)))


@compress.command("quantize")
@click.argument("model", type=click.Path(path_type=Path), callback=testbed_keyword)
@click.option("--plan", default="uniform:4", show_default=True, help="uniform:8, uniform:4 (uniform:2..8) or tiered.")
@click.option("--group-size", type=int, default=64, show_default=True, help="Input columns per quantization group.")
@click.option("--scheme", default="asym", show_default=True, help="asym (min/max) or sym (absmax) per group.")
@click.option("--calib", type=_CALIB, default=None, help="Calibration prompts; required by the tiered plan.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True, help="New output folder.")
@click.option("--max-tokens", type=int, default=512, show_default=True, help="Tokens per calibration prompt.")
def quantize_cmd(model: Path, plan: str, group_size: int, scheme: str, calib: Path | None, out: Path,
                 max_tokens: int) -> None:
    """Round-to-nearest fake quantization of every routed expert, written back dequantized."""
    from harness.compress import quantize

    path = quantize(model, out, plan=plan, group_size=group_size, scheme=scheme,  # type: ignore[arg-type]
                    calib=calib, max_tokens=max_tokens)
    click.echo(str(path))
