"""Forward passes and token positions the transformers backend plans for a suite, with and without shared prefixes.

The suite runs through the real backend and its real planning code (``_scoring``), but the model is
never called: a counting scorer stands in for the torch passes and answers 0.0, so this measures the
plan, not the clock (hence no timing noise). Token positions: the padded rows x width of each pass
(for a suffix pass on a shared prefix, the suffix width; the prefix ran once, in its own pass).

    python benchmarks/scoring_plan.py --model testbed --suite arc_challenge --limit 20
Last line: ``positions shared/plain = X``.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


class CountingScorer:
    """The ``TorchScorer`` interface, counting passes and padded token positions instead of running them."""

    def __init__(self) -> None:
        self.passes = 0
        self.positions = 0

    def plain(self, batch: Sequence[Any], results: dict, *, greedy: bool = True) -> None:
        self.passes += 1
        self.positions += len(batch) * max(len(seq) - 1 for seq, _ in batch)
        results.update({item: (0.0, False) for item in batch})

    def shared(self, unique: Sequence[Any], plan: Any, results: dict) -> None:
        self.passes += 1 + len(plan.chunks)
        self.positions += len(plan.groups) * plan.prefix_width
        for chunk in plan.chunks:
            self.positions += len(chunk) * max(len(plan.groups[pos].rows[r]) for pos, r in chunk)
        for group in plan.groups:
            results.update({unique[i]: (0.0, False) for i, _ in group.members})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="testbed")
    parser.add_argument("--suite", default="arc_challenge")
    parser.add_argument("--limit", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()

    from harness.api import resolve_testbed
    from harness.backends import open_backend
    from harness.runner import run_suites
    from harness.suites import suite_settings

    backend = open_backend(resolve_testbed(args.model), dtype="float32", device="cpu", batch_size=args.batch_size)
    settings = {args.suite: suite_settings(args.suite, "ci", {"limit": args.limit})}
    counts = {}
    for label, share in (("plain", False), ("shared", True)):
        backend._scorer, backend._can_share = CountingScorer(), share  # the planning stays the backend's own
        run = run_suites(backend, settings)[args.suite]
        if run.error:
            raise SystemExit(f"suite failed: {run.error}")
        counts[label] = backend._scorer
        print(f"{label:6s}: {len(run.records)} items, {backend._scorer.passes} forward passes, "
              f"{backend._scorer.positions} token positions")
    print(f"positions shared/plain = {counts['shared'].positions / counts['plain'].positions:.3f}")


if __name__ == "__main__":
    main()
