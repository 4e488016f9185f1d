"""Expert activation profiler: which experts an MoE model routes to, and how much each one matters.

Forward hooks on router modules (no patching), one adapter table for the transformers MoE families
(``families.FAMILIES``), pure statistics, the dead-experts-vs-prompts curve, and heatmaps.
"""

from harness.profiler.curve import DEFAULT_SIZES, DeadCurve, dead_curve_from_presence, dead_expert_curve
from harness.profiler.families import FAMILIES, Family, MoeBlock, expert_outputs, family_for, find_moe_blocks
from harness.profiler.hooks import LayerCapture, RouteRecorder, trace_routes
from harness.profiler.merging import MergeStatistics, merge_statistics
from harness.profiler.plot import curve_plot, heatmap, heatmap_svg
from harness.profiler.profile import CRITERIA, Criterion, ExpertProfile, LayerProfile, profile_model
from harness.profiler.stats import (
    dead_experts,
    entropy_ratio,
    gini,
    layer_stats,
    top_n_share,
    top_share_of_experts,
)

__all__ = [
    "CRITERIA",
    "DEFAULT_SIZES",
    "FAMILIES",
    "Criterion",
    "DeadCurve",
    "ExpertProfile",
    "Family",
    "LayerCapture",
    "LayerProfile",
    "MergeStatistics",
    "MoeBlock",
    "RouteRecorder",
    "curve_plot",
    "dead_curve_from_presence",
    "dead_expert_curve",
    "dead_experts",
    "entropy_ratio",
    "expert_outputs",
    "family_for",
    "find_moe_blocks",
    "gini",
    "heatmap",
    "heatmap_svg",
    "layer_stats",
    "merge_statistics",
    "profile_model",
    "top_n_share",
    "top_share_of_experts",
    "trace_routes",
]
