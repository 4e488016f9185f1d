"""harness.divergence: the top-k table's binary form, and the KL estimates against the exact KL."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from harness.divergence import (
    MASS_RESOLUTION,
    TokenIds,
    TopKTable,
    compare,
    decode_topk,
    encode_topk,
    kl_both_top_k,
    kl_full,
    kl_tail_bucket,
)
from harness.divergence.topk import rest_mass
from harness.errors import UserError


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


def table(lp: np.ndarray, k: int, targets: np.ndarray, probe: np.ndarray | None = None, sizes: tuple[int, ...] | None = None) -> TopKTable:
    """What a backend returns for full log-prob rows ``lp`` (float32 log-probs, as the backends give)."""
    lp32 = lp.astype(np.float32)
    top = np.argsort(-lp32, axis=1, kind="stable")[:, :k]
    top_lp = np.take_along_axis(lp32, top, axis=1)
    extra = {}
    if probe is not None:
        probe_lp = np.take_along_axis(lp32, probe.astype(np.int64), axis=1)
        extra = {"probe_ids": probe, "probe_logprobs": probe_lp, "probe_rest_mass": rest_mass(probe_lp)}
    return TopKTable(
        vocab=lp.shape[1], window_sizes=sizes or (lp.shape[0],), targets=targets,
        target_logprobs=np.take_along_axis(lp32, targets[:, None].astype(np.int64), axis=1)[:, 0],
        top_ids=top, top_logprobs=top_lp, rest_mass=rest_mass(top_lp), **extra,
    )


def pair(data: st.DataObject, n: int, v: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    logits = st.lists(st.floats(-12, 12, allow_nan=False), min_size=n * v, max_size=n * v)
    lp = log_softmax(np.array(data.draw(logits)).reshape(n, v))
    lq = log_softmax(np.array(data.draw(logits)).reshape(n, v))
    targets = np.array(data.draw(st.lists(st.integers(0, v - 1), min_size=n, max_size=n)))
    return lp, lq, targets


@settings(max_examples=80, deadline=None)
@given(data=st.data(), n=st.integers(0, 5), k=st.integers(1, 6), wide=st.booleans(), probed=st.booleans())
def test_binary_form_round_trips(data, n, k, wide, probed) -> None:
    vocab = 70_000 if wide else 50
    ids = arrays(np.int64, (n, k), elements=st.integers(0, vocab - 1))
    logprobs = arrays(np.float32, (n, k), elements=st.floats(-40, 0, width=32))
    masses = arrays(np.float32, (n,), elements=st.floats(0, 1, width=32))
    cuts = sorted(data.draw(st.lists(st.integers(0, n), max_size=3)))
    sizes = tuple(int(x) for x in np.diff([0, *cuts, n]))
    extra = {"probe_ids": data.draw(ids), "probe_logprobs": data.draw(logprobs), "probe_rest_mass": data.draw(masses)} if probed else {}
    t = TopKTable(vocab=vocab, window_sizes=sizes, targets=data.draw(ids)[:, 0], target_logprobs=data.draw(logprobs)[:, 0],
                  top_ids=data.draw(ids), top_logprobs=data.draw(logprobs), rest_mass=data.draw(masses), **extra)
    blob = encode_topk(t)
    back = decode_topk(blob)
    assert back == t and back.top_ids.dtype == (np.uint32 if wide else np.uint16)
    id_bytes, width = (4 if wide else 2), k * (2 if probed else 1)
    assert len(blob) == 24 + 4 * len(sizes) + n * ((1 + width) * id_bytes + 4 * (2 + width + probed))


def test_binary_form_refuses_damage() -> None:
    lp = log_softmax(np.random.default_rng(0).normal(size=(3, 9)))
    blob = encode_topk(table(lp, 4, np.array([1, 2, 3])))
    with pytest.raises(ValueError, match="magic"):
        decode_topk(b"XXXX" + blob[4:])
    with pytest.raises(ValueError, match="version 9"):
        decode_topk(blob[:4] + (9).to_bytes(2, "little") + blob[6:])
    with pytest.raises(ValueError, match="header describes"):
        decode_topk(blob[:-1])
    with pytest.raises(ValueError, match="shorter than"):
        decode_topk(blob[:10])


def tails(lp: np.ndarray, lq: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Both models' exact mass outside ``ids`` and KL(P | tail ‖ Q | tail), from full rows."""
    outside = np.ones_like(lp, bool)
    np.put_along_axis(outside, ids.astype(np.int64), False, axis=1)
    p_tail, q_tail = (np.where(outside, np.exp(x), 0).sum(1) for x in (lp, lq))
    safe_p, safe_q = np.maximum(p_tail, 1e-300), np.maximum(q_tail, 1e-300)
    terms = np.exp(lp) / safe_p[:, None] * (lp - np.log(safe_p)[:, None] - lq + np.log(safe_q)[:, None])
    return p_tail, q_tail, np.where(outside, terms, 0).sum(1)


