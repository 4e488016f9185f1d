"""moegate vs plain lm-eval for the job moegate does: gate a candidate checkpoint against its baseline.

A user who keeps lm-eval's logged samples for the baseline pays one lm-eval pass per candidate, as a
moegate user pays one gate run, so the headline (last line) is the per-pass ratio: a whole gate run
over one plain lm-eval pass on the candidate. With moegate the baseline's records are stored once
(``moegate baseline record``, not timed) and a gate run (``harness.api.gate_candidate``: weights audit,
the candidate's suites behind a *cold* request cache, paired statistics, verdict, reports) evaluates
only the candidate. The lm-eval pass is ``lm_eval.simple_evaluate(model=HFLM(...))`` over the very task
objects and sample indices the suite uses (built by the suite's own helpers, so items and settings are
identical). Model loading is excluded from both sides (HFLM objects and moegate backends are built
before the clock starts); both use the same batch size; repeats alternate the order (ABBA).

The floor (``benchmarks/floor.py``): the bare model's forward passes over the unique tokens the gate
run's requests need (recorded behind the request cache of the first gate run), printed as gate/floor
and lm_eval/floor. ``--both`` also times lm-eval on the baseline and prints the two-pass ratio.

Suites: arc_challenge, mmlu_pro_mc (loglikelihood), gsm8k (generate_until) through moegate's copies of
lm-eval's tasks; humaneval: the gate runs moegate's humaneval suite (programs in moegate's sandbox), the
lm-eval side runs lm-eval 0.4's own ``humaneval`` task (its yaml included as is, the dataset pointed at
the same local ``HumanEval.jsonl.gz``, the same problems and generation budget) with its own execution
switched on (``HF_ALLOW_CODE_EVAL=1``, ``confirm_run_unsafe_code``): evaluate's ``code_eval`` metric,
which is not on this offline machine's hub cache, so ``--code-eval`` names a folder ``code_eval`` holding
``code_eval.py`` and ``execute.py`` from github.com/huggingface/evaluate (``metrics/code_eval``).

    python benchmarks/vs_lm_eval.py --model testbed --limit 20
    python benchmarks/vs_lm_eval.py --model testbed --suites mmlu_pro_mc --limit 10 --repeats 1 --profile gate.pstats
    python benchmarks/vs_lm_eval.py --model testbed --suites humaneval --limit 5 --code-eval /tmp/code_eval
Last line: ``per-pass ratio moegate/lm_eval = X``.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import itertools
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/floor.py

BUDGET_METRIC = {
    "arc_challenge": ("acc_norm", 5.0),
    "gsm8k": ("exact_match_strict", 5.0),
    "gsm8k_cot": ("exact_match_strict", 5.0),
    "humaneval": ("pass@1", 5.0),
    "mmlu_pro": ("exact_match", 5.0),
    "mmlu_pro_mc": ("acc", 5.0),
}
"""The budget each suite gets in the benchmark's gate file (metric, drop in points)."""


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


def plain_humaneval(lm: object, settings: Any, code_eval: Path) -> tuple[float, dict]:
    """lm-eval's own ``humaneval`` task on the suite's local file and problems, executed by ``code_eval``."""
    import lm_eval
    from lm_eval import evaluator
    from lm_eval.tasks import TaskManager

    from harness.suites._common import choose, load_rows
    from harness.suites.humaneval import LM_EVAL_STOP

    if tuple(settings.stop) != LM_EVAL_STOP:
        raise SystemExit(f"humaneval stop strings {settings.stop} are not lm-eval's {LM_EVAL_STOP}")
    if not (code_eval / "code_eval.py").is_file() or code_eval.name != "code_eval":
        raise SystemExit(f"--code-eval {code_eval}: want a folder named code_eval holding evaluate's code_eval.py and execute.py")
    rows, path = load_rows(settings.data_file, settings.data_sha256, required=("task_id", "prompt"))
    wanted = settings.item_ids if settings.item_ids is not None else [r["task_id"] for r in choose(rows, settings.limit, settings.seed)]
    index = {row["task_id"]: i for i, row in enumerate(rows)}
    folder = Path(tempfile.mkdtemp(prefix="moegate-lm-eval-humaneval-"))
    included = Path(lm_eval.__file__).parent / "tasks" / "humaneval" / "humaneval.yaml"
    (folder / "humaneval_local.yaml").write_text(
        f"include: {included}\ntask: humaneval_local\ndataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {path}\n", encoding="utf-8")
    os.environ["HF_ALLOW_CODE_EVAL"] = "1"
    with contextlib.chdir(code_eval.parent):  # evaluate.load("code_eval") finds ./code_eval/code_eval.py
        manager = TaskManager(include_path=str(folder), include_defaults=False)
        task = manager.load(["humaneval_local"])["tasks"]["humaneval_local"]
        docs = [doc["task_id"] for doc in task.eval_docs]
        if [docs[index[t]] for t in wanted] != wanted:
            raise SystemExit("lm-eval's humaneval documents are not in the local file's order")
        start = time.perf_counter()
        results = evaluator.simple_evaluate(
            model=lm, tasks=[task], samples={"humaneval_local": sorted(index[t] for t in wanted)}, task_manager=manager,
            gen_kwargs={"max_gen_toks": settings.max_tokens}, log_samples=True, bootstrap_iters=0,
            confirm_run_unsafe_code=True)
        return time.perf_counter() - start, results


