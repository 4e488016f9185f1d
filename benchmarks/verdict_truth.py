"""Verdict truth: candidates with known truth, each gated with the shipped ``gates/testbed.toml``.

Benign (must PASS): experts renumbered, bf16 and fp16 round trips, RTN int8 experts, the baseline loaded
in bfloat16. Damaged (must FAIL): RTN int2 experts, the shared expert zeroed in two middle layers, half
the routed experts masked (random), ``lm_head`` rows edited so the model leans to Han characters or to
its end-of-turn token, and half the experts merged (HC-SMoE).
Prints a confusion table (truth x verdict) and, per candidate, which capabilities FAILed it.

    python benchmarks/verdict_truth.py [--only NAME,NAME] [--work DIR]

Model-heavy (one gate run per candidate, a few minutes each on 2 cores); run it alone.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import torch


def _edited(src: Path, out: Path, edits: dict[str, Callable[[torch.Tensor], torch.Tensor]]) -> Path:
    from harness.compress import open_checkpoint
    from harness.compress._write import output_dir, write_edited

    ckpt = open_checkpoint(src)
    with output_dir(ckpt, out) as tmp:
        write_edited(ckpt, tmp, edits)
    return out


def shared_zeroed(src: Path, out: Path) -> Path:
    layers = (14, 15)
    keys = {f"model.layers.{n}.mlp.shared_expert.down_proj.weight" for n in layers}
    return _edited(src, out, dict.fromkeys(keys, torch.zeros_like))


def _lm_head_lean(src: Path, out: Path, targets: list[int], scale: float) -> Path:
    """Rows of ``targets`` become ``scale`` x the row of the most common English token: wherever " the" is
    likely, the targets are likelier."""
    from transformers import AutoTokenizer

    the = AutoTokenizer.from_pretrained(str(src)).encode(" the", add_special_tokens=False)[0]

    def edit(weight: torch.Tensor) -> torch.Tensor:
        new = weight.clone()
        new[targets] = scale * weight[the]
        return new

    return _edited(src, out, {"lm_head.weight": edit})


def lean_han(src: Path, out: Path) -> Path:
    import regex
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(src))
    han = [i for i in range(len(tok)) if regex.search(r"\p{Han}", tok.decode([i]))][:300]
    return _lm_head_lean(src, out, han, 1.3)


def lean_stop(src: Path, out: Path) -> Path:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(src))
    stops = sorted({tok.convert_tokens_to_ids("<|im_end|>"), int(tok.eos_token_id)})
    return _lm_head_lean(src, out, stops, 1.3)


def candidates(testbed: Path, work: Path) -> list[tuple[str, str, Callable[[], tuple[Path, dict]]]]:
    """(name, truth, make) where make() writes the candidate and returns (path, backend options)."""
    from harness.compress import prune, quantize
    from harness.compress._perturb import renumber_experts, round_trip

    def at(name: str) -> Path:
        return work / "candidates" / name

    def once(name: str, build: Callable[[Path], Path]) -> Callable[[], tuple[Path, dict]]:
        def make() -> tuple[Path, dict]:
            path = at(name)
            return (path if path.is_dir() else build(path)), {}
        return make

    rows = [
        ("renumbered", "benign", once("renumbered", lambda p: renumber_experts(testbed, p, seed=0))),
        ("bf16 round trip", "benign", once("bf16", lambda p: round_trip(testbed, p, dtype="bfloat16"))),
        ("fp16 round trip", "benign", once("fp16", lambda p: round_trip(testbed, p, dtype="float16"))),
        ("int8 experts (RTN)", "benign", once("int8", lambda p: quantize(testbed, p, plan="uniform:8", group_size=64))),
        ("loaded in bfloat16", "benign", lambda: (testbed, {"dtype": "bfloat16"})),
        ("int2 experts (RTN)", "damaged", once("int2", lambda p: quantize(testbed, p, plan="uniform:2", group_size=64))),
        ("shared expert zeroed (layers 14-15)", "damaged", once("shared0", lambda p: shared_zeroed(testbed, p))),
        ("50% experts masked (random)", "damaged",
         once("masked50", lambda p: prune(testbed, p, fraction=0.5, criterion="random", mode="mask"))),
        ("lm_head leans to Han", "damaged", once("han", lambda p: lean_han(testbed, p))),
        ("lm_head leans to end of turn", "damaged", once("stop", lambda p: lean_stop(testbed, p))),
    ]
    from harness.cli.demo import CALIB_TOKENS, calibration_file
    from harness.compress import merge

    calib = calibration_file(work)
    rows.append(("50% experts merged (HC-SMoE)", "damaged", once("merged50", lambda p: merge(
        testbed, p, fraction=0.5, method="hcsmoe", calib=calib, max_tokens=CALIB_TOKENS))))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="comma-separated candidate names (prefixes)")
    parser.add_argument("--work", type=Path, default=None, help="where candidates, baseline and runs go")
    args = parser.parse_args()

    from harness.api import gate_candidate, load_gate, record_baseline, resolve_testbed
    from harness.resources import cache_dir, gates_dir
    from harness.store import MANIFEST

    testbed = Path(resolve_testbed("testbed"))
    work = args.work or cache_dir() / "verdict-truth"
    config = load_gate(gates_dir() / "testbed.toml")
    store = work / "baseline"
    quiet: Callable[[str], None] = lambda m: None  # noqa: E731
    if not (store / MANIFEST).is_file():
        start = time.perf_counter()
        record_baseline(config, out=store, log=quiet)
        print(f"baseline recorded in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    chosen = [c for c in candidates(testbed, work)
              if not args.only or any(c[0].startswith(p) for p in args.only.split(","))]  # fmt: skip
    results = []
    for name, truth, make in chosen:
        start = time.perf_counter()
        path, options = make()
        outcome = gate_candidate(config, str(path), work / "runs" / name.replace(" ", "_"), baseline_dir=store,
                                 options=options or None, log=quiet)  # fmt: skip
        caps = outcome.verdict.capabilities
        failed = [c.label for c in caps if c.status == "FAIL"]
        ppl = next((c.change for c in caps if c.suite == "wikitext2"), None)
        results.append((name, truth, outcome.verdict.overall, failed, ppl, time.perf_counter() - start))
        print(f"{name}: {outcome.verdict.overall} ({time.perf_counter() - start:.0f} s)", file=sys.stderr)

    print("| candidate | truth | verdict | ppl ratio | FAILed by |")
    print("|---|---|---|--:|---|")
    for name, truth, verdict, failed, ppl, _ in results:
        ratio = f"{ppl:.4f}" if ppl is not None else "–"
        print(f"| {name} | {truth} | {verdict} | {ratio} | {'; '.join(failed) or '–'} |")
    print()
    print("| truth \\ verdict | PASS | FAIL | INCONCLUSIVE |")
    print("|---|--:|--:|--:|")
    for truth in ("benign", "damaged"):
        counts = [sum(1 for r in results if r[1] == truth and r[2] == v) for v in ("PASS", "FAIL", "INCONCLUSIVE")]
        print(f"| {truth} | " + " | ".join(map(str, counts)) + " |")
    print(f"\ncommand: python benchmarks/verdict_truth.py{' --only ' + args.only if args.only else ''}")


if __name__ == "__main__":
    main()