def slack(p_tail: np.ndarray, q_tail: np.ndarray, exact: np.ndarray) -> np.ndarray:
    """What float32 tables may add: log-probs to ~1e-7 relative, masses (1 − Σ top-k) to ~1e-6 absolute,
    which moves the tail term by up to p_tail · log(1 + 2e-6 / q_tail), and a baseline tail below the
    resolution counts as empty (at most f · ln(1/f))."""
    floor = MASS_RESOLUTION * np.log(1 / MASS_RESOLUTION)
    return 1e-6 + 1e-6 * exact + floor + p_tail * np.log1p(2 * MASS_RESOLUTION / np.maximum(q_tail, MASS_RESOLUTION))


@settings(max_examples=150, deadline=None)
@given(data=st.data(), n=st.integers(1, 5), v=st.integers(2, 12))
def test_estimates_are_lower_bounds_and_the_gap_is_the_tails_kl(data, n, v) -> None:
    """Data processing: merging ids into a bucket never raises KL; the chain rule gives the gap exactly:
    exact − estimate = p_tail · KL(P | tail ‖ Q | tail)."""
    lp, lq, targets = pair(data, n, v)
    exact = kl_full(lp, lq)
    previous, previous_allowed = np.zeros(n), np.zeros(n)
    for k in range(1, v + 1):
        base = table(lp, k, targets)
        tail = kl_tail_bucket(base, table(lq, v, targets, probe=base.top_ids))
        both = kl_both_top_k(base, table(lq, k, targets))
        p_tail, q_tail, inner = tails(lp, lq, base.top_ids)
        allowed = slack(p_tail, q_tail, exact)
        assert np.all(tail <= exact + allowed) and np.all(both <= tail + allowed)
        assert np.all(tail >= previous - allowed - previous_allowed)  # a larger k refines the buckets
        previous, previous_allowed = tail, allowed
        for bound, estimate in ((tail, kl_tail_bucket(base, table(lq, v, targets, probe=base.top_ids), extrapolate=True)),
                                (both, kl_both_top_k(base, table(lq, k, targets), extrapolate=True))):
            assert np.all(estimate >= bound)  # it adds p_tail · KL(P | low ‖ Q | low) ≥ 0
        ideal = q_tail >= MASS_RESOLUTION  # below it the estimate reads the tail as MASS_RESOLUTION: lower
        assert np.all(np.abs(exact - tail - p_tail * inner)[ideal] <= allowed[ideal])
        assert np.all((exact - tail)[~ideal] >= p_tail[~ideal] * inner[~ideal] - allowed[~ideal])
    np.testing.assert_allclose(tail, exact, rtol=1e-6, atol=1e-6)  # k = V: nothing merged
    np.testing.assert_allclose(both, exact, rtol=1e-6, atol=1e-6)


def test_extrapolation_recovers_the_tail_of_even_logit_noise() -> None:
    """A candidate whose logits carry the same small noise at every id (what quantization does): the
    low half of the top-k predicts the tail's inner divergence, so the estimate lands near the exact KL
    while the bucket bound misses the tail's share."""
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 2.5, size=(200, 3000))  # flat enough that top-64 holds well under all the mass
    lp, lq = log_softmax(logits), log_softmax(logits + rng.normal(0, 0.1, size=logits.shape))
    targets = np.zeros(200, dtype=np.int64)
    base = table(lp, 64, targets)
    cand = table(lq, 1, targets, probe=base.top_ids)
    exact = kl_full(lp, lq).mean()
    bound, estimate = kl_tail_bucket(base, cand).mean(), kl_tail_bucket(base, cand, extrapolate=True).mean()
    assert base.rest_mass.mean() > 0.3 and bound < 0.7 * exact
    assert estimate == pytest.approx(exact, rel=0.05)


@settings(max_examples=60, deadline=None)
@given(data=st.data(), n=st.integers(1, 5), v=st.integers(2, 12), k=st.integers(1, 12))
def test_identical_models_diverge_by_exactly_zero(data, n, v, k) -> None:
    lp, _, targets = pair(data, n, v)
    k = min(k, v)
    base = table(lp, k, targets)
    for cand in (table(lp, k, targets, probe=base.top_ids), table(lp, k, targets)):
        d = compare(base, cand)
        assert np.all(d.kl == 0) and d.same_top.all()
        assert d.method == ("tail_bucket" if cand.probe_ids is not None else "both_top_k")


def test_mismatched_tables_are_refused() -> None:
    lp = log_softmax(np.random.default_rng(1).normal(size=(4, 10)))
    base = table(lp, 3, np.array([1, 2, 3, 4]))
    other_tokens = table(lp, 3, np.array([1, 2, 3, 5]))
    other_vocab = table(log_softmax(np.random.default_rng(1).normal(size=(4, 11))), 3, np.array([1, 2, 3, 4]))
    with pytest.raises(UserError, match="vocabulary has 11 tokens, the baseline's 10"):
        compare(base, other_vocab)
    with pytest.raises(UserError, match="other tokens"):
        compare(base, other_tokens)
    with pytest.raises(ValueError, match="other ids"):
        kl_tail_bucket(base, table(lp, 3, np.array([1, 2, 3, 4]), probe=base.top_ids[:, ::-1].copy()))


