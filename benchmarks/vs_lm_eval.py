"""moegate vs plain lm-eval for the job moegate does: gate a candidate checkpoint against its baseline.

With plain lm-eval, comparing a candidate with its baseline means evaluating both models on the same
tasks and items: ``lm_eval.simple_evaluate(model=HFLM(...))`` twice, over the very task objects and
sample indices moegate's suite uses (built by the suite's own helpers, so items and settings are
identical). With moegate the baseline's records are stored once (``moegate baseline record``, not timed,
like any earlier CI run), and a gate run (``harness.api.gate_candidate``: weights audit, the
candidate's suites behind a *cold* request cache, paired statistics, verdict, reports) evaluates only
the candidate. Model loading is excluded from both sides (HFLM objects and moegate backends are built
before the clock starts); both use the same batch size; repeats alternate the order (ABBA) so a
drifting CPU load does not favour either side.

Two ratios are printed: ``per-pass`` (the whole gate run against one lm-eval pass over one model: the
cost of the evaluation itself) and, last, the gate ratio (the gate run against the two lm-eval passes a
comparison needs). ``--candidate`` defaults to the baseline checkpoint itself (the work is the same
whatever the weights; the verdict is then PASS); ``--sequential`` lets the gate stop a decided
capability early (``[gate] sequential``), which a fixed-sample lm-eval run cannot.

    python benchmarks/vs_lm_eval.py --model testbed --limit 20
Last line: ``ratio moegate/lm_eval = X``.
"""

from __future__ import annotations

import argparse
import itertools
import os
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

BUDGET_METRIC = {
    "arc_challenge": ("acc_norm", 5.0),
    "gsm8k": ("exact_match_strict", 5.0),
    "gsm8k_cot": ("exact_match_strict", 5.0),
    "mmlu_pro": ("exact_match", 5.0),
    "mmlu_pro_mc": ("acc", 5.0),
}
"""The budget each lm-eval suite gets in the benchmark's gate file (metric, drop in points)."""


def plain_lm_eval(lm: object, suite_name: str, settings: Any) -> tuple[float, dict]:
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


def gate_file(folder: Path, baseline: str, names: list[str], limit: int, batch_size: int, sequential: bool) -> Path:
    """A gate file over ``names`` with one drop budget each; the baseline is stored under ``folder``."""
    lines = ["[gate]", 'name = "vs-lm-eval"']
    if sequential:
        lines.append("sequential = true")
    lines += ["", "[baseline]", f"model = {str(baseline)!r}", 'backend = "transformers"',
              f'options = {{ dtype = "float32", device = "cpu", batch_size = {batch_size} }}',
              f"dir = {str(folder / 'baseline')!r}", ""]
    for name in names:
        if name not in BUDGET_METRIC:
            raise SystemExit(f"no budget metric known for suite {name!r}; known: {', '.join(BUDGET_METRIC)}")
        metric, points = BUDGET_METRIC[name]
        lines += [f"[suites.{name}]", 'profile = "ci"', f"limit = {limit}", "",
                  "[[budgets]]", f'suite = "{name}"', f'metric = "{metric}"', 'kind = "drop"', f"max = {points}", ""]
    path = folder / "gates" / "bench.toml"
    path.parent.mkdir(parents=True)
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="testbed", help="the baseline: HF folder, or 'testbed'")
    parser.add_argument("--candidate", default=None, help="the candidate HF folder (default: the baseline itself)")
    parser.add_argument("--suites", default="arc_challenge", help="comma-separated lm-eval suites")
    parser.add_argument("--limit", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2, help="ABBA-ordered repeats of both sides")
    parser.add_argument("--sequential", action="store_true", help="let the gate stop decided capabilities early")
    args = parser.parse_args()

    from lm_eval.models.huggingface import HFLM

    import harness.api.gating as gating
    from harness.api import ModelSpec, gate_candidate, load_gate, record_baseline, resolve_testbed
    from harness.backends import open_backend
    from harness.cache import CachedBackend, RequestCache

    baseline_path = resolve_testbed(args.model)
    candidate_path = str(Path(args.candidate).resolve()) if args.candidate else baseline_path
    names = [s.strip() for s in args.suites.split(",") if s.strip()]
    work = Path(tempfile.mkdtemp(prefix="moegate-vs-lm-eval-"))
    config = load_gate(gate_file(work, baseline_path, names, args.limit, args.batch_size, args.sequential))

    backends = {p: open_backend(p, dtype="float32", device="cpu", batch_size=args.batch_size) for p in {baseline_path, candidate_path}}
    for backend in backends.values():
        backend.fingerprint()  # hashing a checkpoint is once per file (memoised), not per run
    caches = itertools.count()

    def preloaded(spec: ModelSpec, **_: Any) -> Any:
        """``open_model`` without the load: the loaded backend behind a fresh (cold) request cache."""
        return CachedBackend(backends[resolve_testbed(spec.model)], RequestCache(work / f"cache-{next(caches)}.sqlite"))

    gating.open_model = preloaded  # gate_candidate and record_baseline look it up there at call time
    record_baseline(config, log=lambda _m: None)
    lms = {p: HFLM(pretrained=p, dtype="float32", device="cpu", batch_size=args.batch_size) for p in backends}

    def ours_once(rep: int) -> float:
        start = time.perf_counter()
        outcome = gate_candidate(config, candidate_path, work / f"run-{rep}", log=lambda _m: None)
        seconds = time.perf_counter() - start
        for cap in outcome.verdict.capabilities:
            print(f"moegate  {cap.label}: {cap.status} on {cap.n_items} items ({cap.reason})")
        print(f"moegate  gate run (candidate only, baseline stored): {seconds:.1f} s -> {outcome.verdict.overall}")
        return seconds

    def theirs_once(_rep: int) -> tuple[float, float]:
        passes = []
        for path in (baseline_path, candidate_path):
            total = 0.0
            for name in names:
                seconds, results = plain_lm_eval(lms[path], name, config.settings[name])
                total += seconds
                print(f"lm_eval  {name} on {Path(path).name}: {sum(len(v) for v in results['samples'].values())} items in {seconds:.1f} s")
            passes.append(total)
        return passes[0], passes[1]

    ours = one_pass = both = 0.0
    for rep in range(args.repeats):  # ABBA: ours, theirs, theirs, ours, ...
        if rep % 2 == 0:
            mine, (base, cand) = ours_once(rep), theirs_once(rep)
        else:
            (base, cand), mine = theirs_once(rep), ours_once(rep)
        ours, one_pass, both = ours + mine, one_pass + cand, both + base + cand
    print(f"moegate gate {ours:.1f} s; lm_eval one pass {one_pass:.1f} s, baseline + candidate {both:.1f} s "
          f"({args.repeats} repeats, {args.limit} items per suite, suites {','.join(names)}, batch {args.batch_size}"
          f"{', sequential' if args.sequential else ''})")
    print(f"per-pass ratio moegate/lm_eval = {ours / one_pass:.3f}")
    print(f"ratio moegate/lm_eval = {ours / both:.3f}")


if __name__ == "__main__":
    main()
