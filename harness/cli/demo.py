"""``moegate demo``: the whole product on the built-in test bed, with no arguments.

Builds (or reuses) the SmolLM2 MoE test bed, records its baseline, makes two candidates — 25% of
routed experts pruned by frequency, and tiered per-expert quantization — gates both against the
baseline and prints both verdicts. Expected: the pruned one FAILS, the quantized one PASSES.
"""

from __future__ import annotations

import gzip
import itertools
import json
import time
from pathlib import Path

import click
import numpy as np
from rich.console import Console

from harness.api import GateConfig, GateOutcome, gate_candidate, load_gate, record_baseline
from harness.api.models import Log
from harness.atomic import atomic_write_text
from harness.cli.gate import print_outcome
from harness.resources import cache_dir, data_file, gates_dir

CALIB_DOCS = 128
CALIB_TOKENS = 128


def calibration_file(folder: Path) -> Path:
    """The first C4 documents as the calibration set (never an evaluation set)."""
    path = folder / f"calib-c4-{CALIB_DOCS}.jsonl"
    if not path.is_file():
        with gzip.open(data_file("c4_validation_sample_2k.jsonl.gz"), "rt", encoding="utf-8") as handle:
            lines = [json.dumps({"text": json.loads(line)["text"]}) for line in itertools.islice(handle, CALIB_DOCS)]
        atomic_write_text(path, "\n".join(lines) + "\n")
    return path


def make_candidates(testbed: Path, work: Path, calib: Path, log: Log) -> dict[str, Path]:
    """The demo's two candidates in ``work`` (made once, then reused): 25% of routed experts pruned by
    frequency on ``calib``, and tiered quantization by the same usage profile."""
    from harness.compress import prune, quantize

    tag = testbed.name
    pruned = work / f"{tag}-pruned-25pct-frequency"
    quantized = work / f"{tag}-quantized-tiered"
    if not pruned.is_dir():
        log("candidate pruned-25pct-frequency: profiling expert usage on C4, masking the least-used 25% of router rows")
        # The published technique: router rows set to -1e9. Without a router bias that is no exact mask
        # (pruning.json records mask_exact=false), which is one of the ways pruning breaks real models.
        prune(testbed, pruned, fraction=0.25, criterion="frequency", scope="layer", mode="mask", calib=calib, max_tokens=CALIB_TOKENS)
    if not quantized.is_dir():
        log("candidate quantized-tiered: 8/4/2-bit experts by the same usage profile")
        usage = np.array([row["scores"] for row in json.loads((pruned / "pruning.json").read_text())["layers"]])
        quantize(testbed, quantized, plan="tiered", group_size=64, calib=calib, max_tokens=CALIB_TOKENS, usage=usage)
    return {"pruned-25pct-frequency": pruned, "quantized-tiered": quantized}


def gate_demo_candidates(
    config: GateConfig, baseline: str, candidates: dict[str, Path], report_dir: Path, log: Log
) -> dict[str, GateOutcome]:
    """Record the baseline into ``report_dir/baseline`` and gate each candidate against it.

    Candidates are given by path only: they run with the baseline's backend settings (``harness.api``).
    """
    baseline_dir = report_dir / "baseline"
    log("baseline: running the gate's suites on the test bed")
    record_baseline(config, model=baseline, out=baseline_dir, log=log)
    outcomes = {}
    for name, path in candidates.items():
        log(f"candidate {name}: gating")
        outcomes[name] = gate_candidate(config, str(path), report_dir / name, baseline_dir=baseline_dir, log=log)
    return outcomes


@click.command()
@click.option("--report-dir", default=Path("reports/demo"), type=click.Path(path_type=Path), show_default=True)
@click.option("--gate", "gate_path", default=None, type=click.Path(path_type=Path), help="default: the built-in gates/testbed.toml")
def demo(report_dir: Path, gate_path: Path | None) -> None:
    """Gate two compressed test-bed candidates (pruned, quantized) against the test bed's baseline."""
    from harness.api import resolve_testbed

    console = Console(stderr=True)

    def log(message: str) -> None:
        console.print(f"[dim]{time.strftime('%H:%M:%S')}[/] {message}", highlight=False)

    start = time.perf_counter()
    config = load_gate(gate_path or gates_dir() / "testbed.toml")
    testbed = Path(resolve_testbed("testbed", log=log))
    work = cache_dir() / "demo"
    work.mkdir(parents=True, exist_ok=True)
    calib = calibration_file(work)
    candidates = make_candidates(testbed, work, calib, log)
    outcomes = gate_demo_candidates(config, str(testbed), candidates, report_dir, log)
    out = Console()
    for name, outcome in outcomes.items():
        out.rule(f"{name}: {outcome.verdict.overall}")
        print_outcome(outcome, out)
    minutes = (time.perf_counter() - start) / 60
    expected = {"pruned-25pct-frequency": "FAIL", "quantized-tiered": "PASS"}
    got = {name: o.verdict.overall for name, o in outcomes.items()}
    out.print(f"\ndemo finished in {minutes:.1f} min; expected {expected}, got {got}", highlight=False)
    if got != expected:
        raise SystemExit(1)
