"""Merging vs pruning on the SmolLM2 MoE test bed: multiple choice next to generation quality (issue 14).

At 25% and 50% of the routed experts: merged (M-SMoE, HC-SMoE; ``moegate compress merge``) and pruned
(REAP criterion, zero mode; ``moegate compress prune``), each against the uncompressed test bed on
moegate's own suites with the settings of the test bed's gate (gates/testbed.toml), fewer items where
noted: ARC-Challenge (multiple choice, loglikelihood), the collapse prompts (generation: n-gram
diversity and length against the baseline's answer to the same prompt, failed checks; the gate's 5
prompts the baseline passes plus the 8 of the ci profile, 200 tokens) and WikiText-2 perplexity. Calibration: the demo's, the first C4 documents (the C4 sample the test bed
itself was fitted on), 128 tokens each. Requests are cached, so a rerun costs seconds.

    flock /tmp/moegate-heavy.lock python benchmarks/merge_vs_prune.py [--arc 100] [--wikitext 8] [--collapse gate|ci]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from harness.api import evaluate, load_gate, resolve_testbed
from harness.cli.demo import CALIB_TOKENS, calibration_file
from harness.compress import calibration_statistics, merge, open_checkpoint, prune
from harness.compress._importance import importance
from harness.detectors import detect, input_from_record
from harness.detectors.diversity import diversity
from harness.records import ItemRecord, SuiteRun, metric_value
from harness.resources import cache_dir, gates_dir
from harness.stats import mcnemar_exact_p
from harness.suites.base import suite_settings, with_limit

FRACTIONS = (0.25, 0.5)
MIN_TOKENS = 30  # distinct-n of fewer words is noise (the low_diversity detector's default)


def make_variants(testbed: Path, work: Path, calib: Path, log) -> list[tuple[str, Path]]:  # type: ignore[no-untyped-def]
    """The compressed checkpoints (built once into ``work``, reused after)."""
    variants: list[tuple[str, Path]] = [("baseline (test bed)", testbed)]
    stats = reap = None
    for fraction in FRACTIONS:
        pct = int(fraction * 100)
        for method in ("msmoe", "hcsmoe"):
            out = work / f"{testbed.name}-merge-{method}-{pct}"
            if not out.is_dir():
                if stats is None:
                    log("calibration pass for merging (usage, router logits, mean expert outputs)")
                    stats = calibration_statistics(testbed, calib, max_tokens=CALIB_TOKENS)
                merge(testbed, out, fraction=fraction, method=method, calib=calib, max_tokens=CALIB_TOKENS, stats=stats)
            variants.append((f"merge {method} {pct}%", out))
        out = work / f"{testbed.name}-prune-reap-zero-{pct}"
        if not out.is_dir():
            if reap is None:
                log("calibration pass for REAP scores")
                reap = importance(open_checkpoint(testbed), "reap", calib, max_tokens=CALIB_TOKENS)
            prune(testbed, out, fraction=fraction, criterion="reap", scope="layer", mode="zero", calib=calib,
                  max_tokens=CALIB_TOKENS, scores=reap)
        variants.append((f"prune REAP zero {pct}%", out))
    return variants


def _mean_distinct(text: str) -> float:
    values = diversity(text)
    return sum(values.values()) / len(values)


def generation_quality(cand: list[ItemRecord], base: list[ItemRecord]) -> dict[str, float | int | str]:
    """Collapse-suite numbers of ``cand`` against ``base`` (paired by item id)."""
    by_id = {r.item_id: r for r in base}
    ratios, lengths, low_div, short = [], [], 0, 0
    for rec in cand:
        ref = by_id[rec.item_id]
        flags = detect(input_from_record(rec), input_from_record(ref)).flags
        low_div += "low_diversity" in flags
        short += "length_collapse" in flags
        if len((rec.output or "").split()) >= MIN_TOKENS and len((ref.output or "").split()) >= MIN_TOKENS:
            ratios.append(_mean_distinct(rec.output or "") / max(_mean_distinct(ref.output or ""), 1e-9))
        c_tok, b_tok = rec.meta.get("tokens"), ref.meta.get("tokens")
        if isinstance(c_tok, int) and isinstance(b_tok, int) and b_tok > 0:
            lengths.append(c_tok / b_tok)
    return {
        "distinct_ratio": statistics.mean(ratios) if ratios else float("nan"),
        "distinct_items": len(ratios),
        "low_diversity": low_div,
        "length_ratio": statistics.median(lengths) if lengths else float("nan"),
        "length_collapse": short,
        "failed_prompts": sum(r.scores.get("pass") == 0.0 for r in cand),
        "failed_checks": sum(not ok for r in cand for ok in r.checks.values()),
        "checks": sum(len(r.checks) for r in cand),
        "new_failures": sum(r.scores.get("pass") == 0.0 and by_id[r.item_id].scores.get("pass") == 1.0 for r in cand),
    }


def arc_numbers(cand: SuiteRun, base: SuiteRun) -> dict[str, float | int]:
    spec = next(m for m in cand.metrics if m.name == "acc_norm")
    plain = next(m for m in cand.metrics if m.name == "acc")
    by_id = {r.item_id: r.scores["acc_norm"] for r in base.records}
    worse = sum(by_id[r.item_id] == 1.0 and r.scores["acc_norm"] == 0.0 for r in cand.records)
    better = sum(by_id[r.item_id] == 0.0 and r.scores["acc_norm"] == 1.0 for r in cand.records)
    value, acc = metric_value(cand.records, spec), metric_value(cand.records, plain)
    return {"acc_norm": float("nan") if value is None else value, "acc": float("nan") if acc is None else acc, "worse": worse, "better": better,
            "p": mcnemar_exact_p(worse, better), "n": len(cand.records)}


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--arc", type=int, default=100, help="ARC-Challenge items (0-shot, acc_norm)")
    parser.add_argument("--wikitext", type=int, default=8, help="WikiText-2 windows (ci profile: 512 tokens)")
    parser.add_argument("--work", type=Path, default=None, help="folder for the compressed checkpoints")
    parser.add_argument("--collapse", choices=("gate", "ci"), default="gate",
                        help="gate: the test bed gate's 5 prompts the baseline passes + the 8 ci prompts, 200 tokens; "
                             "ci: the ci profile's 8 prompts, 160 tokens (all 8 fail on the baseline)")
    parser.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    args = parser.parse_args()
    start = time.perf_counter()

    def log(message: str) -> None:
        print(f"[{time.perf_counter() - start:6.0f}s] {message}", flush=True)

    testbed = Path(resolve_testbed("testbed", log=log))
    work = args.work or cache_dir() / "merge-vs-prune"
    work.mkdir(parents=True, exist_ok=True)
    calib = calibration_file(work)
    variants = make_variants(testbed, work, calib, log)
    gate = load_gate(gates_dir() / "testbed.toml").settings
    collapse = gate["collapse"]
    ids = [*collapse.model_dump()["item_ids"], *suite_settings("collapse", "ci").model_dump()["item_ids"]]
    suites = {
        "arc_challenge": with_limit(gate["arc_challenge"], args.arc),
        "collapse": type(collapse).model_validate({**collapse.model_dump(), "item_ids": ids, "limit": len(ids)})
        if args.collapse == "gate" else suite_settings("collapse", "ci"),
        "wikitext2": with_limit(gate["wikitext2"], args.wikitext),
    }
    runs: dict[str, dict[str, SuiteRun]] = {}
    for name, path in variants:
        log(f"{name}: running {', '.join(suites)}")
        runs[name] = evaluate(str(path), suites, backend="transformers", log=lambda _m: None).runs
        errors = {s: r.error for s, r in runs[name].items() if r.error}
        if errors:
            raise SystemExit(f"{name}: suite errors {errors}")
    base = runs[variants[0][0]]
    ppl_spec = next(m for m in base["wikitext2"].metrics if m.name == "ppl")
    rows = []
    for name, _ in variants:
        run = runs[name]
        rows.append({"variant": name, **{f"arc_{k}": v for k, v in arc_numbers(run["arc_challenge"], base["arc_challenge"]).items()},
                     **generation_quality(run["collapse"].records, base["collapse"].records),
                     "ppl": metric_value(run["wikitext2"].records, ppl_spec)})
    n_collapse = len(base["collapse"].records)
    print(f"\nARC-Challenge: {rows[0]['arc_n']} items, 0-shot (flips by acc_norm); collapse: {n_collapse} prompts; "
          f"WikiText-2: {args.wikitext} windows of 512 tokens; calibration {calib.name} x {CALIB_TOKENS} tokens\n")
    print("| variant | ARC acc / acc_norm | ARC right→wrong / wrong→right (McNemar p) | distinct-2/3/4 vs baseline "
          "| low_diversity flags | length vs baseline (median) | length_collapse flags | collapse prompts failing "
          "| failed checks | WikiText-2 PPL |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['variant']} | {r['arc_acc']:.1f} / {r['arc_acc_norm']:.1f} | {r['arc_worse']} / {r['arc_better']} ({r['arc_p']:.3f}) "
              f"| {r['distinct_ratio']:.2f} (n={r['distinct_items']}) | {r['low_diversity']}/{n_collapse} "
              f"| {r['length_ratio']:.2f} | {r['length_collapse']}/{n_collapse} | {r['failed_prompts']}/{n_collapse} "
              f"| {r['failed_checks']}/{r['checks']} | {r['ppl']:.1f} |")
    print(f"\nfinished in {(time.perf_counter() - start) / 60:.1f} min")
    if args.json:
        outputs = {name: {r.item_id: r.output for r in runs[name]["collapse"].records} for name, _ in variants}
        args.json.write_text(json.dumps({"rows": rows, "collapse_outputs": outputs}, indent=1) + "\n")


if __name__ == "__main__":
    main()
