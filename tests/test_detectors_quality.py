"""The labelled set keeps every flag's precision and recall above 0.9 (see benchmarks/detector_quality.py)."""

from __future__ import annotations

import functools
import importlib.util
import sys
from pathlib import Path

from harness.detectors import FLAGS

BENCH = Path(__file__).resolve().parent.parent / "benchmarks" / "detector_quality.py"


@functools.cache
def _bench():
    spec = importlib.util.spec_from_file_location("detector_quality", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_labelled_set_is_big_and_covers_every_flag() -> None:
    items = _bench().load_labelled(_bench().DEFAULT_DATA)
    assert len(items) >= 150
    assert len({i["id"] for i in items}) == len(items)
    for flag in FLAGS:
        positives = sum(flag in i["labels"] for i in items)
        assert positives >= 3, f"{flag}: only {positives} positives"
    assert sum(not i["labels"] for i in items) >= 60, "too few hard negatives"


def test_every_flag_keeps_precision_and_recall_above_0_9() -> None:
    bench = _bench()
    stats, errors = bench.evaluate(bench.load_labelled(bench.DEFAULT_DATA))
    low = {
        f: (round(s.precision, 3), round(s.recall, 3))
        for f, s in stats.items()
        if min(s.precision, s.recall) < 0.9
    }
    assert not low, f"below 0.9 (precision, recall): {low}; mismatches: {errors[:10]}"


def test_held_out_set_is_separate_from_the_tuning_set() -> None:
    bench = _bench()
    tuning, held_out = (bench.load_labelled(p) for p in (bench.DEFAULT_DATA, bench.DEFAULT_HELDOUT))
    assert len(held_out) >= 40 and sum(bool(i["labels"]) for i in held_out) >= 15
    assert not {i["id"] for i in tuning} & {i["id"] for i in held_out}
    assert not {i["candidate"] for i in tuning} & {i["candidate"] for i in held_out}


def test_benchmark_scores_both_sets_separately(capsys) -> None:
    assert _bench().main([]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    summaries = [line for line in out if line.startswith("summary (")]
    assert [s.split(")")[0] for s in summaries] == ["summary (tuning set (in-sample", "summary (held-out set (never tuned on"]
    assert sum(line.startswith("| repetition |") for line in out) == 2
