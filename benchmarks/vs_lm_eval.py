"""moegate vs plain lm-eval: the same tasks, items and model, wall time of the evaluation.

Plain lm-eval: ``lm_eval.simple_evaluate(model=HFLM(...))`` over the very task objects and sample
indices moegate's suite uses (built by the suite's own helpers, so items and settings are identical).
moegate: ``run_suites`` through the transformers backend behind a *cold* request cache (a fresh temp
file), i.e. a first run. Model loading is excluded from both timings; both use the same batch size;
repeats alternate the order (ABBA) so a drifting shared CPU load does not favour either side.

    python benchmarks/vs_lm_eval.py --model testbed --limit 20
Last line: ``ratio moegate/lm_eval = X``.
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


def plain_lm_eval(lm: object, suite_name: str, settings: object) -> tuple[float, dict]:
    """lm-eval's own run over the suite's tasks and samples; returns (seconds, results)."""
    from lm_eval import evaluator

    from harness.suites import SUITES
    from harness.suites.lm_eval_tasks import (
        check_data_files,
        select_samples,
        simple_evaluate_kwargs,
        task_manager,
    )

    suite = SUITES.get(suite_name)()
    check_data_files(settings)
    manager = task_manager(settings)
    loaded = manager.load(list(suite.tasks))["tasks"]
    samples = select_samples(loaded, type(suite).item_id, limit=settings.limit, seed=settings.seed, item_ids=settings.item_ids)
    partial = {name: idx for name, idx in samples.items() if len(idx) < len(loaded[name].eval_docs)}
    start = time.perf_counter()
    results = evaluator.simple_evaluate(model=lm, tasks=[loaded[n] for n in loaded if n in samples],
                                        samples=partial or None, task_manager=manager, **simple_evaluate_kwargs(settings))
    return time.perf_counter() - start, results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="testbed", help="HF folder, or 'testbed'")
    parser.add_argument("--suites", default="arc_challenge", help="comma-separated lm-eval suites")
    parser.add_argument("--limit", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2, help="ABBA-ordered repeats of both runs")
    args = parser.parse_args()

    from lm_eval.models.huggingface import HFLM

    from harness.backends import open_backend
    from harness.cache import CachedBackend, RequestCache
    from harness.pipeline import resolve_model, run_suites
    from harness.suites import suite_settings

    path = resolve_model(args.model)
    names = [s.strip() for s in args.suites.split(",") if s.strip()]
    settings = {n: suite_settings(n, "ci", {"limit": args.limit}) for n in names}

    backend = open_backend(path, dtype="float32", device="cpu", batch_size=args.batch_size)
    backend.fingerprint()  # hashing the checkpoint is once per file (memoised), not per run
    lm = HFLM(pretrained=path, dtype="float32", device="cpu", batch_size=args.batch_size)

    def ours_once() -> float:
        with tempfile.TemporaryDirectory() as tmp:  # a cold cache: every request is computed
            cached = CachedBackend(backend, RequestCache(Path(tmp) / "cold.sqlite"))
            start = time.perf_counter()
            runs = run_suites(cached, settings)
            seconds = time.perf_counter() - start
        for name, run in runs.items():
            if run.error:
                raise SystemExit(f"suite {name} failed: {run.error}")
            print(f"moegate  {name}: {len(run.records)} items in {run.seconds:.1f} s")
        return seconds

    def theirs_once() -> float:
        total = 0.0
        for name in names:
            seconds, results = plain_lm_eval(lm, name, settings[name])
            print(f"lm_eval  {name}: {sum(len(v) for v in results['samples'].values())} items in {seconds:.1f} s")
            total += seconds
        return total

    # ABBA order (ours, theirs, theirs, ours...): a shared, drifting CPU load hits both sides alike
    ours = theirs = 0.0
    for rep in range(args.repeats):
        first, second = (ours_once, theirs_once) if rep % 2 == 0 else (theirs_once, ours_once)
        a, b = first(), second()
        ours += a if first is ours_once else b
        theirs += b if first is ours_once else a
    print(f"moegate {ours:.1f} s, lm_eval {theirs:.1f} s ({args.repeats} repeats, {args.limit} items per suite, "
          f"model {args.model}, batch {args.batch_size})")
    print(f"ratio moegate/lm_eval = {ours / theirs:.3f}")


if __name__ == "__main__":
    main()
