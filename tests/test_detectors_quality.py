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


def test_benchmark_prints_a_table_and_a_summary_line(capsys) -> None:
    assert _bench().main([]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1].startswith("summary: ") and any(line.startswith("| script_mixing |") for line in out)
