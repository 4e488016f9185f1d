"""The transformers backend against references: lm-eval's HFLM, model(labels=...) loss, model.generate."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from harness.backends import BACKENDS, open_backend
from harness.backends.base import (
    Backend,
    GenerateRequest,
    LoglikelihoodRequest,
    RollingRequest,
    TopKBackend,
    TopKRequest,
    rolling_result_of,
)
from harness.backends.transformers import TransformersBackend
from harness.divergence import TokenIds, TopKTable
from harness.errors import UserError
from tests.tiny_models import FAMILIES, build_tiny_moe

LL_REQUESTS = [
    LoglikelihoodRequest("The capital of France is", " Paris"),
    LoglikelihoodRequest("The capital of France is ", "Paris"),  # trailing space moves to the continuation
    LoglikelihoodRequest("", "Hello world"),  # empty context -> prefix token
    LoglikelihoodRequest("Question: 2 + 2 = ?\nAnswer:", " 4"),
    LoglikelihoodRequest("Question: 2 + 2 = ?\nAnswer:", " four, obviously"),
    LoglikelihoodRequest("A long context " * 40, " end"),  # longer than max_length below -> cut from the left
    LoglikelihoodRequest("The capital of France is", " Paris"),  # duplicate
]
SPACES_ONLY = LoglikelihoodRequest("   ", "Paris")
TEXT = (
    "The quick brown fox jumps over the lazy dog. Mixture-of-experts models route each token to a few "
    "experts. Pruning experts can silently break rare capabilities, which is why a gate is needed. "
) * 3


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny")
    return {family: build_tiny_moe(family, root / family) for family in FAMILIES}


@pytest.fixture(scope="module")
def qwen(tiny_dirs: dict[str, Path]) -> TransformersBackend:
    backend = open_backend(str(tiny_dirs["qwen2_moe"]), dtype="float32", device="cpu", max_length=64, batch_size=3)
    assert isinstance(backend, TransformersBackend)
    return backend


def _hflm_loglikelihood(backend: TransformersBackend, requests: list[LoglikelihoodRequest], batch_size: int) -> list:
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(pretrained=backend.model, tokenizer=backend.tokenizer, batch_size=batch_size, max_length=backend.max_length)
    instances = [
        Instance(request_type="loglikelihood", doc={}, arguments=(r.context, r.continuation), idx=i)
        for i, r in enumerate(requests)
    ]
    return lm.loglikelihood(instances, disable_tqdm=True)


def test_protocol_and_registry(qwen: TransformersBackend) -> None:
    assert isinstance(qwen, Backend)
    assert "transformers" in BACKENDS
    assert qwen.name == "transformers" and qwen.device == "cpu" and qwen.max_length == 64


@pytest.mark.parametrize("family", FAMILIES)
def test_loglikelihood_equals_lm_eval_hflm(tiny_dirs: dict[str, Path], family: str) -> None:
    backend = open_backend(str(tiny_dirs[family]), device="cpu", max_length=64, batch_size=4)
    ours = backend.loglikelihood(LL_REQUESTS)
    reference = _hflm_loglikelihood(backend, LL_REQUESTS, batch_size=2)
    for mine, (lp, greedy) in zip(ours, reference, strict=True):
        assert mine.logprob == pytest.approx(lp, abs=1e-4)
        assert mine.is_greedy == greedy
    assert ours[0] == ours[-1]
    (spaces,) = backend.loglikelihood([SPACES_ONLY])  # lm-eval asserts on this; we condition on the prefix token
    (reference_empty,) = backend.loglikelihood([LoglikelihoodRequest("", "   Paris")])
    assert spaces.logprob == pytest.approx(reference_empty.logprob, abs=1e-5)


def test_results_do_not_depend_on_batch_size(tiny_dirs: dict[str, Path]) -> None:
    path = str(tiny_dirs["mixtral"])
    runs = []
    for batch_size in (1, 16):
        backend = open_backend(path, device="cpu", max_length=64, batch_size=batch_size)
        gen = [GenerateRequest(p, max_tokens=6) for p in ("Hi", "Once upon a time there", "A", "The cat sat on")]
        runs.append((backend.loglikelihood(LL_REQUESTS), backend.loglikelihood_rolling([RollingRequest(TEXT, 16)]),
                     backend.generate(gen)))
    base_ll, base_roll, base_gen = runs[0]
    for ll, roll, gen in runs[1:]:
        for a, b in zip(base_ll, ll, strict=True):
            assert a.logprob == pytest.approx(b.logprob, abs=1e-4)
        for a, b in zip(base_roll[0].windows, roll[0].windows, strict=True):
            assert a.tokens == b.tokens and a.logprob == pytest.approx(b.logprob, abs=1e-3)
        assert [g.text for g in gen] == [g.text for g in base_gen]


def test_rolling_equals_model_loss_on_the_same_windows(qwen: TransformersBackend) -> None:
    window = 20
    (result,) = qwen.loglikelihood_rolling([RollingRequest(TEXT, window=window)])
    tokens = qwen.tokenizer.encode(TEXT)
    chunks = [tokens[i:i + window] for i in range(0, len(tokens), window)]
    chunks = [c for c in chunks if len(c) >= 2]
    assert len(result.windows) == len(chunks)
    for score, chunk in zip(result.windows, chunks, strict=True):
        ids = torch.tensor([chunk])
        with torch.inference_mode():
            loss = qwen.model(ids, labels=ids).loss.item()
        assert score.tokens == len(chunk) - 1
        assert math.exp(-score.logprob / score.tokens) == pytest.approx(math.exp(loss), rel=1e-4)
    assert result.tokens == sum(len(c) - 1 for c in chunks)
    (first,) = qwen.loglikelihood_rolling([RollingRequest(TEXT, window=window, windows=2)])  # the first windows only
    assert [w.tokens for w in first.windows] == [w.tokens for w in result.windows[:2]]
    assert [w.logprob for w in first.windows] == pytest.approx([w.logprob for w in result.windows[:2]], rel=1e-6)
    (default,) = qwen.loglikelihood_rolling([RollingRequest(TEXT)])  # window = max_length
    assert max(w.tokens for w in default.windows) == qwen.max_length - 1
    assert qwen.loglikelihood_rolling([RollingRequest("")])[0].windows == ()


def test_greedy_generation_equals_model_generate(qwen: TransformersBackend) -> None:
    prompts = ["Once upon a time", "The", "In 1999, the city council decided"]
    ours = qwen.generate([GenerateRequest(p, max_tokens=7) for p in prompts])
    for prompt, gen in zip(prompts, ours, strict=True):
        ids = qwen.tokenizer(prompt, return_tensors="pt").input_ids
        with torch.inference_mode():
            ref = qwen.model.generate(ids, max_new_tokens=7, do_sample=False)[0, ids.shape[1]:]
        assert gen.text == qwen.tokenizer.decode(ref, skip_special_tokens=True)
        assert gen.tokens == 7 and gen.finish_reason == "length"


def test_stop_strings_cut_and_stop_early(qwen: TransformersBackend) -> None:
    (free,) = qwen.generate([GenerateRequest("Once upon a time", max_tokens=12)])
    assert len(free.text) > 6
    stop = free.text[3:6]
    (cut,) = qwen.generate([GenerateRequest("Once upon a time", max_tokens=12, stop=(stop, "zzzz-never"))])
    assert cut.finish_reason == "stop"
    assert cut.text == free.text[: free.text.find(stop)]
    assert cut.tokens < 12


def test_chat_template_and_sampling_seed(qwen: TransformersBackend) -> None:
    plain, chat = qwen.generate([GenerateRequest("Hi", max_tokens=5), GenerateRequest("Hi", max_tokens=5, chat=True)])
    assert plain.text != chat.text
    a = qwen.generate([GenerateRequest("Hi", max_tokens=8, temperature=1.0, seed=3)])
    b = qwen.generate([GenerateRequest("Hi", max_tokens=8, temperature=1.0, seed=3), GenerateRequest("x", max_tokens=2)])
    assert a[0] == b[0]


def test_fingerprint_stable_across_reload(tiny_dirs: dict[str, Path], qwen: TransformersBackend) -> None:
    again = open_backend(str(tiny_dirs["qwen2_moe"]), dtype="float32", device="cpu", max_length=64, batch_size=3)
    assert again.fingerprint() == qwen.fingerprint()
    other = open_backend(str(tiny_dirs["qwen2_moe"]), dtype="float32", device="cpu", max_length=32)
    assert other.fingerprint() != qwen.fingerprint()  # settings that change outputs change the key
    bigger_batches = open_backend(str(tiny_dirs["qwen2_moe"]), device="cpu", max_length=64, batch_size=16)
    assert bigger_batches.fingerprint() == qwen.fingerprint()  # batch size only changes float noise


@pytest.mark.slow
def test_smollm2_gguf_against_references() -> None:
    from harness.smollm2 import smollm2_gguf

    backend = open_backend(str(smollm2_gguf()), device="cpu", batch_size=4)
    requests = LL_REQUESTS[:5]
    ours = backend.loglikelihood(requests)
    reference = _hflm_loglikelihood(backend, requests, batch_size=1)
    for mine, (lp, greedy) in zip(ours, reference, strict=True):
        assert mine.logprob == pytest.approx(lp, abs=1e-4) and mine.is_greedy == greedy
    assert ours[0].logprob > ours[3].logprob - 20  # a real model, not noise
    (gen,) = backend.generate([GenerateRequest("The capital of France is", max_tokens=8)])
    ids = backend.tokenizer("The capital of France is", return_tensors="pt").input_ids
    with torch.inference_mode():
        ref = backend.model.generate(ids, max_new_tokens=8, do_sample=False)[0, ids.shape[1]:]
    assert gen.text == backend.tokenizer.decode(ref, skip_special_tokens=True)
    assert "Paris" in gen.text
    (chat,) = backend.generate([GenerateRequest("What is the capital of France?", max_tokens=20, chat=True)])
    assert "Paris" in chat.text
    (rolled,) = backend.loglikelihood_rolling([RollingRequest(TEXT, window=64)])
    tokens = backend.tokenizer.encode(TEXT)
    assert rolled.tokens == sum(len(tokens[i:i + 64]) - 1 for i in range(0, len(tokens), 64) if len(tokens[i:i + 64]) > 1)
    first = torch.tensor([tokens[:64]])
    with torch.inference_mode():
        loss = backend.model(first, labels=first).loss.item()
    assert -rolled.windows[0].logprob / 63 == pytest.approx(loss, rel=1e-4)
    assert math.exp(-rolled.logprob / rolled.tokens) < 100  # a real model on English text


@pytest.mark.parametrize("family", FAMILIES)
def test_route_trace_equals_router_logits_top_k(tiny_dirs: dict[str, Path], family: str) -> None:
    from harness.backends.base import RouteTracingBackend
    from harness.checkpoint.layout import moe_layout_from_config

    backend = open_backend(str(tiny_dirs[family]), device="cpu", max_length=64)
    assert isinstance(backend, RouteTracingBackend)
    text = "Experts route every token, even this one."
    (trace,) = backend.route_trace([text])
    layout = moe_layout_from_config(backend.model.config.to_dict())
    assert layout is not None and list(trace.layers) == layout.moe_layers and trace.num_experts == 4
    ids = torch.tensor([backend.tok_encode(text)])
    with torch.inference_mode():
        router_logits = backend.model(ids, output_router_logits=True).router_logits
    for layer_ids, layer_w, logits in zip(trace.expert_ids, trace.weights, router_logits, strict=True):
        probs = logits.float().softmax(-1)
        top_w, top_i = probs.topk(layout.top_k, dim=-1)
        if layout.norm_topk_prob:
            top_w = top_w / top_w.sum(-1, keepdim=True)
        assert len(layer_ids) == ids.shape[1] == len(trace.tokens)
        for tok_ids, tok_w, ref_i, ref_w in zip(layer_ids, layer_w, top_i.tolist(), top_w.tolist(), strict=True):
            assert dict(zip(tok_ids, tok_w, strict=True)) == pytest.approx(dict(zip(ref_i, ref_w, strict=True)), abs=1e-5)


# Next-token top-k tables (the fourth request kind) against log_softmax(model(ids).logits).
def reference(backend: TransformersBackend, sequences: list[list[int]], scored: list[int]) -> torch.Tensor:
    """Float64 log-softmax rows at the last ``n`` positions' predictions of each sequence, one forward each."""
    rows = []
    for seq, n in zip(sequences, scored, strict=True):
        with torch.inference_mode():
            logits = backend.model(torch.tensor([seq[:-1]])).logits[0]
        rows.append(torch.log_softmax(logits.double(), dim=-1)[len(seq) - 1 - n:])
    return torch.cat(rows)


