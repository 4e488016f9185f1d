"""Wall time of a scoring suite with few-shot starts run once beneath packed rows vs packed rows alone.

Runs the suite through the real transformers backend on the test bed (uncached: ``run_suites`` on the
bare backend; model load excluded), alternating the two settings in ABBA order: ``packed`` (sequences packed
as prefix tries into rows: a question's choices share its context, the few-shot start repeats in each
row) and ``stems`` (also a start shared by several questions' contexts, such as MMLU-Pro's 5-shot
examples, runs once into a cache beneath the rows). It also checks that both score alike: the largest
log-likelihood difference between the two settings and whether every greedy flag agrees.

    python benchmarks/few_shot_sharing.py --model testbed --suite mmlu_pro_mc --limit 10 --repeats 1
Last line: ``ratio stems/packed = X``.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="testbed")
    parser.add_argument("--suite", default="mmlu_pro_mc")
    parser.add_argument("--limit", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=1, help="ABBA blocks")
    args = parser.parse_args()

    from harness.api import resolve_testbed
    from harness.backends import open_backend
    from harness.backends.transformers import TransformersBackend
    from harness.runner import run_suites
    from harness.suites import suite_settings

    backend = open_backend(resolve_testbed(args.model), dtype="float32", device="cpu", batch_size=args.batch_size)
    assert isinstance(backend, TransformersBackend)
    stem_tokens = backend.share_min_stem_tokens
    settings = {args.suite: suite_settings(args.suite, "ci", {"limit": args.limit})}
    scores: dict[str, list] = {}
    score = backend._score

    def recording(seqs, *, greedy=True):  # type: ignore[no-untyped-def]
        out = score(seqs, greedy=greedy)
        scores.setdefault(label, []).extend(zip(seqs, out, strict=True))
        return out

    backend._score = recording  # type: ignore[method-assign]
    seconds: dict[str, list[float]] = {"packed": [], "stems": []}
    for label in ["packed", "stems", "stems", "packed"] * args.repeats:
        backend.share_min_stem_tokens = stem_tokens if label == "stems" else 10**9
        start = time.perf_counter()
        run = run_suites(backend, settings)[args.suite]
        seconds[label].append(time.perf_counter() - start)
        if run.error:
            raise SystemExit(f"suite failed: {run.error}")
        print(f"{label:6s}: {len(run.records)} items in {seconds[label][-1]:.2f} s", flush=True)
    packed, stems = dict(scores["packed"]), dict(scores["stems"])
    diff = max(abs(packed[s][0] - stems[s][0]) for s in packed)
    flags = all(packed[s][1] == stems[s][1] for s in packed)
    print(f"{len(packed)} sequences: max |logprob difference| = {diff:.2e}, greedy flags identical: {flags}")
    print(f"ratio stems/packed = {sum(seconds['stems']) / sum(seconds['packed']):.3f}")


if __name__ == "__main__":
    main()
