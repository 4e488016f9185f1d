"""Wall time of a suite behind a cold request cache: a local backend's chunks bounded by new text vs 64 requests.

The request cache hands its misses to the backend chunk by chunk. With 64-request chunks, a few-shot start
shared by more requests than that (MMLU-Pro multiple choice: 10 options a question, all questions with the
same 5-shot start) is computed once per chunk; the text-bounded chunk of a local backend
(``harness.cache.LOCAL_CHUNK_CHARS``) lets them reach the backend together. Runs the suite through the real
transformers backend on the test bed, each run behind a fresh cache (model load excluded), the two settings in
ABBA order, and checks that both give the same results.

    python benchmarks/cache_chunks.py --model testbed --suite mmlu_pro_mc --limit 30 --repeats 1
Last line: ``ratio text-bounded/64 = X``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="testbed")
    parser.add_argument("--suite", default="mmlu_pro_mc")
    parser.add_argument("--limit", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=1, help="ABBA blocks")
    args = parser.parse_args()

    from harness.api import resolve_testbed
    from harness.backends import open_backend
    from harness.cache import CachedBackend, RequestCache
    from harness.runner import run_suites
    from harness.suites import suite_settings

    backend = open_backend(resolve_testbed(args.model), dtype="float32", device="cpu", batch_size=args.batch_size)
    settings = {args.suite: suite_settings(args.suite, "ci", {"limit": args.limit})}
    work = Path(tempfile.mkdtemp(prefix="moegate-cache-chunks-"))
    seconds: dict[str, list[float]] = {"text": [], "64": []}
    scores: dict[str, list] = {}
    for n, label in enumerate(["text", "64", "64", "text"] * args.repeats):
        chunks = {} if label == "text" else {"chunk_size": 64, "chunk_chars": None}
        cached = CachedBackend(backend, RequestCache(work / f"c{n}.sqlite"), **chunks)  # type: ignore[arg-type]
        start = time.perf_counter()
        run = run_suites(cached, settings)[args.suite]
        seconds[label].append(time.perf_counter() - start)
        if run.error:
            raise SystemExit(f"suite failed: {run.error}")
        scores[label] = [(r.item_id, r.scores, r.meta.get("is_greedy")) for r in run.records]
        print(f"{label:4s}: {len(run.records)} items, {cached.stats.model_calls} backend calls, {seconds[label][-1]:.2f} s",
              flush=True)
    same = [(i, {k: round(v, 6) for k, v in s.items()}, g) for i, s, g in scores["text"]] == \
        [(i, {k: round(v, 6) for k, v in s.items()}, g) for i, s, g in scores["64"]]
    print(f"same scores and greedy flags: {same}")
    print(f"ratio text-bounded/64 = {sum(seconds['text']) / sum(seconds['64']):.3f}")


if __name__ == "__main__":
    main()
