"""Logit-divergence statistics over per-token values, defined as llama.cpp's ``perplexity --kl-divergence``.

Same definitions as ``tools/perplexity/perplexity.cpp`` (``kl_divergence``), so the two can be put side by
side: means with ``mean_and_uncertainty``'s standard error ``sqrt((Σx²/n − x̄²)/(n − 1))`` (0 for n ≤ 10);
quantiles by linear interpolation at ``fraction · (n − 1)`` of the sorted values (numpy's default);
Δp = p_cand(actual token) − p_base(actual token) in probability, signed, its RMS ``sqrt(mean Δp²)``;
"same top p" the share of positions whose most likely token agrees; PPL(Q)/PPL(base) =
``exp(mean nll_cand − mean nll_base)`` over tokens; and ``Cor(ln PPL(Q), ln PPL(base))``, which is the Pearson
correlation of the per-token log-probs. On top of llama.cpp's token-level standard errors, which treat
tokens as independent, the mean KL and the perplexity ratio get a bootstrap over windows (or items) and
same-top a Wilson binomial interval; bounds are one-sided at ``1 − alpha`` each, like every gate bound.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy.stats import binomtest

from harness.stats.bootstrap import (
    DEFAULT_RESAMPLES,
    BootstrapDistribution,
    perplexity_ratio,
    resampled_means,
)

DP_LEVELS = (0.999, 0.99, 0.95, 0.90, 0.75, 0.5, 0.25, 0.10, 0.05, 0.01, 0.001)
"""The Δp percentiles llama.cpp prints (besides max and min)."""

GATE_METRICS = ("kl_mean", "kl_median", "kl_p90", "kl_p99", "kl_p999", "kl_max", "same_top", "dp_rms", "ppl_ratio")


def mean_and_uncertainty(values: np.ndarray) -> tuple[float, float]:
    """llama.cpp's mean and its standard error (0 when there are 10 values or fewer)."""
    n = values.size
    if n == 0:
        return 0.0, 0.0
    mean = float(values.sum() / n)
    var = float((values * values).sum() / n - mean * mean)
    return mean, math.sqrt(var / (n - 1)) if var > 0 and n > 10 else 0.0


