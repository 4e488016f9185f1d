"""Forward passes and token positions the transformers backend plans for a suite: plain rows, prefixes shared
within one context (a question's choices), and with few-shot starts shared across questions too.

The suite runs through the real backend's tokenization and its real planning code (``_scoring``), but
no model is loaded: the backend gets the checkpoint's config and tokenizer, and a counting scorer
stands in for the torch passes and answers 0.0. So this measures the plan, not the clock, and needs
no heavy lock. Token positions: the padded rows x width of the tokens each pass runs (a pass on top
of a cache counts its new tokens; the cached ones ran once, in their own pass).

    python benchmarks/scoring_plan.py --model testbed --suite mmlu_pro_mc --limit 10
Last line: ``positions stems/within = X``.
"""

from __future__ import annotations

import argparse
import os
import types
from collections.abc import Callable, Sequence
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


class CountingScorer:
    """The ``TorchScorer`` interface, counting passes and padded token positions instead of running them."""

    def __init__(self) -> None:
        self.passes = 0
        self.positions = 0

    def plain(self, batch: Sequence[Any], score: Callable[[Any, int], Any]) -> list[tuple[float, bool]]:
        self.passes += 1
        self.positions += len(batch) * max(len(seq) - 1 for seq, _ in batch)
        return [(0.0, False)] * len(batch)

    def packed(self, unique: Sequence[Any], plan: Any, results: dict, *, greedy: bool = True) -> None:
        if plan.stems:
            self.passes += 1
            self.positions += len(plan.stems) * plan.stem_width
        for chunk in plan.chunks:
            self.passes += 1
            self.positions += len(chunk) * max(len(row.tokens) for _, row in chunk)
            for _, row in chunk:
                results.update({unique[i]: (0.0, False) for i, _ in row.scored})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="testbed")
    parser.add_argument("--suite", default="arc_challenge")
    parser.add_argument("--limit", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()

    from transformers import AutoConfig, AutoTokenizer

    from harness.api import resolve_testbed
    from harness.backends.transformers import TransformersBackend
    from harness.runner import run_suites
    from harness.suites import suite_settings

    path = resolve_testbed(args.model)
    config_only = types.SimpleNamespace(config=AutoConfig.from_pretrained(path))
    backend = TransformersBackend(config_only, AutoTokenizer.from_pretrained(path), device="cpu", batch_size=args.batch_size)
    settings = {args.suite: suite_settings(args.suite, "ci", {"limit": args.limit})}
    counts = {}
    for label, share, min_stem in (("plain", False, 0), ("packed", True, 10**9), ("stems", True, backend.share_min_stem_tokens)):
        scorer = CountingScorer()
        backend._scorer, backend._can_share, backend.share_min_stem_tokens = scorer, share, min_stem
        run = run_suites(backend, settings)[args.suite]
        if run.error:
            raise SystemExit(f"suite failed: {run.error}")
        counts[label] = scorer
        print(f"{label:6s}: {len(run.records)} items, {scorer.passes} forward passes, {scorer.positions} token positions")
    print(f"positions packed/plain = {counts['packed'].positions / counts['plain'].positions:.3f}")
    print(f"positions stems/packed = {counts['stems'].positions / counts['packed'].positions:.3f}")


if __name__ == "__main__":
    main()
