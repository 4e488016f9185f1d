"""Where a profiled gate run's time goes, from the cProfile that ``vs_lm_eval.py --profile FILE`` writes.

Cumulative times of a few functions, split so the rows add up to the gate run: the model's forward
passes (the top-level ``forward`` of the model's modeling file), the scores taken from their logits,
tokenization, the request cache around the backend, program execution (HumanEval), lm-eval's task
logic (the suite minus its backend calls), the weights audit, and the rest of the gate (records,
statistics, verdict, reports).

    python benchmarks/vs_lm_eval.py --model testbed --suites mmlu_pro_mc --limit 10 --repeats 1 --profile /tmp/gate.pstats
    python benchmarks/profile_breakdown.py /tmp/gate.pstats --modeling modeling_qwen2_moe.py
"""

from __future__ import annotations

import argparse
import pstats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pstats")
    parser.add_argument("--modeling", default="modeling_qwen2_moe.py", help="the model's modeling file name")
    args = parser.parse_args()
    stats = pstats.Stats(args.pstats).stats  # type: ignore[attr-defined]

    def cum(file_part: str, name: str) -> float:
        return sum(v[3] for (f, _, n), v in stats.items() if file_part in f and n == name)

    total = cum("harness/api/gating.py", "gate_candidate")
    suites = cum("harness/runner.py", "run_suites")
    forward = max((v[3] for (f, _, n), v in stats.items() if f.endswith(args.modeling) and n == "forward"), default=0.0)
    score = cum("harness/backends/_torch_scoring.py", "target_score")
    tokenize = cum("harness/backends/transformers.py", "encode_pair") + cum("harness/backends/transformers.py", "_prompt_ids")
    cache_run = cum("harness/cache.py", "_run")
    backend = cum("benchmarks/floor.py", "loglikelihood") + cum("benchmarks/floor.py", "generate")
    execute = cum("harness/suites/humaneval.py", "execute")
    audit = cum("harness/api/gating.py", "_audit_first")
    rows = {
        "forward passes (the model's forward)": forward,
        "log-softmax + gather (target_score)": score,
        "tokenization (encode_pair, prompts)": tokenize,
        "backend other (planning, masks, cache copies, decoding loop)": backend - forward - score - tokenize,
        "request cache (keys, SQLite)": cache_run - backend,
        "program execution (sandbox)": execute,
        "lm-eval task logic, prompts, metrics (suite minus backend)": suites - cache_run - execute,
        "weights audit": audit,
        "records, statistics, verdict, reports (gate minus suites, audit)": total - suites - audit,
    }
    for label, seconds in rows.items():
        print(f"{label:66s} {seconds:7.2f} s {100 * seconds / total:5.1f}%")
    print(f"{'gate run (profiled)':66s} {total:7.2f} s")


if __name__ == "__main__":
    main()