def gate_file(folder: Path, baseline: str, names: list[str], limit: int, batch_size: int, sequential: bool) -> Path:
    """A gate file over ``names`` with one drop budget each; the baseline is stored under ``folder``.

    A profile's pinned item list (humaneval's ci problems) is cut to its first ``limit`` ids, as ``--limit`` does.
    """
    from harness.suites import suite_settings, with_limit

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
        lines += [f"[suites.{name}]", 'profile = "ci"', f"limit = {limit}"]
        pinned = getattr(with_limit(suite_settings(name, "ci"), limit), "item_ids", None)
        if pinned is not None:
            lines.append(f"item_ids = {json.dumps(pinned)}")
        lines += ["", "[[budgets]]", f'suite = "{name}"', f'metric = "{metric}"', 'kind = "drop"', f"max = {points}", ""]
    path = folder / "gates" / "bench.toml"
    path.parent.mkdir(parents=True)
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="testbed", help="the baseline: HF folder, or 'testbed'")
    parser.add_argument("--candidate", default=None, help="the candidate HF folder (default: the baseline itself)")
    parser.add_argument("--suites", default="arc_challenge", help="comma-separated suites: " + ", ".join(BUDGET_METRIC))
    parser.add_argument("--limit", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2, help="ABBA-ordered repeats of the sides")
    parser.add_argument("--sequential", action="store_true", help="let the gate stop decided capabilities early")
    parser.add_argument("--both", action="store_true", help="also time lm-eval on the baseline (the two-pass ratio)")
    parser.add_argument("--profile", type=Path, default=None, help="cProfile the first gate run into this file (pstats)")
    parser.add_argument("--code-eval", type=Path, default=None, help="folder code_eval with evaluate's code_eval.py (humaneval)")
    args = parser.parse_args()
    names = [s.strip() for s in args.suites.split(",") if s.strip()]
    if "humaneval" in names and args.code_eval is None:
        raise SystemExit("humaneval's lm-eval side needs --code-eval (see the docstring)")

    from floor import Floor, Recorder
    from lm_eval.models.huggingface import HFLM

    import harness.api.gating as gating
    from harness.api import ModelSpec, gate_candidate, load_gate, record_baseline, resolve_testbed
    from harness.backends import open_backend
    from harness.cache import CachedBackend, RequestCache

    baseline_path = resolve_testbed(args.model)
    candidate_path = str(Path(args.candidate).resolve()) if args.candidate else baseline_path
    work = Path(tempfile.mkdtemp(prefix="moegate-vs-lm-eval-"))
    config = load_gate(gate_file(work, baseline_path, names, args.limit, args.batch_size, args.sequential))

    backends = {p: open_backend(p, dtype="float32", device="cpu", batch_size=args.batch_size) for p in {baseline_path, candidate_path}}
    for backend in backends.values():
        backend.fingerprint()  # hashing a checkpoint is once per file (memoised), not per run
    caches = itertools.count()
    recorders: list[Recorder] = []

    def preloaded(spec: ModelSpec, **_: Any) -> Any:
        """``open_model`` without the load: the loaded backend behind a fresh (cold) request cache; the first
        gate run's candidate backend behind a ``Recorder`` too (the floor's requests)."""
        backend: Any = backends[resolve_testbed(spec.model)]
        if recording and not recorders:
            backend = Recorder(backend)
            recorders.append(backend)
        return CachedBackend(backend, RequestCache(work / f"cache-{next(caches)}.sqlite"))

    gating.open_model = preloaded  # gate_candidate and record_baseline look it up there at call time
    recording = False
    record_baseline(config, log=lambda _m: None)
    recording = True
    lms = {p: HFLM(pretrained=p, dtype="float32", device="cpu", batch_size=args.batch_size)
           for p in ({baseline_path, candidate_path} if args.both else {candidate_path})}

    def gate_once(rep: int) -> float:
        profiler = cProfile.Profile() if args.profile is not None and rep == 0 else None
        start = time.perf_counter()
        if profiler is not None:
            profiler.enable()
        outcome = gate_candidate(config, candidate_path, work / f"run-{rep}", log=lambda _m: None)
        seconds = time.perf_counter() - start
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(args.profile)
        for cap in outcome.verdict.capabilities:
            print(f"moegate  {cap.label}: {cap.status} on {cap.n_items} items ({cap.reason})")
        print(f"moegate  gate run (candidate only, baseline stored): {seconds:.1f} s -> {outcome.verdict.overall}", flush=True)
        return seconds

    def lm_eval_once(path: str) -> float:
        total = 0.0
        for name in names:
            if name == "humaneval":
                seconds, results = plain_humaneval(lms[path], config.settings[name], args.code_eval.resolve())
            else:
                seconds, results = plain_lm_eval(lms[path], name, config.settings[name])
            total += seconds
            docs = {(task, s["doc_id"]) for task, samples in results["samples"].items() for s in samples}
            scores = {k: round(float(v), 3) for r in results["results"].values() for k, v in r.items()
                      if isinstance(v, float) and "stderr" not in k}
            print(f"lm_eval  {name} on {Path(path).name}: {len(docs)} items in {seconds:.1f} s {scores}", flush=True)
        return total

    floor: Floor | None = None

    def floor_once() -> float:
        nonlocal floor
        if floor is None:
            floor = Floor.from_recorder(recorders[0])
        seconds = floor.run(backends[candidate_path].model, args.batch_size)
        print(f"floor    {floor.positions(args.batch_size)} token positions ({len(floor.contexts)} contexts, "
              f"{len(floor.prompts)} prompts, {floor.stems(args.batch_size)} stems): {seconds:.1f} s", flush=True)
        return seconds

    totals = {"gate": 0.0, "lm_eval": 0.0, "baseline": 0.0, "floor": 0.0}
    for rep in range(args.repeats):  # ABBA: gate, lm_eval, floor; floor, lm_eval, gate; ...
        order = ["gate", "lm_eval", "floor"] if rep % 2 == 0 else ["floor", "lm_eval", "gate"]
        for side in order:
            if side == "gate":
                totals["gate"] += gate_once(rep)
                recording = False
            elif side == "lm_eval":
                totals["lm_eval"] += lm_eval_once(candidate_path)
                if args.both:
                    totals["baseline"] += lm_eval_once(baseline_path)
            else:
                totals["floor"] += floor_once()
    gate, one_pass, floor_s = totals["gate"], totals["lm_eval"], totals["floor"]
    print(f"moegate gate {gate:.1f} s; lm_eval one pass {one_pass:.1f} s; floor {floor_s:.1f} s ({args.repeats} repeats, "
          f"{args.limit} items per suite, suites {','.join(names)}, batch {args.batch_size}{', sequential' if args.sequential else ''})")
    print(f"gate/floor = {gate / floor_s:.3f}; lm_eval/floor = {one_pass / floor_s:.3f}")
    if args.both:
        print(f"two-pass ratio moegate/(lm_eval baseline + candidate) = {gate / (one_pass + totals['baseline']):.3f}")
    print(f"per-pass ratio moegate/lm_eval = {gate / one_pass:.3f}")


if __name__ == "__main__":
    main()
