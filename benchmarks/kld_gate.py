"""The kld suite alone on the demo's candidates and on the test bed with its experts renumbered.

The gate is ``gates/testbed.toml``'s ``[suites.kld]`` block and kld budgets; the baseline (the test bed) is
recorded into ``--work``, the candidates are made as ``moegate demo`` makes them (25% of routed experts
pruned by frequency with -1e9 router rows; tiered per-expert quantization) plus a copy whose experts are
renumbered (``harness.compress._perturb.renumber_experts``: the same function), each gated, and per corpus
the pooled per-token statistics are printed.

    python benchmarks/kld_gate.py --work /tmp/kld-gate
    python benchmarks/kld_gate.py --work /tmp/kld-gate-c4 --corpora c4     # the c4 suite's windows instead
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def kld_gate_file(work: Path, corpora: list[str] | None = None) -> Path:
    """gates/testbed.toml reduced to its kld suite and budgets, its baseline stored under ``work``; ``corpora``
    replaces the suite's corpora (a ``c4`` corpus gets as many windows as the text corpus)."""
    from harness.resources import gates_dir

    shipped = tomllib.loads((gates_dir() / "testbed.toml").read_text(encoding="utf-8"))
    lines = ['[gate]\nname = "kld"\n', f'[baseline]\nmodel = "testbed"\nbackend = "transformers"\ndir = "{work / "baseline"}"\n',
             "[suites.kld]"]  # fmt: skip
    block = dict(shipped["suites"]["kld"], **({"corpora": corpora} if corpora else {}))
    lines += [f"{key} = {json.dumps(value)}" for key, value in block.items()]
    for budget in (b for b in shipped["budgets"] if b["suite"] == "kld"):
        lines.append("\n[[budgets]]\n" + "\n".join(f"{k} = {json.dumps(v)}" for k, v in budget.items()))
    path = work / "kld.toml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def candidates(work: Path) -> dict[str, Path]:
    from harness.api import resolve_testbed
    from harness.cli.demo import CALIB_TOKENS, calibration_file
    from harness.compress import prune, quantize
    from harness.compress._perturb import renumber_experts
    from harness.resources import cache_dir

    testbed = Path(resolve_testbed("testbed"))
    demo = cache_dir() / "demo"
    demo.mkdir(parents=True, exist_ok=True)
    calib = calibration_file(demo)
    pruned, quantized = demo / f"{testbed.name}-pruned-25pct-frequency", demo / f"{testbed.name}-quantized-tiered"
    if not pruned.is_dir():
        prune(testbed, pruned, fraction=0.25, criterion="frequency", scope="layer", mode="mask", calib=calib, max_tokens=CALIB_TOKENS)
    if not quantized.is_dir():
        usage = np.array([row["scores"] for row in json.loads((pruned / "pruning.json").read_text())["layers"]])
        quantize(testbed, quantized, plan="tiered", group_size=64, calib=calib, max_tokens=CALIB_TOKENS, usage=usage)
    renumbered = work / "renumbered"
    if not renumbered.is_dir():
        renumber_experts(testbed, renumbered, seed=1)
    return {"quantized-tiered": quantized, "pruned-25pct-frequency": pruned, "renumbered": renumbered}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True, help="folder for the baseline, runs and the renumbered copy")
    parser.add_argument("--corpora", default="", help="comma-separated kld corpora (text, c4, generations); default: the gate file's")
    args = parser.parse_args()

    from harness.api import gate_candidate, load_gate, record_baseline
    from harness.store import load_store

    args.work.mkdir(parents=True, exist_ok=True)
    config = load_gate(kld_gate_file(args.work, [c for c in args.corpora.split(",") if c] or None))
    quiet = lambda _m: None  # noqa: E731
    start = time.perf_counter()
    if not (args.work / "baseline" / "manifest.json").is_file():
        record_baseline(config, log=quiet)
    manifest, _ = load_store(args.work / "baseline")
    sizes = {name: a.size for name, a in manifest.suites["kld"].artifacts.items()}
    print(f"baseline {time.perf_counter() - start:.0f} s; stored tables {sizes}", flush=True)
    for name, path in candidates(args.work).items():
        start = time.perf_counter()
        outcome = gate_candidate(config, str(path), args.work / "runs" / name, log=quiet)
        print(f"== {name}: {outcome.verdict.overall} ({time.perf_counter() - start:.0f} s)")
        for cap in outcome.verdict.capabilities:
            print(f"   {cap.status} {cap.label} | {cap.reason}")
        _, runs = load_store(args.work / "runs" / name / "candidate")
        for corpus in ("text", "c4", "generation"):
            records = [r for r in runs["kld"].records if r.group == corpus]
            if not records:
                continue
            kl = np.concatenate([r.per_token["kl"] for r in records])
            tokens = sum(r.scores["tokens"] for r in records)
            same = sum(r.scores["same_top"] * r.scores["tokens"] for r in records) / tokens
            print(f"   {corpus}: items {len(records)} tokens {int(tokens)} kl_mean {kl.mean():.5f} "
                  f"p99 {np.quantile(kl, 0.99):.4f} max {kl.max():.4f} same_top {same:.4f}", flush=True)


if __name__ == "__main__":
    main()
