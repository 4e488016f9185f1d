"""A re-run served from the request cache, as a fraction of the first run's time.

Runs the same suites twice on one model through ``CachedBackend`` over a fresh cache file: the first
run computes every request, the second finds them all in the cache (the model is still loaded: what is
timed is the suites' work, not model loading).

    python benchmarks/cached_rerun.py --model testbed --suites arc_challenge,wikitext2 --limit 10
Last line: ``cached/first = X``.
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
    parser.add_argument("--suites", default="arc_challenge,wikitext2")
    parser.add_argument("--limit", type=int, default=10)
    parser.add_argument("--kind", default="transformers", help="backend kind (transformers, mlx)")
    args = parser.parse_args()

    from harness.api import resolve_testbed
    from harness.backends import open_backend
    from harness.cache import CachedBackend, RequestCache
    from harness.runner import run_suites
    from harness.suites import suite_settings

    options = {"dtype": "float32", "device": "cpu"} if args.kind == "transformers" else {}
    backend = open_backend(resolve_testbed(args.model, args.kind), args.kind, **options)
    names = [s.strip() for s in args.suites.split(",") if s.strip()]
    settings = {n: suite_settings(n, "ci", {"limit": args.limit}) for n in names}
    backend.fingerprint()
    times = []
    with tempfile.TemporaryDirectory() as tmp:
        cache = RequestCache(Path(tmp) / "cache.sqlite")
        for label in ("first", "cached"):
            cached = CachedBackend(backend, cache)
            start = time.perf_counter()
            runs = run_suites(cached, settings)
            times.append(time.perf_counter() - start)
            errors = {n: r.error for n, r in runs.items() if r.error}
            if errors:
                raise SystemExit(f"suite errors: {errors}")
            print(f"{label:6s} run: {times[-1]:.2f} s ({', '.join(f'{n} {len(r.records)} items' for n, r in runs.items())})")
        cache.close()
    print(f"cached/first = {times[1] / times[0]:.4f}")


if __name__ == "__main__":
    main()
