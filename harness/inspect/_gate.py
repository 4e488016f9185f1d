"""Audit a candidate's weights against its baseline's, for the gate (``harness.api`` turns it into a verdict).

A candidate that is not a compression of the baseline (other tensors, other tokenizer) cannot be
compared: that is a ``UserError`` (exit 2). Broken weights (NaN/Inf, config mismatch, tensors outside
experts/routers changed) are findings the gate FAILs on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from harness.errors import UserError
from harness.inspect._report import InspectReport, inspect_checkpoint


def _local_safetensors(model: str) -> Path | None:
    path = Path(model).expanduser()
    if path.is_dir() and (path / "config.json").is_file() and (
            any(path.glob("*.safetensors")) or (path / "model.safetensors.index.json").is_file()):
        return path
    return None


def audit_for_gate(candidate: str, baseline: str) -> InspectReport | None:
    """Inspect ``candidate`` against ``baseline``; ``None`` unless both are local safetensors folders.

    Raises ``UserError`` when the candidate is unreadable or is not comparable with the baseline.
    """
    cand = _local_safetensors(candidate)
    base = _local_safetensors(baseline)
    if cand is None or base is None:
        return None
    report = inspect_checkpoint(cand, against=base)
    if report.incomparable:
        raise UserError(f"candidate {candidate} cannot be compared with baseline {baseline}: {report.incomparable[0]}",
                        "gate a checkpoint compressed from the baseline model, or record a baseline of this model")
    return report


def audit_extra(report: InspectReport) -> dict[str, Any]:
    """The audit as the report shows it: findings and counts, not every tensor."""
    data = report.model_dump(mode="json", exclude={"tensors"})
    data["tensors"] = len(report.tensors)
    return data
