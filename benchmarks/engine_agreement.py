"""One row of the README's engine table: a served model against the same model on the local backend.

Generation: the collapse suite (ci profile) on both sides, pass/fail agreement per prompt and identical
texts. Scoring: ARC-Challenge (``--arc`` items) and WikiText-2 (``--wikitext`` windows of the ci
profile) on both sides: per-choice log-likelihood difference, acc_norm, perplexity; or the one line the
server is refused with. Start the engine first (README, "Serving engines"), then e.g.

    python benchmarks/engine_agreement.py --base-url http://127.0.0.1:8000/v1 --local "$(moegate testbed build)"
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness.backends import open_backend
from harness.backends.openai import OpenAIBackend
from harness.errors import UserError
from harness.records import SuiteRun, metric_value
from harness.suites import SUITES, suite_settings


def run(backend, name: str, limit: int | None) -> SuiteRun:
    suite = SUITES.get(name)()
    result = suite.run(backend, suite_settings(name, "ci", {"limit": limit} if limit else None))
    if result.error:
        raise SystemExit(f"{name} failed: {result.error}")
    return result


def metric(result: SuiteRun, name: str) -> float | None:
    spec = next(m for m in SUITES.get(result.suite).metrics if m.name == name)
    return metric_value(result.records, spec)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--model-name")
    parser.add_argument("--local", required=True, help="the same model for the local transformers backend")
    parser.add_argument("--arc", type=int, default=5)
    parser.add_argument("--wikitext", type=int, default=1)
    args = parser.parse_args()
    start = time.perf_counter()
    served = OpenAIBackend(args.base_url, args.model_name, timeout_s=600)
    local = open_backend(args.local, dtype="float32")
    info = served.describe()
    print(f"engine {info.engine} {info.version or '(no version)'}, model {info.model}, max context {info.max_context}")

    gen_s, gen_l = run(served, "collapse", None), run(local, "collapse", None)
    same_pass = sum(a.scores.get("pass") == b.scores.get("pass") for a, b in zip(gen_s.records, gen_l.records, strict=True))
    same_text = sum(a.output == b.output for a, b in zip(gen_s.records, gen_l.records, strict=True))
    print(f"generation (collapse, {len(gen_l.records)} prompts): same pass/fail {same_pass}/{len(gen_l.records)}, "
          f"identical text {same_text}/{len(gen_l.records)}")

    try:
        arc_s, ppl_s = run(served, "arc_challenge", args.arc), run(served, "wikitext2", args.wikitext)
    except UserError as err:
        print(f"scoring: refused: {err.line()}")
    else:
        arc_l, ppl_l = run(local, "arc_challenge", args.arc), run(local, "wikitext2", args.wikitext)
        diffs = [abs(x - y) for a, b in zip(arc_s.records, arc_l.records, strict=True)
                 for x, y in zip(a.meta["loglikelihoods"], b.meta["loglikelihoods"], strict=True)]
        print(f"scoring: ARC ({args.arc} items) choice log-likelihoods within {max(diffs):.2g}, acc_norm "
              f"{metric(arc_s, 'acc_norm'):.3f} vs {metric(arc_l, 'acc_norm'):.3f}; WikiText-2 ({args.wikitext} window(s)) "
              f"perplexity {metric(ppl_s, 'ppl'):.4f} vs {metric(ppl_l, 'ppl'):.4f} (served vs local)")
        print(f"alignment vs local: {served.check_alignment(local).describe()}")
    print(f"{time.perf_counter() - start:.0f} s; command: python benchmarks/engine_agreement.py {' '.join(sys.argv[1:])}")


if __name__ == "__main__":
    main()
