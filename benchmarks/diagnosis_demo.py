"""The expert diagnosis on the demo's pruned candidate: what recording routes costs, the risk ranking, the verdicts.

Steps (each skipped when its output exists): record the test bed's baseline with route traces into
``--work/baseline``; make the demo's pruned candidate (25% of routed experts per layer, by frequency
on 128 C4 documents, router rows masked, as ``moegate demo`` does); ``moegate risk``; gate it; then time
route tracing alone (batched and one text at a time) and measure the candidate's own routing to the
experts it masked on the same ARC and FLORES texts (the baseline's routes cannot show that).

    python benchmarks/diagnosis_demo.py --work /tmp/diag
Lines start with RISK, VERDICT, TRACE and CANDIDATE.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--gate", default="gates/testbed.toml")
    parser.add_argument("--trace-only", action="store_true", help="only the tracing cost and the candidate's own routing")
    args = parser.parse_args()

    from harness.api import load_gate, record_baseline, resolve_testbed
    from harness.cli.demo import CALIB_TOKENS, calibration_file
    from harness.compress import prune

    config = load_gate(args.gate)
    base = args.work / "baseline"
    testbed = Path(resolve_testbed("testbed"))
    if not base.is_dir():
        start = time.perf_counter()
        record_baseline(config, model=str(testbed), out=base, log=print)
        print(f"RECORD baseline with route traces in {time.perf_counter() - start:.0f} s")
    cand = args.work / f"{testbed.name}-pruned-25pct-frequency"
    if not cand.is_dir():
        prune(testbed, cand, fraction=0.25, criterion="frequency", scope="layer", mode="mask",
              calib=calibration_file(args.work), max_tokens=CALIB_TOKENS)  # fmt: skip
    for line in ([] if args.trace_only else _gate(config, base, cand)):
        print(line)
    _trace(base, testbed, cand)


def _gate(config, base: Path, cand: Path) -> list[str]:  # type: ignore[no-untyped-def]
    from harness.api import gate_candidate
    from harness.api.risk import assess_risk

    start = time.perf_counter()
    risk = assess_risk(config, str(cand), baseline_dir=base)
    print(f"RISK in {time.perf_counter() - start:.1f} s; note {risk.note}")
    for rank, r in enumerate(risk.risks, start=1):
        print(f"RISK {rank}. {100 * (r.share or 0):.1f}% {r.label} ({r.suite})")
    outcome = gate_candidate(config, str(cand), base.parent / "run-pruned", baseline_dir=base, log=print)
    lines = [f"VERDICT {c.status} {c.label} | {c.reason[:150]}" for c in outcome.verdict.capabilities]
    return [*lines, outcome.reports["md"].read_text(encoding="utf-8")]


def _trace(base: Path, testbed: Path, cand: Path) -> None:
    from harness.api import ModelSpec, open_model
    from harness.diagnosis import ROUTES_ARTIFACT, decode_routes, suite_share
    from harness.routing import record_routes, trace_suite
    from harness.store import load_store

    _, runs = load_store(base)
    for batch in (8, 1):
        backend = open_model(ModelSpec(model=str(testbed), options={"batch_size": batch}))
        start = time.perf_counter()
        traced = record_routes(backend, runs)
        size = sum(len(run.artifacts[ROUTES_ARTIFACT]) for run in traced.values())
        print(f"TRACE batch_size {batch}: {time.perf_counter() - start:.1f} s, {size} bytes")
    tokens = sum(int(decode_routes(run.artifacts[ROUTES_ARTIFACT]).tokens.sum()) for run in runs.values())
    print(f"TRACE tokens traced {tokens}; a per-token trace (uint8 ids + float16 weights, top-2, 30 layers) would be {tokens * 180} bytes")

    info = json.loads((cand / "pruning.json").read_text(encoding="utf-8"))
    changed = {row["layer"]: dict.fromkeys(row["pruned"], "pruned") for row in info["layers"]}
    candidate = open_model(ModelSpec(model=str(cand)))
    for suite in ("arc_challenge", "flores"):
        theirs = trace_suite(candidate, runs[suite])
        ours = decode_routes(runs[suite].artifacts[ROUTES_ARTIFACT])
        print(f"CANDIDATE {suite}: routing mass to the masked experts: baseline {100 * suite_share(ours, changed):.1f}%, "
              f"candidate {100 * suite_share(theirs, changed):.1f}%")  # fmt: skip


if __name__ == "__main__":
    main()
