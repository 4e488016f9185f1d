"""``moegate profile``: which experts a MoE model uses on a prompt set, and how much each matters."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from harness.cli._model_arg import testbed_keyword
from harness.errors import UserError

PLOT_SUFFIXES = (".png", ".svg")


def _check_outputs(json_out: Path | None, plot_out: Path | None) -> None:
    """Refuse bad output paths before any model is loaded."""
    if plot_out is not None and plot_out.suffix.lower() not in PLOT_SUFFIXES:
        raise UserError(f"--plot {plot_out}: unsupported suffix", "use a .png or .svg file name")
    for flag, path in (("--json", json_out), ("--plot", plot_out)):
        if path is not None and path.exists() and path.is_dir():
            raise UserError(f"{flag} {path} is a directory", "pass a file path")


def _fmt_pct(value: float) -> str:
    return f"{100 * value:.1f}%"


def _print_report(console: Console, summary: dict[str, Any], curve: dict[str, Any]) -> None:
    overall = summary["overall"]
    head = Table(title="Expert profile", show_header=False, box=None)
    head.add_row("family", f"{summary['family']} (model_type {summary['model_type']})")
    head.add_row("experts x top-k", f"{summary['num_experts']} x top-{summary['top_k']}"
                 + (" + shared expert" if summary["has_shared_expert"] else ""))
    head.add_row("MoE layers", str(summary["n_moe_layers"]))
    head.add_row("prompts / tokens", f"{summary['n_prompts']} / {summary['n_tokens']}")
    head.add_row("entropy ratio (mean, min)", f"{overall['entropy_ratio_mean']:.3f}, {overall['entropy_ratio_min']:.3f}")
    head.add_row("Gini (mean)", f"{overall['gini_mean']:.3f}")
    head.add_row("top-10 share (mean)", _fmt_pct(overall["top10_share_mean"]))
    head.add_row("dead experts", f"{overall['dead']} ({_fmt_pct(overall['dead_fraction'])})")
    console.print(head)

    layers = Table(title="Per layer")
    for col in ("layer", "entropy ratio", "Gini", "top-10 share", "top-10% share", "dead"):
        layers.add_column(col, justify="right")
    for row in summary["layers"]:
        layers.add_row(str(row["layer_index"]), f"{row['entropy_ratio']:.3f}", f"{row['gini']:.3f}",
                       _fmt_pct(row["top10_share"]), _fmt_pct(row["top10pct_share"]), str(row["dead"]))
    console.print(layers)

    table = Table(title=f"Dead experts vs prompts (mean ± std over {curve['shuffles']} shuffles, seed {curve['seed']})")
    table.add_column("prompts", justify="right")
    table.add_column("dead experts", justify="right")
    table.add_column("dead (mean count)", justify="right")
    for size, frac, std, count in zip(curve["sizes"], curve["dead_fraction"], curve["dead_fraction_std"],
                                      curve["dead_count"], strict=True):
        table.add_row(str(size), f"{_fmt_pct(frac)} ± {_fmt_pct(std)}", f"{count:.1f} / {curve['n_experts_total']}")
    console.print(table)

    if summary["domains"]:
        domains = Table(title="Per domain")
        for col in ("domain", "prompts", "tokens", "entropy ratio", "Gini", "dead", "exclusive experts"):
            domains.add_column(col, justify="right")
        for name, row in summary["domains"].items():
            domains.add_row(name, str(row["n_prompts"]), str(row["n_tokens"]), f"{row['entropy_ratio_mean']:.3f}",
                            f"{row['gini_mean']:.3f}", _fmt_pct(row["dead_fraction"]), str(row["exclusive_experts"]))
        console.print(domains)


@click.command("profile")
@click.argument("model", callback=testbed_keyword)
@click.option("--prompts", "prompts_file", required=True, type=click.Path(path_type=Path),
              help="Prompt file: .txt (one per line) or .jsonl[.gz] with 'text' (and optional 'domain').")
@click.option("--json", "json_out", type=click.Path(path_type=Path), help="Write the full profile as JSON here.")
@click.option("--plot", "plot_out", type=click.Path(path_type=Path),
              help="Write a layer x expert heatmap (.png or .svg); the dead-expert curve goes beside it.")
@click.option("--max-tokens", default=512, show_default=True, type=click.IntRange(min=1),
              help="Tokens kept per prompt.")
@click.option("--limit", type=click.IntRange(min=1), help="Profile only the first N prompts.")
@click.option("--shuffles", default=10, show_default=True, type=click.IntRange(min=1),
              help="Random prompt orders averaged in the dead-expert curve.")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the curve's shuffles.")
@click.option("--criterion", "heat_criterion", default="frequency", show_default=True,
              type=click.Choice(["frequency", "soft", "ean", "reap"]), help="Importance shown in the heatmap.")
@click.option("--no-norms", is_flag=True, help="Skip EAN/REAP (saves one extra expert pass per layer).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or mps.")
@click.option("--dtype", default="auto", show_default=True, help="auto, float32, bfloat16 or float16.")
def profile(model: str, prompts_file: Path, json_out: Path | None, plot_out: Path | None, max_tokens: int,
            limit: int | None, shuffles: int, seed: int, heat_criterion: str, no_norms: bool, device: str,
            dtype: str) -> None:
    """Profile expert usage and importance of MODEL (a MoE checkpoint) over the prompts in --prompts."""
    from harness.prompts_io import read_prompts

    prompts = read_prompts(prompts_file)[:limit]
    _check_outputs(json_out, plot_out)

    from harness.atomic import atomic_write_text
    from harness.backends import open_backend
    from harness.profiler import curve_plot, dead_expert_curve, heatmap, profile_model

    console = Console()
    backend = open_backend(model, device=device, dtype=dtype)
    result = profile_model(
        backend.model, backend.tokenizer, [p.text for p in prompts], domains=[p.domain for p in prompts],
        max_tokens=max_tokens, progress=True, expert_norms=not no_norms,
    )
    curve = dead_expert_curve(result, shuffles=shuffles, seed=seed)
    summary = result.summary()
    _print_report(console, summary, curve.to_json())

    if json_out is not None:
        payload = {"model": model, "prompts_file": str(prompts_file), **result.to_json(),
                   "dead_expert_curve": curve.to_json()}
        atomic_write_text(json_out, json.dumps(payload, indent=1) + "\n")
        console.print(f"wrote {json_out}")
    if plot_out is not None:
        matrix = result.importance(heat_criterion)  # type: ignore[arg-type]
        if heat_criterion == "frequency":
            matrix = matrix / max(result.n_tokens, 1)
        written = heatmap(matrix, plot_out, title=f"{Path(model).name}: expert {heat_criterion} "
                          f"({result.n_prompts} prompts)", layer_labels=result.layer_indices(),
                          colorbar_label="fraction of tokens routed here" if heat_criterion == "frequency" else heat_criterion)
        curve_out = curve_plot(curve, plot_out.with_name(f"{plot_out.stem}.curve{plot_out.suffix}"))
        console.print(f"wrote {written} and {curve_out}")
