"""How close the top-k KL estimates come to the exact full-vocabulary KL, and what the top-k costs in bytes.

For each candidate and each k: the baseline's top-k table and the candidate's log-probs at its ids come
from the backends' ``next_token_topk`` (the product path; one table at the largest k, truncated for the
smaller ones); the exact KL comes from direct ``log_softmax(model(ids).logits)`` rows of both models in
float64 on the same WikiText-2 windows. Columns (errors are signed and relative: (estimate − exact) / exact):

- ``size``: the baseline table's binary form / llama.cpp's full-logit base file (vocab × tokens × 2 bytes).
- ``local``: the candidate runs locally (tail-bucket estimate: the baseline's top-k plus one tail bucket);
  ``served``: only the candidate's own top-k is known (both-sides-top-k estimate).
- ``bound``: buckets only (a lower bound); ``extrap``: plus the tail's inner divergence read from the low
  half of the top-k (``harness.divergence.kl``). ``mean``/``p99``: error of ``kl_mean``/``kl_p99``;
  ``tok p99``: 99th percentile of per-token |estimate − exact| in nats.
- ``fp16``: the ``local extrap`` mean error had the tables stored their log-probs as float16, and the
  median per-token change that rounding makes (compare with the exact ``kl_median`` printed above).
- ``overlap``: mean share of the baseline's top-k that is also in the candidate's top-k.

    python benchmarks/kld_estimate.py --model <testbed> --candidates DIR,DIR --windows 8 --seq-len 512
    python benchmarks/kld_estimate.py --tiny          # tiny random Qwen2-MoE and perturbed copies
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def wikitext_text() -> str:
    from harness.suites._common import load_rows
    from harness.suites.perplexity import WikiText2Settings, corpus_text

    settings = WikiText2Settings()
    rows, path = load_rows(settings.data_file, settings.data_sha256)
    return corpus_text(rows, settings, path)[:400_000]


def exact_kl(base: Any, cand: Any, text: str, seq_len: int, windows: int) -> tuple[np.ndarray, np.ndarray]:
    """[N] exact KL and [N] same-top flags from direct float64 ``log_softmax(model(ids).logits)`` rows,
    window by window (a window's rows are all that is held at once)."""
    import torch

    from harness.backends._scoring import rolling_windows
    from harness.divergence import kl_full

    kls, tops = [], []
    for chunk in rolling_windows(base.tok_encode(text), seq_len)[:windows]:
        ids = torch.tensor([chunk[:-1]])
        with torch.inference_mode():
            lp, lq = (torch.log_softmax(m.model(ids).logits[0].double(), dim=-1).numpy() for m in (base, cand))
        kls.append(kl_full(lp, lq))
        tops.append(lp.argmax(1) == lq.argmax(1))
    return np.concatenate(kls), np.concatenate(tops)


def fp16_estimate(base: Any, cand: Any) -> np.ndarray:
    """The ``local extrap`` estimate with both sides' log-probs rounded to float16 (masses recomputed)."""
    from dataclasses import replace

    from harness.divergence import kl_tail_bucket
    from harness.divergence.topk import rest_mass

    top = base.top_logprobs.astype(np.float16).astype(np.float32)
    probe = cand.probe_logprobs.astype(np.float16).astype(np.float32)
    b16 = replace(base, top_logprobs=top, rest_mass=rest_mass(top))
    c16 = replace(cand, probe_logprobs=probe, probe_rest_mass=rest_mass(probe))
    return kl_tail_bucket(b16, c16, extrapolate=True)


def rows_for(name: str, base_backend: Any, cand_backend: Any, text: str, args: argparse.Namespace,
             base_table: Any) -> list[list[str]]:
    from dataclasses import replace

    from harness.backends.base import TopKRequest
    from harness.divergence import TokenIds, encode_topk, kl_both_top_k, kl_tail_bucket

    kmax = max(args.ks)
    probe = TokenIds(base_table.top_ids)
    (cand_table,) = cand_backend.next_token_topk([TopKRequest(text, k=kmax, window=args.seq_len, windows=args.windows, probe=probe)])
    exact, same_top_flags = exact_kl(base_backend, cand_backend, text, args.seq_len, args.windows)
    exact_mean, exact_p99 = float(exact.mean()), float(np.quantile(exact, 0.99))
    same_top_exact = float(same_top_flags.mean())
    served = replace(cand_table, probe_ids=None, probe_logprobs=None, probe_rest_mass=None)
    excess = 0.0
    out = []
    for k in args.ks:
        base_k, cand_k, served_k = base_table.truncate(k), cand_table.truncate(k), served.truncate(k)
        size = len(encode_topk(base_k)) / (base_k.vocab * base_k.positions * 2)
        tail, both = kl_tail_bucket(base_k, cand_k), kl_both_top_k(base_k, served_k)
        tail_x, both_x = kl_tail_bucket(base_k, cand_k, extrapolate=True), kl_both_top_k(base_k, served_k, extrapolate=True)
        excess = max(excess, float((tail - exact).max()), float((both - tail).max()))

        def err(est: np.ndarray, q: float | None = None) -> str:
            got, want = (est.mean(), exact_mean) if q is None else (np.quantile(est, q), exact_p99)
            return f"{100 * (got - want) / want:+.1f}%"

        cells = [name, str(k), f"{100 * size:.3f}%", err(tail), err(tail, 0.99), err(tail_x), err(tail_x, 0.99),
                 f"{np.quantile(np.abs(tail_x - exact), 0.99):.2e}", err(both), err(both_x), err(both_x, 0.99),
                 err(fp16_estimate(base_k, cand_k)), f"{np.median(np.abs(fp16_estimate(base_k, cand_k) - tail_x)):.1e}"]
        overlap = np.mean([len(np.intersect1d(a, b)) / k for a, b in zip(base_k.top_ids, served_k.top_ids, strict=True)])
        same_top = float((base_k.top_ids[:, 0] == served_k.top_ids[:, 0]).mean())
        cells += [f"{overlap:.3f}", f"{same_top:.4f}"]
        out.append(cells)
    print(f"{name}: {exact.size} tokens, exact kl_mean {exact_mean:.5f}, kl_median {np.median(exact):.2e}, kl_p99 {exact_p99:.5f}, "
          f"same_top {same_top_exact:.4f} (full-vocabulary argmax); largest per-token excess of "
          f"tail over exact or both over tail {excess:.1e} nats (bounds hold to float noise when ≲1e-5)")
    return out


def tiny_models(root: Path) -> tuple[str, list[tuple[str, str]]]:
    """A tiny random Qwen2-MoE and copies with expert weights perturbed at two strengths."""
    import torch
    from transformers import AutoModelForCausalLM

    from tests.tiny_models import build_tiny_moe

    base = build_tiny_moe("qwen2_moe", root / "base")
    candidates = []
    for scale in (0.05, 0.5):
        model = AutoModelForCausalLM.from_pretrained(base).eval()
        generator = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for name, param in model.named_parameters():
                if ".mlp.experts." in name:
                    param.add_(scale * torch.randn(param.shape, generator=generator))
        out = root / f"experts-noise-{scale}"
        model.save_pretrained(out)
        from transformers import AutoTokenizer

        AutoTokenizer.from_pretrained(base).save_pretrained(out)
        candidates.append((f"experts+{scale}·noise", str(out)))
    return str(base), candidates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="testbed")
    parser.add_argument("--candidates", default="", help="comma-separated candidate folders")
    parser.add_argument("--tiny", action="store_true", help="tiny random models instead of --model/--candidates")
    parser.add_argument("--windows", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--ks", default="8,16,32,64,128")
    args = parser.parse_args()
    args.ks = [int(k) for k in args.ks.split(",")]

    from harness.api import resolve_testbed
    from harness.backends import open_backend
    from harness.backends.base import TopKRequest

    tmp = tempfile.TemporaryDirectory()
    if args.tiny:
        model, candidates = tiny_models(Path(tmp.name))
        args.seq_len = min(args.seq_len, 64)
    else:
        model = resolve_testbed(args.model)
        candidates = [(Path(c).name, c) for c in args.candidates.split(",") if c]
    text = wikitext_text()

    def load(path: str) -> Any:
        return open_backend(path, dtype="float32", device="cpu", batch_size=1, max_length=args.seq_len)

    base = load(model)
    (base_table,) = base.next_token_topk([TopKRequest(text, k=max(args.ks), window=args.seq_len, windows=args.windows)])
    top_mass = 1 - base_table.rest_mass.astype(np.float64)
    print(f"baseline {Path(model).name}: vocab {base_table.vocab}, {base_table.positions} positions in "
          f"{len(base_table.window_sizes)} windows of {args.seq_len}; mean top-k mass "
          + ", ".join(f"k={k}: {np.mean(1 - base_table.truncate(k).rest_mass.astype(np.float64)):.4f}" for k in args.ks)
          + f" (k={max(args.ks)} min {top_mass.min():.4f})")
    rows = []
    for name, path in candidates:
        rows += rows_for(name, base, load(path), text, args, base_table)
    header = ["candidate", "k", "size", "local bound mean", "p99", "local extrap mean", "p99", "tok p99",
              "served bound mean", "served extrap mean", "p99", "fp16 mean", "fp16 tok Δ p50", "overlap", "same_top"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for cells in rows:
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
