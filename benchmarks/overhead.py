"""moegate's overhead over the model's own forward passes, for the same tokens.

Runs a perplexity suite (WikiText-2 windows) through ``run_suites`` with the transformers backend behind
a cold request cache, recording the rolling requests the suite sends; then times bare
``model(input_ids)`` forwards over exactly the windows the backend scored (same tokenization, same cut,
same batch size). ``overhead`` = suite wall time / forward-only time (1.0 = no overhead).

    python benchmarks/overhead.py --model testbed --windows 6
Last line: ``overhead = X``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


class Recording:
    """Passes requests through to ``inner`` and keeps the rolling ones (to replay them as bare forwards)."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.name, self.rolling = inner, inner.name, []

    def fingerprint(self) -> str:
        return self.inner.fingerprint()

    def loglikelihood(self, requests: Sequence[Any]) -> list[Any]:
        return self.inner.loglikelihood(requests)

    def loglikelihood_rolling(self, requests: Sequence[Any]) -> list[Any]:
        self.rolling.extend(requests)
        return self.inner.loglikelihood_rolling(requests)

    def generate(self, requests: Sequence[Any]) -> list[Any]:
        return self.inner.generate(requests)


def forward_only(backend: Any, requests: Sequence[Any]) -> tuple[float, int]:
    """Seconds for bare forwards over the windows ``backend`` scores for ``requests``; and the token count."""
    import torch

    from harness.backends.transformers import ROLLING_WINDOW_CAP

    windows = []
    for req in requests:
        window = min(req.window or ROLLING_WINDOW_CAP, backend.max_length)
        tokens = backend.tok_encode(req.text)
        windows += [tokens[s:s + window][:-1] for s in range(0, len(tokens), window) if len(tokens[s:s + window]) >= 2]
    windows.sort(key=len, reverse=True)
    start = time.perf_counter()
    with torch.inference_mode():
        for b in range(0, len(windows), backend.batch_size):
            batch = windows[b:b + backend.batch_size]
            width = max(len(w) for w in batch)
            ids = torch.zeros((len(batch), width), dtype=torch.long)
            for row, w in enumerate(batch):
                ids[row, : len(w)] = torch.tensor(w)
            backend.model(ids, use_cache=False)
    return time.perf_counter() - start, sum(len(w) for w in windows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="testbed")
    parser.add_argument("--suite", default="wikitext2")
    parser.add_argument("--windows", type=int, default=6)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=1, help="ABBA blocks (suite, bare, bare, suite) to average over")
    args = parser.parse_args()

    from harness.api import resolve_testbed
    from harness.backends import open_backend
    from harness.cache import CachedBackend, RequestCache
    from harness.runner import run_suites
    from harness.suites import suite_settings

    backend = open_backend(resolve_testbed(args.model), dtype="float32", device="cpu", batch_size=args.batch_size,
                           max_batch_tokens=args.batch_size * (args.seq_len + 1))
    settings = suite_settings(args.suite, "ci", {"limit": args.windows, "seq_len": args.seq_len})
    backend.fingerprint()  # hashing the checkpoint is a one-time cost, cached per file; not per run
    forward_only(backend, [])  # warm-up import
    def suite_once() -> tuple[float, Recording, Any]:
        with tempfile.TemporaryDirectory() as tmp:
            recorder = Recording(backend)
            start = time.perf_counter()
            run = run_suites(CachedBackend(recorder, RequestCache(Path(tmp) / "cold.sqlite")), {args.suite: settings})[args.suite]
            wall = time.perf_counter() - start
        if run.error:
            raise SystemExit(f"suite failed: {run.error}")
        return wall, recorder, run

    # ABBA blocks (suite, bare, bare, suite): a drifting CPU load hits both sides alike
    walls: list[float] = []
    bares: list[float] = []
    for _ in range(args.repeats):
        wall1, recorder, run = suite_once()
        bare1, tokens = forward_only(backend, recorder.rolling)
        bare2, _ = forward_only(backend, recorder.rolling)
        wall2, _, _ = suite_once()
        walls += [wall1, wall2]
        bares += [bare1, bare2]
    wall, bare = sum(walls), sum(bares)
    print(f"suite {args.suite}: {len(run.records)} records, {tokens} tokens, wall " + " + ".join(f"{w:.2f}" for w in walls) + " s")
    print("forward-only over the same windows: " + " + ".join(f"{b:.2f}" for b in bares) + f" s (batch {args.batch_size})")
    print(f"fastest suite run / fastest forward-only = {min(walls) / min(bares):.3f}")
    print(f"overhead = {wall / bare:.3f}")


if __name__ == "__main__":
    main()
