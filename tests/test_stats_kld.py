"""harness.stats.kld against a line-by-line transcription of llama.cpp's kl_divergence statistics."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.stats.kld import DP_LEVELS, GATE_METRICS, kld_statistics


def llama_cpp(kl: list[float], same: list[bool], lb: list[float], lc: list[float]) -> dict[str, float]:
    """tools/perplexity/perplexity.cpp: the kl_divergence_result sums, mean_and_uncertainty, covariance,
    the percentile lambda on sorted values, and the final report, transcribed with plain Python floats."""
    n = len(kl)
    s = dict.fromkeys(["nll", "nll2", "nll_base", "nll_base2", "nll_nll_base", "kld", "kld2", "p_diff", "p_diff2", "p_diff4"], 0.0)
    n_same_top = 0
    p_diffs = []
    for i in range(n):
        nll, nll_base = -lc[i], -lb[i]
        s["nll"] += nll
        s["nll2"] += nll * nll
        s["nll_base"] += nll_base
        s["nll_base2"] += nll_base * nll_base
        s["nll_nll_base"] += nll * nll_base
        s["kld"] += kl[i]
        s["kld2"] += kl[i] * kl[i]
        n_same_top += same[i]
        p_diff = math.exp(-nll) - math.exp(-nll_base)
        p_diffs.append(p_diff)
        s["p_diff"] += p_diff
        s["p_diff2"] += p_diff * p_diff
        s["p_diff4"] += p_diff ** 4

    def mean_and_uncertainty(total: float, total2: float, count: int) -> tuple[float, float]:
        f = total / count
        df = total2 / count - f * f
        return f, math.sqrt(df / (count - 1)) if df > 0 and count > 10 else 0.0

    def covariance(a: float, b: float, ab: float, count: int) -> float:
        return 0.0 if count < 10 else (ab / count - (a / count) * (b / count)) / (count - 1)

    def percentile(values: list[float], fraction: float) -> float:
        if fraction <= 0:
            return values[0]
        if fraction >= 1:
            return values[-1]
        p = fraction * (len(values) - 1)
        ip = int(p)
        p -= ip
        return (1 - p) * values[ip] + p * values[min(ip + 1, len(values) - 1)]

    kls, dps = sorted(kl), sorted(p_diffs)
    median = 0.5 * (kls[n // 2] + kls[n // 2 - 1]) if n % 2 == 0 else kls[n // 2]
    log_ppl = mean_and_uncertainty(s["nll"], s["nll2"], n)
    log_ppl_base = mean_and_uncertainty(s["nll_base"], s["nll_base2"], n)
    cov = covariance(s["nll"], s["nll_base"], s["nll_nll_base"], n)
    mse = mean_and_uncertainty(s["p_diff2"], s["p_diff4"], n)
    rms = math.sqrt(mse[0])
    same_top = n_same_top / n
    out = {
        "kl_mean": s["kld"] / n, "kl_mean_se": mean_and_uncertainty(s["kld"], s["kld2"], n)[1],
        "kl_median": median, "kl_max": kls[-1], "kl_min": kls[0],
        "kl_p90": percentile(kls, 0.9), "kl_p95": percentile(kls, 0.95), "kl_p99": percentile(kls, 0.99),
        "kl_p999": percentile(kls, 0.999),
        "ppl_cand": math.exp(log_ppl[0]), "ppl_base": math.exp(log_ppl_base[0]),
        "ln_ppl_ratio": log_ppl[0] - log_ppl_base[0],
        "ln_ppl_ratio_se": math.sqrt(max(log_ppl[1] ** 2 + log_ppl_base[1] ** 2 - 2 * cov, 0.0)),
        "ppl_ratio": math.exp(log_ppl[0] - log_ppl_base[0]),
        "dp_mean": mean_and_uncertainty(s["p_diff"], s["p_diff2"], n)[0],
        "dp_mean_se": mean_and_uncertainty(s["p_diff"], s["p_diff2"], n)[1],
        "dp_max": dps[-1], "dp_min": dps[0],
        "dp_rms": rms, "dp_rms_se": 0.5 / rms * mse[1] if rms > 0 else 0.0,
        "same_top": same_top, "same_top_se": math.sqrt(same_top * (1 - same_top) / (n - 1)) if n > 1 else 0.0,
    }
    if log_ppl[1] > 0 and log_ppl_base[1] > 0:
        out["logprob_corr"] = cov / (log_ppl[1] * log_ppl_base[1])
    out["dp_quantiles"] = [percentile(dps, level) for level in DP_LEVELS]
    return out


def draws(n: int):
    kl = st.lists(st.floats(0, 5, allow_subnormal=False), min_size=n, max_size=n)
    lp = st.lists(st.floats(-15, -1e-6, allow_subnormal=False), min_size=n, max_size=n)
    return kl, st.lists(st.booleans(), min_size=n, max_size=n), lp


@settings(max_examples=120, deadline=None)
@given(data=st.data(), n=st.integers(2, 60))
def test_statistics_are_llama_cpps(data, n) -> None:
    kl_s, same_s, lp_s = draws(n)
    kl, same, lb, lc = data.draw(kl_s), data.draw(same_s), data.draw(lp_s), data.draw(lp_s)
    cuts = sorted(set(data.draw(st.lists(st.integers(1, n - 1), max_size=4))))
    sizes = np.diff([0, *cuts, n])
    ours = kld_statistics(np.array(kl), np.array(same), np.array(lb), np.array(lc), sizes, n_resamples=200)
    ref = llama_cpp(kl, same, lb, lc)
    for name, value in ref.items():
        if name == "dp_quantiles":
            assert [v for _, v in ours.dp_quantiles] == pytest.approx(value, rel=1e-9, abs=1e-12)
        else:
            noise = 1e-7 if name.endswith("_se") else 1e-10  # a sqrt of a difference near 0 magnifies rounding
            assert getattr(ours, name) == pytest.approx(value, rel=1e-7, abs=noise), name
    assert [level for level, _ in ours.dp_quantiles] == list(DP_LEVELS)
    assert ours.tokens == n and ours.windows == len(sizes)
    assert ours.kl_mean_lo <= ours.kl_mean + 1e-12 and ours.kl_mean <= ours.kl_mean_hi + 1e-12
    assert ours.same_top_lo <= ours.same_top <= ours.same_top_hi
    assert ours.ppl_ratio_lo <= ours.ppl_ratio * (1 + 1e-12) and ours.ppl_ratio <= ours.ppl_ratio_hi * (1 + 1e-12)
    assert ours.dp_rms >= abs(ours.dp_mean) - 1e-12
    assert math.isnan(ours.logprob_corr) or -1 - 1e-9 <= ours.logprob_corr <= 1 + 1e-9  # NaN: one side constant
    assert set(ours.metrics()) == set(GATE_METRICS)


def test_identical_models_and_known_values() -> None:
    lp = np.log(np.linspace(0.05, 0.95, 40))
    same = kld_statistics(np.zeros(40), np.ones(40, bool), lp, lp, [10, 30])
    assert same.metrics() == {"kl_mean": 0, "kl_median": 0, "kl_p90": 0, "kl_p99": 0, "kl_p999": 0, "kl_max": 0,
                              "same_top": 1.0, "dp_rms": 0, "ppl_ratio": 1.0}
    assert same.logprob_corr == pytest.approx(1.0) and same.kl_mean_hi == 0 and same.ppl_ratio_hi == pytest.approx(1.0)
    kl = np.arange(1, 101, dtype=float) / 100  # 0.01 .. 1.00
    half = kld_statistics(kl, np.arange(100) % 2 == 0, lp.repeat(3)[:100], lp.repeat(3)[:100] - 0.1, [50, 50], alpha=0.025)
    assert half.kl_median == pytest.approx(0.505) and half.kl_p90 == pytest.approx(0.901) and half.kl_max == 1.0
    assert half.same_top == 0.5 and half.same_top_lo == pytest.approx(0.404, abs=1e-3)  # Wilson, 95% two-sided
    assert half.ppl_ratio == pytest.approx(math.exp(0.1)) and half.ppl_ratio_lo == pytest.approx(math.exp(0.1))
    assert half.dp_mean < 0 and half.dp_rms == pytest.approx(-half.dp_mean, rel=0.3)


def test_mean_kl_bound_resamples_windows_not_tokens() -> None:
    """Tokens within a window move together: the bound widens with how unequal the windows are."""
    even = kld_statistics(np.full(200, 0.1), np.ones(200, bool), np.full(200, -1.0), np.full(200, -1.0), [20] * 10)
    uneven_kl = np.concatenate([np.full(20, 0.01 if w % 2 else 0.19) for w in range(10)])
    uneven = kld_statistics(uneven_kl, np.ones(200, bool), np.full(200, -1.0), np.full(200, -1.0), [20] * 10)
    assert even.kl_mean_hi == pytest.approx(0.1) and uneven.kl_mean == pytest.approx(0.1)
    assert uneven.kl_mean_hi - uneven.kl_mean > 5 * uneven.kl_mean_se  # token-level se ignores the windows


def test_bad_inputs() -> None:
    with pytest.raises(ValueError, match="no scored positions"):
        kld_statistics(np.zeros(0), np.zeros(0, bool), np.zeros(0), np.zeros(0), [])
    with pytest.raises(ValueError, match="windows of 5 positions"):
        kld_statistics(np.zeros(4), np.zeros(4, bool), np.zeros(4), np.zeros(4), [5])
