"""What a gate sends a server, per suite and profile, without a model: requests, prompt tokens, generation budget.

Each suite runs against a recording backend that answers instantly (log-likelihood 0, generations of
exactly ``max_tokens`` tokens), so the counts are what ``moegate run`` would send; prompt tokens are
counted with the test bed's tokenizer (SmolLM2's 49k BPE; other tokenizers differ by tens of percent).
Generated tokens are upper bounds (every generation runs to its budget). The stored records of that run
are written as a baseline store and weighed (outputs at their full budget: an upper bound too).

    python benchmarks/profile_requests.py --profile ci
    python benchmarks/profile_requests.py --profile full --suites wikitext2,arc_challenge,gsm8k
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness.backends.base import (
    GenerateRequest,
    Generation,
    Loglikelihood,
    LoglikelihoodRequest,
    RollingRequest,
    RollingResult,
    WindowScore,
)
from harness.suites import SUITES, suite_settings


@dataclass
class Recorder:
    """A backend that counts what it is asked (``tokenizer`` lets lm-eval render chat templates)."""

    tokenizer: object
    name: str = "recorder"
    counts: dict[str, int] = field(default_factory=dict)

    def fingerprint(self) -> str:
        return "recorder"

    def _add(self, key: str, n: int) -> None:
        self.counts[key] = self.counts.get(key, 0) + n

    def _tokens(self, text: str) -> int:
        return len(self.tokenizer.encode(text, add_special_tokens=False))  # type: ignore[attr-defined]

    def loglikelihood(self, requests: Sequence[LoglikelihoodRequest]) -> list[Loglikelihood]:
        self._add("requests", len(requests))
        self._add("prompt_tokens", sum(self._tokens(r.context + r.continuation) for r in requests))
        self._add("distinct_contexts", len({r.context for r in requests}))
        return [Loglikelihood(0.0, False) for _ in requests]

    def loglikelihood_rolling(self, requests: Sequence[RollingRequest]) -> list[RollingResult]:
        results = []
        for req in requests:
            tokens = self._tokens(req.text)
            window = req.window or tokens or 1
            sizes = [min(window, tokens - a) for a in range(0, tokens, window)]
            self._add("requests", len(sizes))
            self._add("prompt_tokens", tokens)
            results.append(RollingResult(tuple(WindowScore(0.0, max(n - 1, 1)) for n in sizes)))
        return results

    def generate(self, requests: Sequence[GenerateRequest]) -> list[Generation]:
        self._add("requests", len(requests))
        self._add("prompt_tokens", sum(self._tokens(r.prompt) for r in requests))
        self._add("max_generated_tokens", sum(r.max_tokens for r in requests))
        return [Generation(" the" * r.max_tokens, r.max_tokens, "length") for r in requests]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="ci", choices=["ci", "full"])
    parser.add_argument("--suites", default="wikitext2,arc_challenge,mmlu_pro_mc,gsm8k,humaneval,flores,collapse")
    args = parser.parse_args()
    from transformers import AutoTokenizer

    from harness.store import write_store
    from harness.testbed import ensure_testbed

    tokenizer = AutoTokenizer.from_pretrained(str(ensure_testbed()))
    runs, totals = {}, {"requests": 0, "prompt_tokens": 0, "max_generated_tokens": 0}
    print(f"profile {args.profile}: suite | items | requests | prompt tokens | distinct contexts | generated tokens (at most) | s")
    for name in args.suites.split(","):
        recorder = Recorder(tokenizer)
        start = time.perf_counter()
        run = SUITES.get(name)().run(recorder, suite_settings(name, args.profile))  # type: ignore[arg-type]
        if run.error:
            raise SystemExit(f"{name}: {run.error}")
        runs[name] = run
        c = recorder.counts
        for key in totals:
            totals[key] += c.get(key, 0)
        print(f"{name} | {len(run.records)} | {c.get('requests', 0)} | {c.get('prompt_tokens', 0)} | "
              f"{c.get('distinct_contexts', '-')} | {c.get('max_generated_tokens', 0)} | {time.perf_counter() - start:.0f}")
    with tempfile.TemporaryDirectory() as tmp:
        write_store(Path(tmp) / "store", runs, model="recorder", backend="recorder", fingerprint="recorder")
        size = sum(p.stat().st_size for p in (Path(tmp) / "store").rglob("*") if p.is_file())
    print(f"total | | {totals['requests']} | {totals['prompt_tokens']} | | {totals['max_generated_tokens']} |")
    print(f"baseline store: {size / 1e6:.2f} MB")
    print(f"command: python benchmarks/profile_requests.py {' '.join(sys.argv[1:])}")


if __name__ == "__main__":
    main()
