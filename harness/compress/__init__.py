"""Compression utilities that make the gate's test subjects: expert pruning, expert merging and per-expert fake quantization.

Both read a local safetensors MoE checkpoint, change only the tensors they must (router rows, expert
weights), write everything else byte-for-byte with safetensors' own writer, and record what they did
(``pruning.json`` / ``merging.json`` / ``quantization.json``) beside the weights.
"""

from __future__ import annotations

from harness.compress._checkpoint import MoeCheckpoint, open_checkpoint
from harness.compress._importance import CRITERIA
from harness.compress._merge import METHODS, calibration_statistics, hcsmoe_groups, merge, msmoe_groups
from harness.compress._prune import MASK_VALUE, MODES, prune, select_experts
from harness.compress._quant import TIER_COLD, TIER_HOT, fake_quantize, parse_plan, quantize, tiered_bits

__all__ = [
    "CRITERIA",
    "MASK_VALUE",
    "METHODS",
    "MODES",
    "TIER_COLD",
    "TIER_HOT",
    "MoeCheckpoint",
    "calibration_statistics",
    "fake_quantize",
    "hcsmoe_groups",
    "merge",
    "msmoe_groups",
    "open_checkpoint",
    "parse_plan",
    "prune",
    "quantize",
    "select_experts",
    "tiered_bits",
]
