"""The published MoE compression headline, in miniature, on the SmolLM2 MoE test bed.

Pruning a few percent of the least-used experts vs. per-expert quantization: WikiText-2 token perplexity
of each variant on the same windows. Calibration (expert usage) on the first C4 sample documents only.

    python benchmarks/compression_ppl.py [--windows 8] [--calib-docs 32] [--work DIR]
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import tempfile
from pathlib import Path

import torch

from harness.compress import prune, quantize
from harness.compress._checkpoint import open_checkpoint
from harness.compress._importance import importance
from harness.resources import data_file
from harness.testbed import ensure_testbed

WINDOW = 512
# "mask": the published -1e9 router rows (not an exact mask for a bias-free router, see README);
# "zero": the pruned experts' weights set to zero, which removes them exactly.
PRUNE_MODES = ("mask", "zero")


def wikitext_windows(tokenizer, n: int) -> list[torch.Tensor]:
    rows = [json.loads(line)["text"] for line in data_file("wikitext2_raw_test.jsonl").open()]
    ids = tokenizer("\n\n".join(rows)[: 4000 * n], add_special_tokens=False)["input_ids"]
    if len(ids) < n * WINDOW:
        raise SystemExit(f"only {len(ids)} WikiText-2 tokens for {n} windows")
    return [torch.tensor(ids[i * WINDOW : (i + 1) * WINDOW]).unsqueeze(0) for i in range(n)]


def perplexity(path: Path, windows: list[torch.Tensor]) -> float:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
    nll = 0.0
    with torch.inference_mode():
        for w in windows:
            nll += model(w, labels=w).loss.item()
    return math.exp(nll / len(windows))


def calib_subset(docs: int, out: Path) -> Path:
    with gzip.open(data_file("c4_validation_sample_2k.jsonl.gz"), "rt", encoding="utf-8") as handle:
        lines = [line for _, line in zip(range(docs), handle, strict=False)]
    out.write_text("".join(lines))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--windows", type=int, default=8, help="WikiText-2 windows of 512 tokens")
    parser.add_argument("--calib-docs", type=int, default=32, help="C4 documents for expert usage")
    parser.add_argument("--calib-tokens", type=int, default=256, help="tokens kept per calibration document")
    parser.add_argument("--testbed", type=Path, default=None, help="test bed folder (default: build/cache it)")
    parser.add_argument("--work", type=Path, default=None, help="folder for the compressed checkpoints")
    args = parser.parse_args()
    from transformers import AutoTokenizer

    base = args.testbed or ensure_testbed()
    work = args.work or Path(tempfile.mkdtemp(prefix="moegate-compression-"))
    work.mkdir(parents=True, exist_ok=True)
    calib = calib_subset(args.calib_docs, work / "calib.jsonl")
    windows = wikitext_windows(AutoTokenizer.from_pretrained(str(base)), args.windows)
    usage = importance(open_checkpoint(base), "frequency", calib, max_tokens=args.calib_tokens)
    variants: list[tuple[str, Path]] = [("MoE test bed (baseline)", base)]
    for frac in (0.05, 0.10, 0.25):
        for mode in PRUNE_MODES:
            out = work / f"prune{int(frac * 100)}-{mode}"
            if not out.exists():
                prune(base, out, fraction=frac, criterion="frequency", scope="global", mode=mode, calib=calib, scores=usage)
            variants.append((f"prune {int(frac * 100)}% experts (frequency, global, {mode})", out))
    for plan in ("uniform:8", "uniform:4", "tiered"):
        out = work / plan.replace(":", "")
        if not out.exists():
            quantize(base, out, plan=plan, group_size=64, calib=calib, usage=usage)
        variants.append((f"quantize {plan} (RTN, group 64)", out))
    print(f"WikiText-2 raw test, {args.windows} windows x {WINDOW} tokens; usage from {args.calib_docs} C4 docs\n")
    print("| variant | PPL | vs baseline |\n|---|---:|---:|")
    reference = None
    for name, path in variants:
        ppl = perplexity(path, windows)
        reference = reference or ppl
        print(f"| {name} | {ppl:.2f} | {100 * (ppl / reference - 1):+.1f}% |", flush=True)


if __name__ == "__main__":
    main()
