"""The fourth request kind (next-token top-k tables) against direct ``log_softmax(model(ids).logits)``."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from harness.backends import open_backend
from harness.backends.base import GenerateRequest, RollingRequest, TopKBackend, TopKRequest
from harness.backends.transformers import TransformersBackend
from harness.cache import CachedBackend, RequestCache
from harness.divergence import TokenIds, TopKTable, encode_topk
from harness.errors import UserError
from tests.tiny_models import FAMILIES, build_tiny_moe

TEXT = (
    "The quick brown fox jumps over the lazy dog. Mixture-of-experts models route each token to a few "
    "experts. Pruning experts can silently break rare capabilities, which is why a gate is needed. "
) * 2


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny-topk")
    return {family: build_tiny_moe(family, root / family) for family in FAMILIES}


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
def test_text_form_equals_log_softmax_on_the_rolling_windows(tiny_dirs: dict[str, Path], family: str) -> None:
    backend = open_backend(str(tiny_dirs[family]), dtype="float32", device="cpu", max_length=64, batch_size=3)
    assert isinstance(backend, TopKBackend)
    (table,) = backend.next_token_topk([TopKRequest(TEXT, k=8, window=20)])
    tokens = backend.tok_encode(TEXT)
    chunks = [tokens[s:s + 20] for s in range(0, len(tokens), 20) if len(tokens[s:s + 20]) >= 2]
    assert_table_matches(table, reference(backend, chunks, [len(c) - 1 for c in chunks]), [t for c in chunks for t in c[1:]], 8)
    (rolling,) = backend.loglikelihood_rolling([RollingRequest(TEXT, window=20)])  # the perplexity suite's windows
    assert table.window_sizes == tuple(w.tokens for w in rolling.windows)
    sums = [float(table.target_logprobs[s].astype(np.float64).sum()) for s in table.window_slices()]
    np.testing.assert_allclose(sums, [w.logprob for w in rolling.windows], atol=1e-4)


def test_continuation_form_probes_and_limits(tiny_dirs: dict[str, Path]) -> None:
    backend = open_backend(str(tiny_dirs["qwen2_moe"]), dtype="float32", device="cpu", max_length=64, batch_size=2)
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


def test_batches_do_not_change_tables(tiny_dirs: dict[str, Path]) -> None:
    path = str(tiny_dirs["mixtral"])
    requests = [TopKRequest(TEXT, k=5, window=16), TopKRequest(" Paris.", k=5, prompt="The capital of France is"),
                TopKRequest(TEXT[:90], k=3, window=30)]
    one, many = (open_backend(path, device="cpu", max_length=64, batch_size=b).next_token_topk(requests) for b in (1, 16))
    for a, b in zip(one, many, strict=True):
        assert np.array_equal(a.top_ids, b.top_ids) and a.window_sizes == b.window_sizes
        np.testing.assert_allclose(a.top_logprobs, b.top_logprobs, atol=1e-5)


def test_request_cache_keeps_compact_tables(tmp_path: Path, tiny_dirs: dict[str, Path]) -> None:
    backend = open_backend(str(tiny_dirs["qwen3_moe"]), device="cpu", max_length=64)
    cache = RequestCache(tmp_path / "c.sqlite")
    (base,) = backend.next_token_topk([TopKRequest(TEXT, k=16, window=32)])
    requests = [TopKRequest(TEXT, k=2, window=32, probe=TokenIds(base.top_ids)),
                TopKRequest(TEXT, k=2, window=32, probe=TokenIds(base.top_ids[:, :8])), TopKRequest(TEXT, k=2, window=32)]
    first = CachedBackend(backend, cache).next_token_topk(requests)
    again = CachedBackend(backend, cache)
    second = again.next_token_topk(requests)
    assert again.stats.model_calls == 0 and again.stats.hits == 3 and len(cache) == 3  # each probe its own entry
    assert all(a == b for a, b in zip(first, second, strict=True)) and second[1].probe_ids.shape[1] == 8
    stored = [v for (v,) in cache._conn.execute("SELECT value FROM results WHERE kind = 'next_token_topk'")]
    compact = [json.dumps({"topk": base64.b64encode(encode_topk(t)).decode()}) for t in first]
    assert sorted(map(len, stored)) == sorted(map(len, compact))  # the binary form, base64 in the JSON column

    class NoTopK:
        name = "toy"

        def fingerprint(self) -> str:
            return "toy"

    with pytest.raises(UserError, match="the toy backend cannot return next-token top-k tables"):
        CachedBackend(NoTopK(), cache).next_token_topk(requests)  # type: ignore[arg-type]