def assert_table_matches(table: TopKTable, ref: torch.Tensor, targets: list[int], k: int) -> None:
    assert table.positions == ref.shape[0] and table.vocab == ref.shape[1] and table.k == k
    assert table.targets.tolist() == targets
    at = torch.tensor(table.targets.astype(np.int64))[:, None]
    np.testing.assert_allclose(table.target_logprobs, ref.gather(1, at)[:, 0].numpy(), atol=1e-5)
    top = ref.topk(k, dim=-1)
    assert np.array_equal(table.top_ids, top.indices.numpy())
    np.testing.assert_allclose(table.top_logprobs, top.values.numpy(), atol=1e-5)
    np.testing.assert_allclose(table.rest_mass, 1 - top.values.exp().sum(-1).numpy(), atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_topk_text_form_equals_log_softmax_on_the_rolling_windows(tiny_dirs: dict[str, Path], family: str) -> None:
    backend = open_backend(str(tiny_dirs[family]), dtype="float32", device="cpu", max_length=64, batch_size=3)
    assert isinstance(backend, TopKBackend)
    (table,) = backend.next_token_topk([TopKRequest(TEXT, k=8, window=20)])
    tokens = backend.tok_encode(TEXT)
    chunks = [tokens[s:s + 20] for s in range(0, len(tokens), 20) if len(tokens[s:s + 20]) >= 2]
    assert_table_matches(table, reference(backend, chunks, [len(c) - 1 for c in chunks]), [t for c in chunks for t in c[1:]], 8)
    (rolling,) = backend.loglikelihood_rolling([RollingRequest(TEXT, window=20)])  # the perplexity suite's windows
    assert table.window_sizes == tuple(w.tokens for w in rolling.windows)
    derived = rolling_result_of(table)  # what the request cache stores as this rolling request's result
    assert [w.tokens for w in derived.windows] == [w.tokens for w in rolling.windows]
    np.testing.assert_allclose([w.logprob for w in derived.windows], [w.logprob for w in rolling.windows], atol=1e-4)


def test_topk_continuation_form_probes_and_limits(qwen: TransformersBackend) -> None:
    backend = qwen
    prompt, generated = "What is the capital of France?", " The capital of France is Paris."
    plain, chat = backend.next_token_topk([TopKRequest(generated, k=4, prompt=prompt), TopKRequest(generated, k=4, prompt=prompt, chat=True)])
    cont = backend.tok_encode(generated, add_special_tokens=False)
    for table, context in ((plain, backend.tok_encode(prompt)), (chat, backend._prompt_ids(GenerateRequest(prompt, chat=True)))):
        assert table.window_sizes == (len(cont),)
        assert_table_matches(table, reference(backend, [context + cont], [len(cont)]), cont, 4)
    assert not np.array_equal(plain.top_logprobs, chat.top_logprobs)
    # probing: this model's log-probs at any given ids (here another table's top-8, reversed)
    (wide,) = backend.next_token_topk([TopKRequest(generated, k=8, prompt=prompt)])
    ids = wide.top_ids[:, ::-1]
    (probed,) = backend.next_token_topk([TopKRequest(generated, k=1, prompt=prompt, probe=TokenIds(ids))])
    assert np.array_equal(probed.probe_ids, ids)
    np.testing.assert_allclose(probed.probe_logprobs, wide.top_logprobs[:, ::-1], atol=1e-6)
    np.testing.assert_allclose(probed.probe_rest_mass, wide.rest_mass, atol=1e-6)
    (first,) = backend.next_token_topk([TopKRequest(TEXT, k=2, window=20, windows=2)])
    assert first.window_sizes == (19, 19)
    assert backend.next_token_topk([TopKRequest("", k=2), TopKRequest("", k=2, prompt="Hi")])[1].positions == 0
    with pytest.raises(UserError, match="probe ids cover 3 positions"):
        backend.next_token_topk([TopKRequest(generated, k=1, prompt=prompt, probe=TokenIds(ids[:3]))])
    with pytest.raises(UserError, match="top-k width 0"):
        backend.next_token_topk([TopKRequest(TEXT, k=0)])
    with pytest.raises(UserError, match="rolling window 1 is too small"):
        backend.next_token_topk([TopKRequest(TEXT, k=1, window=1)])


def test_batches_do_not_change_topk_tables(tiny_dirs: dict[str, Path]) -> None:
    path = str(tiny_dirs["mixtral"])
    requests = [TopKRequest(TEXT, k=5, window=16), TopKRequest(" Paris.", k=5, prompt="The capital of France is"),
                TopKRequest(TEXT[:90], k=3, window=30)]
    one, many = (open_backend(path, device="cpu", max_length=64, batch_size=b).next_token_topk(requests) for b in (1, 16))
    for a, b in zip(one, many, strict=True):
        assert np.array_equal(a.top_ids, b.top_ids) and a.window_sizes == b.window_sizes
        np.testing.assert_allclose(a.top_logprobs, b.top_logprobs, atol=1e-5)
