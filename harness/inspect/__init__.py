"""Checkpoint audit without building the model: ``inspect_checkpoint(path, against=None) -> InspectReport``.

The gate runs it first: a checkpoint with NaN/Inf, weights that contradict its config, or tensors
outside the experts and routers damaged against the baseline's (changed in a way no precision cast
explains) fails before any suite runs. ``changed_experts`` is the per-expert change map the diagnosis reads.
"""

from harness.inspect._changes import KINDS, TensorChange, changed_experts
from harness.inspect._experts import ExpertChange
from harness.inspect._gate import audit_extra, audit_for_gate
from harness.inspect._report import InspectReport, inspect_checkpoint
from harness.inspect._scan import MASK_THRESHOLD, TensorStat, scan_file
from harness.inspect._summary import audit_lines

__all__ = [
    "KINDS",
    "MASK_THRESHOLD",
    "ExpertChange",
    "InspectReport",
    "TensorChange",
    "TensorStat",
    "audit_extra",
    "audit_for_gate",
    "audit_lines",
    "changed_experts",
    "inspect_checkpoint",
    "scan_file",
]
