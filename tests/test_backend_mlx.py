"""mlx-lm backend (mlx[cpu] here) agrees with the transformers backend on the same checkpoint."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from harness.backends import open_backend
from harness.backends.base import GenerateRequest, LoglikelihoodRequest, RollingRequest, TopKRequest
from harness.divergence import TokenIds
from harness.errors import UserError
from tests.tiny_models import build_tiny_moe

pytest.importorskip("mlx_lm")
pytestmark = pytest.mark.mlx

PAIRS = [LoglikelihoodRequest("The capital of France is", " Paris"),
         LoglikelihoodRequest("The capital of France is ", "Paris."),
         LoglikelihoodRequest("", "Hello"),
         LoglikelihoodRequest("2 + 2 =", " 4")]
TEXTS = ["The quick brown fox jumps over the lazy dog.", "Paris is the capital of France, and Rome of Italy."]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_moe("qwen2_moe", tmp_path_factory.mktemp("tiny") / "qwen2_moe", seed=3)


@pytest.fixture(scope="module")
def pair(tiny: Path):
    return open_backend(str(tiny), kind="mlx", batch_size=3), open_backend(str(tiny), dtype="float32", device="cpu")


def test_scores_agree_with_transformers(pair) -> None:
    mlx, ref = pair
    for g, w in zip(mlx.loglikelihood(PAIRS), ref.loglikelihood(PAIRS), strict=True):
        assert g.logprob == pytest.approx(w.logprob, rel=1e-3, abs=1e-4)
        assert g.is_greedy == w.is_greedy
    reqs = [RollingRequest(TEXTS[0]), RollingRequest(TEXTS[1], window=5)]
    for g, w in zip(mlx.loglikelihood_rolling(reqs), ref.loglikelihood_rolling(reqs), strict=True):
        assert [x.tokens for x in g.windows] == [x.tokens for x in w.windows]
        assert g.logprob == pytest.approx(w.logprob, rel=1e-3)


def test_topk_tables_agree_with_transformers(pair) -> None:
    mlx, ref = pair
    reqs = [TopKRequest(TEXTS[1], k=6, window=6), TopKRequest(" Paris.", k=6, prompt="The capital of France is", chat=True)]
    for g, w in zip(mlx.next_token_topk(reqs), ref.next_token_topk(reqs), strict=True):
        assert g.window_sizes == w.window_sizes and g.vocab == w.vocab and (g.targets == w.targets).all()
        assert (g.top_ids == w.top_ids).all()
        np.testing.assert_allclose(g.top_logprobs, w.top_logprobs, atol=1e-4)
        np.testing.assert_allclose(g.target_logprobs, w.target_logprobs, atol=1e-4)
    base = ref.next_token_topk(reqs[:1])[0]
    (probed,) = mlx.next_token_topk([TopKRequest(TEXTS[1], k=1, window=6, probe=TokenIds(base.top_ids))])
    np.testing.assert_allclose(probed.probe_logprobs, base.top_logprobs, atol=1e-4)
    np.testing.assert_allclose(probed.probe_rest_mass, base.rest_mass, atol=1e-4)


def test_greedy_generation_agrees(pair) -> None:
    mlx, ref = pair
    reqs = [GenerateRequest("Once upon a time", max_tokens=6), GenerateRequest("Hi", max_tokens=5, chat=True),
            GenerateRequest("Once upon a time", max_tokens=12, stop=(" ",))]
    got, want = mlx.generate(reqs), ref.generate(reqs)
    assert [g.text for g in got] == [w.text for w in want]
    assert got[0].tokens == 6 and got[0].finish_reason == "length"
    assert " " not in got[2].text


def test_route_trace_matches_transformers_router(pair) -> None:
    mlx, ref = pair
    (got,), (want,) = mlx.route_trace(TEXTS[:1]), ref.route_trace(TEXTS[:1])
    assert got.layers == want.layers and got.num_experts == want.num_experts == 4
    assert got.tokens == want.tokens
    for lg, lw, wg, ww in zip(got.expert_ids, want.expert_ids, got.weights, want.weights, strict=True):
        for tg, tw, xg, xw in zip(lg, lw, wg, ww, strict=True):
            g, w = sorted(zip(tg, xg, strict=True)), sorted(zip(tw, xw, strict=True))
            assert [e for e, _ in g] == [e for e, _ in w]
            assert [x for _, x in g] == pytest.approx([x for _, x in w], abs=1e-4)


def test_fingerprint_and_bad_inputs(pair, tiny: Path, tmp_path: Path) -> None:
    mlx, ref = pair
    assert mlx.fingerprint() == mlx.fingerprint() != ref.fingerprint()
    with pytest.raises(UserError, match="not a model folder"):
        open_backend(str(tmp_path), kind="mlx")
    with pytest.raises(UserError, match="unknown mlx backend option"):
        open_backend(str(tiny), kind="mlx", dtype="float16")


@pytest.mark.slow
@pytest.mark.testbed
def test_testbed_agrees_with_transformers() -> None:
    from harness.testbed import ensure_testbed

    path = str(ensure_testbed())
    mlx, ref = open_backend(path, kind="mlx"), open_backend(path, dtype="float32", device="cpu")
    for g, w in zip(mlx.loglikelihood(PAIRS), ref.loglikelihood(PAIRS), strict=True):
        assert g.logprob == pytest.approx(w.logprob, rel=1e-3, abs=1e-3)
    req = [GenerateRequest("The capital of France is", max_tokens=8)]
    assert mlx.generate(req)[0].text == ref.generate(req)[0].text
    (got,), (want,) = mlx.route_trace(TEXTS[:1]), ref.route_trace(TEXTS[:1])
    agree = sum(sorted(a) == sorted(b) for lg, lw in zip(got.expert_ids, want.expert_ids, strict=True)
                for a, b in zip(lg, lw, strict=True))
    total = sum(len(layer) for layer in want.expert_ids)
    assert agree >= 0.98 * total  # near-ties in the router may flip under float noise
