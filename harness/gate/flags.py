"""Detector flags for a baseline/candidate pair of runs (pure: text in, flags out).

Computed at verdict time from the stored outputs, so changing a detector threshold re-decides old
runs without a model. Only generated text with an expected language is examined: scores of
multiple-choice items and code have nothing for these detectors to read.
"""

from __future__ import annotations

from harness.detectors import DetectorSettings, detect, input_from_record
from harness.gate._estimate import FlagOverrides
from harness.records import SuiteRun


def detector_flags(
    baseline: dict[str, SuiteRun], candidate: dict[str, SuiteRun], settings: DetectorSettings | None = None
) -> FlagOverrides:
    """suite -> item id -> (baseline's own flags, candidate's flags against the baseline's output).

    ``settings``: the gate file's detector thresholds (``[detectors]``), the same for both sides."""
    result: FlagOverrides = {}
    for name, cand_run in candidate.items():
        base_run = baseline.get(name)
        base_by_id = {r.item_id: r for r in base_run.records} if base_run else {}
        per_item: dict[str, tuple[set[str], set[str]]] = {}
        for record in cand_run.records:
            if record.output is None or record.lang is None:
                continue
            base_record = base_by_id.get(record.item_id)
            base_input = input_from_record(base_record) if base_record and base_record.output is not None else None
            base_flags = set(detect(base_input, settings=settings).flags) if base_input else set()
            cand_flags = set(detect(input_from_record(record), base_input, settings).flags)
            per_item[record.item_id] = (base_flags, cand_flags)
        if per_item:
            result[name] = per_item
    return result