def test_truncate_moves_dropped_mass_into_the_rest() -> None:
    lp = log_softmax(np.random.default_rng(2).normal(size=(5, 20)))
    targets = np.arange(5)
    big = table(lp, 8, targets, probe=table(lp, 8, targets).top_ids)
    small = big.truncate(3)
    fresh = table(lp, 3, targets, probe=big.top_ids[:, :3])
    assert np.array_equal(small.top_ids, fresh.top_ids) and np.array_equal(small.probe_ids, fresh.probe_ids)
    np.testing.assert_allclose(small.rest_mass, fresh.rest_mass, rtol=1e-6)
    np.testing.assert_allclose(small.probe_rest_mass, fresh.probe_rest_mass, rtol=1e-6)
    with pytest.raises(ValueError, match="cannot truncate a top-8 table to k=9"):
        big.truncate(9)


def test_token_ids_are_compared_by_content() -> None:
    a = TokenIds(np.array([[1, 2], [3, 4]], dtype=np.uint16))
    assert a == TokenIds(np.array([[1, 2], [3, 4]], dtype=np.int64)) and hash(a) == hash(TokenIds(a.array))
    assert a != TokenIds(np.array([[1, 2, 3, 4]])) and a.cache_identity()["shape"] == [2, 2]
    with pytest.raises(ValueError, match=r"\[positions, m\]"):
        TokenIds(np.arange(3))


@pytest.fixture(scope="module")
def tiny_pair(tmp_path_factory: pytest.TempPathFactory):
    """A tiny random Qwen2-MoE and a copy whose expert weights drifted (a bad merge)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from harness.backends import open_backend
    from tests.tiny_models import build_tiny_moe

    root = tmp_path_factory.mktemp("kl-tiny")
    base = build_tiny_moe("qwen2_moe", root / "base")
    model = AutoModelForCausalLM.from_pretrained(base).eval()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ".mlp.experts." in name:
                param.add_(0.05 * torch.randn(param.shape, generator=generator))
    model.save_pretrained(root / "drifted")
    AutoTokenizer.from_pretrained(base).save_pretrained(root / "drifted")
    return [open_backend(str(p), device="cpu", dtype="float32", max_length=64) for p in (base, root / "drifted")]


def test_tail_bucket_on_tiny_models_is_the_exact_kl_minus_the_tails_share(tiny_pair) -> None:
    """Real backends: the bound is below the exact KL by exactly p_tail · KL(tails) — on tiny random
    models, whose distributions are nearly flat (top-64 holds ~0.7% of the mass), that is nearly all of
    it; the extrapolated estimate recovers it from the low half of the top-k."""
    import torch

    from harness.backends.base import TopKRequest

    base, cand = tiny_pair
    text = "Mixture-of-experts models route each token to a few experts; pruning them can break rare skills."
    (b,) = base.next_token_topk([TopKRequest(text, k=64, window=32)])
    (c,) = cand.next_token_topk([TopKRequest(text, k=1, window=32, probe=TokenIds(b.top_ids))])
    ids = torch.tensor([base.tok_encode(text)])
    rows = []
    for m in (base, cand):
        with torch.inference_mode():
            logits = torch.cat([m.model(ids[:, s:s + 32][:, :-1]).logits[0] for s in range(0, ids.shape[1], 32) if ids[:, s:s + 32].shape[1] >= 2])
        rows.append(torch.log_softmax(logits.double(), -1).numpy())
    lp, lq = rows
    exact, est = kl_full(lp, lq), compare(b, c, extrapolate=False).kl
    p_tail, q_tail, inner = tails(lp, lq, b.top_ids)
    allowed = slack(p_tail, q_tail, exact)
    assert np.all(est <= exact + allowed) and np.all(np.abs(exact - est - p_tail * inner) <= allowed)
    assert 0.002 < est.mean() / exact.mean() < 0.05  # measured 0.0083: the tail holds nearly all of it
    assert 0.85 < compare(b, c).kl.mean() / exact.mean() < 1.15  # measured 0.944: the extrapolation finds it
    flat = replace(c, probe_ids=None, probe_logprobs=None, probe_rest_mass=None)
    assert compare(b, flat).method == "both_top_k"


def test_package_is_pure(tmp_path: Path) -> None:
    """The divergence code reads tables only; it never imports a framework."""
    import subprocess
    import sys

    code = "import sys, harness.divergence, harness.stats.kld; print(sorted(m for m in ('torch', 'mlx', 'transformers') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=Path(__file__).parents[1])
    assert out.stdout.strip() == "[]"