@dataclass(frozen=True)
class KldStatistics:
    """Everything llama.cpp reports for a KL-divergence run, plus bootstrap and binomial bounds."""

    tokens: int
    windows: int
    kl_mean: float
    kl_mean_se: float
    """llama.cpp's ± (tokens treated as independent)."""
    kl_mean_lo: float
    kl_mean_hi: float
    """One-sided bootstrap bounds over windows (token-weighted)."""
    kl_median: float
    kl_p90: float
    kl_p95: float
    kl_p99: float
    kl_p999: float
    kl_max: float
    kl_min: float
    same_top: float
    same_top_se: float
    same_top_lo: float
    same_top_hi: float
    """One-sided Wilson bounds over tokens."""
    dp_mean: float
    dp_mean_se: float
    dp_rms: float
    dp_rms_se: float
    dp_max: float
    dp_min: float
    dp_quantiles: tuple[tuple[float, float], ...]
    """(level, Δp) at ``DP_LEVELS``."""
    ppl_base: float
    ppl_cand: float
    ppl_ratio: float
    ppl_ratio_lo: float
    ppl_ratio_hi: float
    """One-sided bootstrap bounds over windows."""
    ln_ppl_ratio: float
    ln_ppl_ratio_se: float
    """llama.cpp's ± of mean ln(PPL(Q)/PPL(base)) (covariance of the per-token nll included)."""
    logprob_corr: float
    """Pearson correlation of the two models' per-token log-probs (llama.cpp's Cor(ln PPL(Q), ln PPL(base)))."""

    def metrics(self) -> dict[str, float]:
        """The values budgets can name."""
        return {name: getattr(self, name) for name in GATE_METRICS}

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def kld_statistics(
    kl: np.ndarray,
    same_top: np.ndarray,
    base_logprob: np.ndarray,
    cand_logprob: np.ndarray,
    window_sizes: Sequence[int],
    *,
    alpha: float = 0.05,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> KldStatistics:
    """Summaries of per-token KL, same-top flags and actual-token log-probs, grouped into windows.

    Args:
        kl, same_top, base_logprob, cand_logprob: [N] per scored position, windows one after another.
        window_sizes: positions per window (or item); the bootstrap resamples these units.
        alpha: each one-sided bound holds with probability 1 − alpha.
    """
    kl = np.asarray(kl, np.float64)
    top = np.asarray(same_top, bool)
    lb, lc = np.asarray(base_logprob, np.float64), np.asarray(cand_logprob, np.float64)
    sizes = np.asarray(window_sizes, np.int64)
    n = kl.size
    if n == 0:
        raise ValueError("no scored positions to summarize")
    if not (top.size == lb.size == lc.size == n == int(sizes.sum())):
        raise ValueError(f"per-token arrays of {kl.size}, {top.size}, {lb.size}, {lc.size} values for windows of {int(sizes.sum())} positions")
    units = sizes[sizes > 0]
    starts = np.concatenate([[0], np.cumsum(units)[:-1]])

    def per_unit(values: np.ndarray) -> np.ndarray:
        return np.add.reduceat(values.astype(np.float64), starts)

    kl_mean, kl_se = mean_and_uncertainty(kl)
    kl_boot = BootstrapDistribution(kl_mean, resampled_means(per_unit(kl), sizes=units.astype(float), n_resamples=n_resamples, seed=seed)[:, 0])
    kl_lo, kl_hi = kl_boot.bounds(alpha)
    quant = np.quantile(kl, [0.5, 0.90, 0.95, 0.99, 0.999])

    hits = int(top.sum())
    share = hits / n
    wilson = binomtest(hits, n).proportion_ci(confidence_level=1 - 2 * alpha, method="wilson")

    dp = np.exp(lc) - np.exp(lb)
    dp_mean, dp_se = mean_and_uncertainty(dp)
    mse, mse_se = mean_and_uncertainty(dp * dp)
    rms = math.sqrt(mse)

    nll_b, nll_c = -lb, -lc
    mean_b, se_b = mean_and_uncertainty(nll_b)
    mean_c, se_c = mean_and_uncertainty(nll_c)
    cov = float((nll_b * nll_c).sum() / n - mean_b * mean_c) / (n - 1) if n >= 10 else 0.0
    ln_ratio = mean_c - mean_b
    ratio = perplexity_ratio(per_unit(nll_b), units, per_unit(nll_c), units, n_resamples=n_resamples, seed=seed)
    ratio_lo, ratio_hi = ratio.bounds(alpha)
    return KldStatistics(
        tokens=n, windows=int(units.size),
        kl_mean=kl_mean, kl_mean_se=kl_se, kl_mean_lo=kl_lo, kl_mean_hi=kl_hi,
        kl_median=float(quant[0]), kl_p90=float(quant[1]), kl_p95=float(quant[2]), kl_p99=float(quant[3]),
        kl_p999=float(quant[4]), kl_max=float(kl.max()), kl_min=float(kl.min()),
        same_top=share, same_top_se=math.sqrt(share * (1 - share) / (n - 1)) if n > 1 else 0.0,
        same_top_lo=float(wilson.low), same_top_hi=float(wilson.high),
        dp_mean=dp_mean, dp_mean_se=dp_se, dp_rms=rms, dp_rms_se=0.5 / rms * mse_se if rms > 0 else 0.0,
        dp_max=float(dp.max()), dp_min=float(dp.min()),
        dp_quantiles=tuple((level, float(v)) for level, v in zip(DP_LEVELS, np.quantile(dp, DP_LEVELS), strict=True)),
        ppl_base=math.exp(mean_b), ppl_cand=math.exp(mean_c), ppl_ratio=math.exp(ln_ratio),
        ppl_ratio_lo=ratio_lo, ppl_ratio_hi=ratio_hi,
        ln_ppl_ratio=ln_ratio, ln_ppl_ratio_se=math.sqrt(max(se_c * se_c + se_b * se_b - 2 * cov, 0.0)),
        logprob_corr=_pearson(lb, lc),
    )


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation; 1.0 when both are constant and equal, NaN when only one is constant."""
    da, db = a - a.mean(), b - b.mean()
    denom = math.sqrt(float((da * da).sum()) * float((db * db).sum()))
    if denom == 0:
        return 1.0 if np.array_equal(a, b) else float("nan")
    return float((da * db).sum()) / denom
