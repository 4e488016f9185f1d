"""harness.divergence: properties of the per-token divergences, and teacher forcing on tiny MoE models."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from harness.divergence import DivergenceScore, teacher_forced_divergence, token_divergence

LN2 = math.log(2)


def logits(t: int, v: int):
    return arrays(np.float64, (t, v), elements=st.floats(-30, 30, allow_nan=False, allow_infinity=False))


shapes = st.tuples(st.integers(1, 6), st.integers(2, 12))


@settings(max_examples=100, deadline=None)
@given(data=st.data(), shape=shapes)
def test_kl_nonnegative_jsd_bounded_and_symmetric(data, shape) -> None:
    p = data.draw(logits(*shape))
    q = data.draw(logits(*shape))
    pq, qp = token_divergence(p, q), token_divergence(q, p)
    assert pq.mean_kl >= 0 and qp.mean_kl >= 0
    assert 0 <= pq.mean_jsd <= LN2 + 1e-12
    assert pq.mean_jsd == pytest.approx(qp.mean_jsd, abs=1e-9)
    assert 0 <= pq.top1_agreement <= 1 and pq.tokens == shape[0]


@settings(max_examples=60, deadline=None)
@given(data=st.data(), shape=shapes)
def test_identical_distributions_have_zero_divergence(data, shape) -> None:
    p = torch.log_softmax(torch.tensor(data.draw(logits(*shape))), dim=-1)
    score = token_divergence(p, p.clone())
    assert score.mean_kl == pytest.approx(0, abs=1e-12) and score.mean_jsd == pytest.approx(0, abs=1e-12)
    assert score.top1_agreement == 1.0


def test_known_values() -> None:
    p = np.log([[0.5, 0.5]])
    q = np.log([[0.9, 0.1]])
    expected_kl = 0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(0.5 / 0.1)
    assert token_divergence(p, q).mean_kl == pytest.approx(expected_kl)
    disjoint = token_divergence(np.log([[1.0, 1e-300]]), np.log([[1e-300, 1.0]]))
    assert disjoint.mean_jsd == pytest.approx(LN2, rel=1e-6) and disjoint.top1_agreement == 0.0


def test_shape_mismatch_names_both_shapes() -> None:
    with pytest.raises(ValueError, match=r"\(2, 5\).*\(2, 6\)"):
        token_divergence(np.zeros((2, 5)), np.zeros((2, 6)))
    with pytest.raises(ValueError, match="tokens, vocab"):
        token_divergence(np.zeros(5), np.zeros(5))
    assert token_divergence(np.zeros((0, 4)), np.zeros((0, 4))) == DivergenceScore(0.0, 0.0, 1.0, 0)


@pytest.fixture(scope="module")
def tiny_pair(tmp_path_factory):
    """A tiny random Qwen2-MoE, an identical copy, and a copy with one expert perturbed."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tests.tiny_models import build_tiny_moe

    path = build_tiny_moe("qwen2_moe", tmp_path_factory.mktemp("qwen2moe"))
    tokenizer = AutoTokenizer.from_pretrained(path)
    base = AutoModelForCausalLM.from_pretrained(path).eval()
    same = AutoModelForCausalLM.from_pretrained(path).eval()
    perturbed = AutoModelForCausalLM.from_pretrained(path).eval()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in perturbed.named_parameters():
            if ".mlp.experts." in name:  # an expert "merged" badly: its weights drift
                param.add_(0.5 * torch.randn(param.shape, generator=generator))
    return base, same, perturbed, tokenizer


def test_teacher_forced_identical_and_perturbed(tiny_pair) -> None:
    base, same, perturbed, tokenizer = tiny_pair
    prompts = ["The capital of France is", "def add(a, b):"]
    continuations = [" Paris, a city on the Seine.", [tokenizer.eos_token_id or 0, 5, 17, 42]]
    identical = teacher_forced_divergence(base, same, tokenizer, prompts, continuations)
    assert [s.tokens for s in identical] == [len(tokenizer(" Paris, a city on the Seine.")["input_ids"]), 4]
    for score in identical:
        assert score.mean_kl == pytest.approx(0, abs=1e-9) and score.top1_agreement == 1.0
    drifted = teacher_forced_divergence(base, perturbed, tokenizer, prompts, continuations)
    assert all(s.mean_kl > 1e-4 and 0 < s.mean_jsd <= LN2 for s in drifted)


def test_teacher_forced_chat_and_empty(tiny_pair) -> None:
    base, same, perturbed, tokenizer = tiny_pair
    if tokenizer.chat_template:
        chat = teacher_forced_divergence(base, perturbed, tokenizer, ["Hi"], ["Hello there!"], chat=True)
        assert chat[0].tokens > 0 and chat[0].mean_kl > 0
    empty = teacher_forced_divergence(base, same, tokenizer, ["x"], [""])
    assert empty == [DivergenceScore(0.0, 0.0, 1.0, 0)]
    with pytest.raises(ValueError, match="2 prompts but 1 continuations"):
        teacher_forced_divergence(base, same, tokenizer, ["a", "b"], ["c"])


@pytest.mark.slow
def test_real_smollm2_greedy_continuation_through_open_backend() -> None:
    """SmolLM2 (via helper A's backend) against itself and against a copy with one MLP layer perturbed."""
    import copy

    from harness.backends import open_backend
    from harness.smollm2 import smollm2_gguf

    backend = open_backend(str(smollm2_gguf()))
    model, tokenizer = backend.model, backend.tokenizer
    prompt = "What is the capital of France?"
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
    )
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        out = model.generate(ids, max_new_tokens=16, do_sample=False)
    continuation = out[0, ids.shape[1] :].tolist()
    same = teacher_forced_divergence(model, model, tokenizer, [prompt], [continuation], chat=True)[0]
    assert same.tokens == len(continuation) and same.mean_kl == pytest.approx(0, abs=1e-9)
    assert same.top1_agreement == 1.0
    drifted_model = copy.deepcopy(model)
    with torch.no_grad():
        for param in drifted_model.model.layers[10].mlp.parameters():
            param.mul_(1.5)
    drifted = teacher_forced_divergence(model, drifted_model, tokenizer, [prompt], [continuation], chat=True)[
        0
    ]
    assert drifted.mean_kl > 1e-3 and drifted.mean_jsd > 0
