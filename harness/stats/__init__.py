"""Paired statistics for the gate: pure functions over numbers, no models, no I/O.

- ``mcnemar``: exact one-sided McNemar p-value from flip counts; Tango's score bounds for the
  paired difference in accuracy (and its non-inferiority p-values against a margin).
- ``bootstrap``: paired (and cluster) bootstrap for mean differences, the perplexity ratio, a mean.
- ``clustered``: cluster-robust standard error of a mean difference (MMLU-Pro subjects).
- ``multiple``: Holm's step-down across capabilities.
- ``samplesize``: items that would decide an inconclusive comparison; items a flip count needs to PASS.
- ``sequential``: group-sequential non-inferiority tests (alpha spending over planned looks).
"""

from harness.stats.bootstrap import (
    BootstrapDistribution,
    mean_difference,
    mean_of,
    paired_statistic,
    perplexity_difference,
    perplexity_ratio,
    ratio_of_means,
    resampled_means,
)
from harness.stats.clustered import TInterval, clustered_se, ordinary_se
from harness.stats.interval import Status
from harness.stats.mcnemar import (
    mcnemar_exact_p,
    tango_bounds,
    tango_p_beyond,
    tango_p_within,
    tango_statistic,
)
from harness.stats.multiple import HolmResult, holm
from harness.stats.samplesize import items_to_decide, paired_items_to_pass
from harness.stats.sequential import SequentialResult, look_points, sequential_noninferiority

__all__ = [
    "BootstrapDistribution",
    "HolmResult",
    "SequentialResult",
    "Status",
    "TInterval",
    "clustered_se",
    "holm",
    "items_to_decide",
    "look_points",
    "mcnemar_exact_p",
    "mean_difference",
    "mean_of",
    "ordinary_se",
    "paired_items_to_pass",
    "paired_statistic",
    "perplexity_difference",
    "perplexity_ratio",
    "ratio_of_means",
    "resampled_means",
    "sequential_noninferiority",
    "tango_bounds",
    "tango_p_beyond",
    "tango_p_within",
    "tango_statistic",
]
