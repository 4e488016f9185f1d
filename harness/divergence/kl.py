"""KL(P_base || P_cand) per token from top-k tables, without full-vocabulary rows (pure numpy).

Both estimates merge the vocabulary into buckets whose masses are known on both sides, so by the
data-processing inequality each is a **lower bound** of the exact KL, and the chain rule gives the gap
exactly: ``KL − KL_buckets = p_tail · KL(P | tail ‖ Q | tail)`` — the baseline's mass in the merged
bucket times the divergence of the two models' distributions inside it.

- ``kl_tail_bucket``: the candidate runs locally and returned its log-probs at the baseline's top-k ids
  (``probe_*``): buckets are the baseline's top-k ids plus one tail.
- ``kl_both_top_k``: the candidate is served and returned only its own top-k: buckets are the ids in both
  top-k sets plus one tail (the rest of each side's mass).

With ``extrapolate`` (the default in ``compare``) the gap is estimated rather than dropped: the tail's
inner divergence KL(P | tail ‖ Q | tail) is read from the known ids nearest to the tail, the lower half of
the baseline's top-k (ranks k/2 … k): ``KL ≈ KL_buckets + p_tail · KL(P | low ‖ Q | low)``. Small
perturbations (quantization noise) spread over the logits evenly, so a bucket's inner divergence depends
little on which ranks it holds. That is no longer a bound; ``benchmarks/kld_estimate.py`` measures both
against the exact KL (on the test bed, whose top-64 holds only 81% of the baseline's mass, the bucket
bound reads ~20% low and the extrapolation within a few percent).

Tail masses (1 − Σ of float32 probabilities) carry ~1e-6 of float noise (a float32 log-softmax shifts
every log-prob by up to ~1e-6), so below ``MASS_RESOLUTION`` a baseline tail counts as empty and a
candidate tail as ``MASS_RESOLUTION``: that moves an estimate by at most MASS_RESOLUTION · ln(1 /
MASS_RESOLUTION) ≈ 1.4e-5 nats, and keeps identical models at exactly 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy.special import rel_entr

from harness.divergence.topk import TopKTable
from harness.errors import UserError
from harness.stats.kld import KldStatistics, kld_statistics

MASS_RESOLUTION = 1e-6
KL_RESOLUTION = 1e-6
"""Per-token KL estimates below this many nats are float32 rounding, not divergence, and ``compare`` reports
them as 0: a candidate whose experts are only renumbered (the same function; its router's softmax sums in
another order) measured at most 5.9e-8 nats on a tiny random Qwen2-MoE (``tests/test_suite_kld.py``). A
real change that small moves a mean KL by less than 1e-6 nats."""


def check_aligned(base: TopKTable, cand: TopKTable) -> None:
    """Refuse tables that do not describe the same tokens: KL over different vocabularies means nothing."""
    if base.vocab and cand.vocab and base.vocab != cand.vocab:  # 0: a served model, which does not tell
        raise UserError(
            f"the candidate's vocabulary has {cand.vocab} tokens, the baseline's {base.vocab}",
            "compare models that share a tokenizer and vocabulary",
        )
    if base.window_sizes != cand.window_sizes or not np.array_equal(base.targets, cand.targets):
        raise UserError(
            f"the candidate tokenizes the text into other tokens than the baseline ({cand.positions} vs {base.positions} scored positions)",
            "compare models that share a tokenizer",
        )


def kl_tail_bucket(base: TopKTable, cand: TopKTable, *, extrapolate: bool = False) -> np.ndarray:
    """[N] KL over the baseline's top-k plus one tail bucket; ``cand`` holds its log-probs at those ids."""
    check_aligned(base, cand)
    if cand.probe_ids is None or cand.probe_logprobs is None or cand.probe_rest_mass is None:
        raise ValueError("the candidate table has no log-probs at the baseline's top-k ids (probe)")
    if cand.probe_ids.shape != base.top_ids.shape or not np.array_equal(cand.probe_ids, base.top_ids):
        raise ValueError(f"the candidate was probed at other ids ({cand.probe_ids.shape}) than the baseline's top-k {base.top_ids.shape}")
    known = np.ones(base.top_ids.shape, bool)
    return _estimate(base.top_logprobs, cand.probe_logprobs, known, base.rest_mass, cand.probe_rest_mass, extrapolate)


def kl_both_top_k(base: TopKTable, cand: TopKTable, *, extrapolate: bool = False) -> np.ndarray:
    """[N] KL over the ids in both top-k sets plus one tail bucket holding each side's other mass."""
    check_aligned(base, cand)
    in_cand, q_at_base = _lookup(base.top_ids, cand.top_ids, cand.top_logprobs)
    in_base, _ = _lookup(cand.top_ids, base.top_ids, base.top_logprobs)
    p_tail = base.rest_mass + np.where(in_cand, 0.0, np.exp(base.top_logprobs.astype(np.float64))).sum(axis=1)
    q_tail = cand.rest_mass + np.where(in_base, 0.0, np.exp(cand.top_logprobs.astype(np.float64))).sum(axis=1)
    return _estimate(base.top_logprobs, q_at_base, in_cand, p_tail, q_tail, extrapolate)


