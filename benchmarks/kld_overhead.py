"""Cost of the candidate side of logit divergence against the perplexity suite's requests, same windows.

The candidate side of a ``kld`` run is one ``next_token_topk`` request per text, probed at the baseline's
top-k ids (the baseline's table is read from its store, so it is computed once here, untimed). The
perplexity suite sends ``loglikelihood_rolling`` over the same text prefix (the one ``score_windows`` sends for
``--windows``); both score every window of it. Both go through a cold request
cache, as in a gate run (the top-k side pays for encoding its tables into the cache). Runs alternate in
ABBA blocks (rolling, top-k, top-k, rolling) so a drifting CPU load hits both alike, after one untimed run
of each.

    python benchmarks/kld_overhead.py --model <testbed> --windows 8 --seq-len 512 --k 64 --repeats 2
``ratio topk/rolling = X``: the two request kinds alone. Last line: ``ratio kld/wikitext2 = X`` (goal ≤ 1.1):
the ``kld`` suite's candidate side (text corpus, against a baseline run recorded first, untimed) against the
``wikitext2`` suite on the same windows, both whole suite runs through a cold request cache, in process CPU
time (wall times are printed too).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def per_window(backend: Any, prefix: str, baseline: Any, own_k: int, seq_len: int, repeats: int = 5) -> str:
    """The same split with the forward pass timed apart from each side's scoring of its logits (less
    noisy than whole runs: the forward pass, which dominates both, is shared)."""
    import torch

    from harness.backends._scoring import TopKJob, rolling_windows
    from harness.backends._torch_scoring import target_score, topk_rows

    window = rolling_windows(backend.tok_encode(prefix), seq_len)[0]
    probe = np.asarray(baseline.top_ids[: len(window) - 1])  # the first window's rows
    job = TopKJob(tuple(window), len(window) - 1, own_k, probe)
    with torch.inference_mode():
        ids = torch.tensor([window[:-1]])
        times = {"forward": [], "rolling": [], "topk": []}
        for _ in range(repeats):
            start = time.process_time()
            logits = backend.model(ids, use_cache=False).logits[0]
            times["forward"].append(time.process_time() - start)
            start = time.process_time()
            target_score(logits, window[1:], greedy=False)
            times["rolling"].append(time.process_time() - start)
            start = time.process_time()
            topk_rows(logits, job)
            times["topk"].append(time.process_time() - start)
    f, r, t = (min(v) for v in times.values())
    return (f"one window of {len(window)} tokens (fastest of {repeats}, CPU s): forward {f:.3f}, rolling scoring {r:.3f}, "
            f"top-k scoring {t:.3f}; (forward + top-k) / (forward + rolling) = {(f + t) / (f + r):.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="testbed")
    parser.add_argument("--windows", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--k", type=int, default=64, help="baseline top-k width (the probe)")
    parser.add_argument("--own-k", type=int, default=8, help="candidate's own top-k width")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    from harness.api import resolve_testbed
    from harness.backends import open_backend
    from harness.backends.base import RollingRequest, TopKRequest
    from harness.cache import CachedBackend, RequestCache
    from harness.divergence import TokenIds
    from harness.suites._common import load_rows
    from harness.suites.perplexity import WikiText2Settings, corpus_text, score_windows

    settings = WikiText2Settings()
    rows, path = load_rows(settings.data_file, settings.data_sha256)
    text = corpus_text(rows, settings, path)
    backend = open_backend(resolve_testbed(args.model), dtype="float32", device="cpu", batch_size=args.batch_size,
                           max_batch_tokens=args.batch_size * (args.seq_len + 1))
    backend.fingerprint()  # hashed once per checkpoint and cached: not part of either side
    _, sent = score_windows(backend, text, args.seq_len, args.windows)
    prefix = text[:sent]  # what the perplexity suite sends; both sides score every window of it
    (baseline,) = backend.next_token_topk([TopKRequest(prefix, k=args.k, window=args.seq_len)])
    probe = TokenIds(baseline.top_ids)

    def rolling() -> tuple[float, float, int]:
        with tempfile.TemporaryDirectory() as tmp:
            cached = CachedBackend(backend, RequestCache(Path(tmp) / "cold.sqlite"))
            start, cpu = time.perf_counter(), time.process_time()
            (result,) = cached.loglikelihood_rolling([RollingRequest(prefix, window=args.seq_len)])
            return time.perf_counter() - start, time.process_time() - cpu, result.tokens

    def topk() -> tuple[float, float, int]:
        with tempfile.TemporaryDirectory() as tmp:
            cached = CachedBackend(backend, RequestCache(Path(tmp) / "cold.sqlite"))
            request = TopKRequest(prefix, k=args.own_k, window=args.seq_len, probe=probe)
            start, cpu = time.perf_counter(), time.process_time()
            (table,) = cached.next_token_topk([request])
            return time.perf_counter() - start, time.process_time() - cpu, table.positions

    rolling()  # warm-up: the first forward passes pay for allocations that no later run sees
    topk()
    print(per_window(backend, prefix, baseline, args.own_k, args.seq_len))
    rolling_s: list[tuple[float, float]] = []
    topk_s: list[tuple[float, float]] = []
    for _ in range(args.repeats):
        a, b, c, d = rolling(), topk(), topk(), rolling()
        rolling_s += [a[:2], d[:2]]
        topk_s += [b[:2], c[:2]]
    tokens_rolling, tokens_topk = a[2], b[2]
    blocks = [(topk_s[i][1] + topk_s[i + 1][1]) / (rolling_s[i][1] + rolling_s[i + 1][1]) for i in range(0, len(topk_s), 2)]
    print(f"rolling (perplexity suite, {tokens_rolling} tokens scored): wall " + " + ".join(f"{w:.2f}" for w, _ in rolling_s)
          + " s; cpu " + " + ".join(f"{c:.2f}" for _, c in rolling_s) + " s")
    print(f"next_token_topk (probe k={args.k}, own k={args.own_k}, {tokens_topk} positions): wall "
          + " + ".join(f"{w:.2f}" for w, _ in topk_s) + " s; cpu " + " + ".join(f"{c:.2f}" for _, c in topk_s) + " s")
    print(f"wall ratio {sum(w for w, _ in topk_s) / sum(w for w, _ in rolling_s):.3f}; cpu ratio per ABBA block "
          + ", ".join(f"{r:.3f}" for r in blocks))
    print(f"ratio topk/rolling = {sum(c for _, c in topk_s) / sum(c for _, c in rolling_s):.3f}  (process CPU time: "
          "other jobs on the machine move wall time far more)")
    suites_ratio(backend, args)

def suites_ratio(backend: Any, args: argparse.Namespace) -> None:
    """Whole suite runs: kld's candidate side against wikitext2, same windows, cold caches, ABBA."""
    from harness.cache import CachedBackend, RequestCache
    from harness.suites.kld import KldSettings, KldSuite
    from harness.suites.perplexity import WikiText2Settings, WikiText2Suite

    kld_settings = KldSettings(seq_len=args.seq_len, limit=args.windows, corpora=["text"], top_k=args.k)
    ppl_settings = WikiText2Settings(seq_len=args.seq_len, limit=args.windows)
    stored = KldSuite().run(backend, kld_settings)  # the baseline's side: recorded once, read from the store

    def timed(run: Any) -> tuple[float, float]:
        with tempfile.TemporaryDirectory() as tmp:
            cached = CachedBackend(backend, RequestCache(Path(tmp) / "cold.sqlite"))
            start, cpu = time.perf_counter(), time.process_time()
            run(cached)
            return time.perf_counter() - start, time.process_time() - cpu

    def kld(cached: Any) -> None:
        KldSuite().run(cached, kld_settings, baseline=stored)

    def ppl(cached: Any) -> None:
        WikiText2Suite().run(cached, ppl_settings)

    timed(kld), timed(ppl)  # warm-up
    k_s: list[tuple[float, float]] = []
    p_s: list[tuple[float, float]] = []
    for _ in range(args.repeats):
        a, b, c, d = timed(ppl), timed(kld), timed(kld), timed(ppl)
        p_s += [a, d]
        k_s += [b, c]
    print("wikitext2 suite: wall " + " + ".join(f"{w:.2f}" for w, _ in p_s) + " s; cpu " + " + ".join(f"{c:.2f}" for _, c in p_s))
    print("kld suite, candidate side: wall " + " + ".join(f"{w:.2f}" for w, _ in k_s) + " s; cpu "
          + " + ".join(f"{c:.2f}" for _, c in k_s))
    print(f"wall ratio kld/wikitext2 {sum(w for w, _ in k_s) / sum(w for w, _ in p_s):.3f}")
    print(f"ratio kld/wikitext2 = {sum(c for _, c in k_s) / sum(c for _, c in p_s):.3f}  ({args.windows} windows of "
          f"{args.seq_len}, top_k {args.k}; process CPU time)")


if __name__ == "__main__":
    main()
