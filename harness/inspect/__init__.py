"""Checkpoint audit without building the model: ``inspect_checkpoint(path, against=None) -> InspectReport``.

The gate runs it first: a checkpoint with NaN/Inf, weights that contradict its config, or tensors
outside the experts and routers that differ from the baseline's fails before any suite runs.
"""

from harness.inspect._gate import AUDIT_FILE, audit_extra, audit_for_gate, audit_verdict, with_audit
from harness.inspect._report import InspectReport, inspect_checkpoint
from harness.inspect._scan import MASK_THRESHOLD, TensorStat, scan_file

__all__ = [
    "AUDIT_FILE",
    "MASK_THRESHOLD",
    "InspectReport",
    "TensorStat",
    "audit_extra",
    "audit_for_gate",
    "audit_verdict",
    "inspect_checkpoint",
    "scan_file",
    "with_audit",
]