def _estimate(lp: np.ndarray, lq: np.ndarray, known: np.ndarray, p_tail: np.ndarray, q_tail: np.ndarray,
              extrapolate: bool) -> np.ndarray:
    """Singleton buckets at ``known`` columns of the baseline's top-k (``lp``, descending; ``lq`` the
    candidate's log-probs there), one tail bucket, and optionally the extrapolated tail divergence."""
    lp, lq = lp.astype(np.float64), lq.astype(np.float64)
    p = np.exp(lp)
    terms = np.where(known, p * (lp - lq), 0.0)
    p_tail = np.where(p_tail < MASS_RESOLUTION, 0.0, np.asarray(p_tail, np.float64))
    kl = terms.sum(axis=1) + rel_entr(p_tail, np.maximum(q_tail, MASS_RESOLUTION))
    if not extrapolate:
        return kl
    low = known & (np.arange(lp.shape[1]) >= lp.shape[1] // 2)
    p_low = np.where(low, p, 0.0).sum(axis=1)
    q_low = np.where(low, np.exp(np.where(low, lq, 0.0)), 0.0).sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        inner = terms.sum(axis=1, where=low) / p_low + np.log(q_low) - np.log(p_low)  # KL(P | low ‖ Q | low)
    return kl + p_tail * np.where(p_low > 0, np.maximum(inner, 0.0), 0.0)


def kl_full(base_logprobs: np.ndarray, cand_logprobs: np.ndarray) -> np.ndarray:
    """[N] exact KL from full [N, V] log-prob rows (the reference the estimates are measured against)."""
    lp = np.asarray(base_logprobs, np.float64)
    lq = np.asarray(cand_logprobs, np.float64)
    if lp.shape != lq.shape or lp.ndim != 2:
        raise ValueError(f"base {lp.shape} and candidate {lq.shape} log-probs must be the same [N, V] shape")
    p = np.exp(lp)
    return np.where(p > 0, p * (lp - lq), 0.0).sum(axis=1)


def _lookup(ids: np.ndarray, table_ids: np.ndarray, table_values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row, whether each of ``ids`` is among that row's ``table_ids``, and its value there (NaN if not)."""
    rows = np.arange(ids.shape[0], dtype=np.int64)[:, None]
    width = np.int64(max(int(ids.max(initial=0)), int(table_ids.max(initial=0))) + 1)
    keys = rows * width + table_ids.astype(np.int64)
    order = np.argsort(keys, axis=1)
    flat = np.take_along_axis(keys, order, axis=1).ravel()  # rows are increasing, so this is sorted
    values = np.take_along_axis(table_values, order, axis=1).ravel().astype(np.float64)
    wanted = (rows * width + ids.astype(np.int64)).ravel()
    at = np.minimum(np.searchsorted(flat, wanted), max(flat.size - 1, 0))
    found = flat[at] == wanted if flat.size else np.zeros(wanted.shape, bool)
    return found.reshape(ids.shape), np.where(found, values[at] if flat.size else np.nan, np.nan).reshape(ids.shape)


@dataclass(frozen=True, eq=False)
class TokenDivergence:
    """Baseline against candidate at every scored position of one text or continuation."""

    method: Literal["tail_bucket", "both_top_k"]
    extrapolated: bool
    """Whether the tail's inner divergence was extrapolated (else ``kl`` is a lower bound)."""
    window_sizes: tuple[int, ...]
    kl: np.ndarray
    """[N] KL(P_base || P_cand) estimate in nats."""
    same_top: np.ndarray
    """[N] both models' most likely next token is the same."""
    base_logprob: np.ndarray
    """[N] log-prob of the actual next token under the baseline."""
    cand_logprob: np.ndarray
    """[N] the same under the candidate."""

    def statistics(self, **options: float | int) -> KldStatistics:
        """llama.cpp's KL-divergence statistics over these positions (see ``harness.stats.kld``)."""
        return kld_statistics(self.kl, self.same_top, self.base_logprob, self.cand_logprob, self.window_sizes, **options)


def compare(base: TopKTable, cand: TopKTable, *, extrapolate: bool = True) -> TokenDivergence:
    """Per-token divergence: the tail-bucket estimate when the candidate was probed, else both-top-k (values
    below ``KL_RESOLUTION`` are 0)."""
    probed = cand.probe_ids is not None
    kl = (kl_tail_bucket if probed else kl_both_top_k)(base, cand, extrapolate=extrapolate)
    kl = np.where(kl < KL_RESOLUTION, 0.0, kl)
    return TokenDivergence(
        method="tail_bucket" if probed else "both_top_k",
        extrapolated=extrapolate,
        window_sizes=base.window_sizes,
        kl=kl,
        same_top=base.top_ids[:, 0] == cand.top_ids[:, 0],
        base_logprob=base.target_logprobs.astype(np.float64),
        cand_logprob=cand.target_logprobs.astype(np.float64),
    )
