"""Checkpoint audit without building the model: ``inspect_checkpoint(path, against=None) -> InspectReport``.

The gate runs it first: a checkpoint with NaN/Inf, weights that contradict its config, or tensors
outside the experts and routers that differ from the baseline's fails before any suite runs.
"""

from harness.inspect._gate import audit_extra, audit_for_gate
from harness.inspect._report import InspectReport, inspect_checkpoint
from harness.inspect._scan import MASK_THRESHOLD, TensorStat, scan_file

__all__ = [
    "MASK_THRESHOLD",
    "InspectReport",
    "TensorStat",
    "audit_extra",
    "audit_for_gate",
    "inspect_checkpoint",
    "scan_file",
]
