"""The greedy decoding loop (harness.backends._generation) against model.generate, row by row.

The tiny random models run in float64 (eager experts: the grouped kernel has no float64): a random model's top two logits can sit within float32 noise
of each other, and the loop's batches (a shared start run once, finished rows dropped) change a row's
float32 logits by that noise, so a float32 near-tie could flip a token without either side being wrong.
In float64 the noise is ~1e-16 and the comparison is exact (benchmarks/generation.py counts float32 flips
on the test bed).
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from harness.backends import open_backend
from harness.backends._generation import GreedyDecoder, StopStrings, finish, plain_greedy
from harness.backends.base import GenerateRequest
from tests.tiny_models import build_tiny_moe

EOS = 2
MAX_NEW = 10


@pytest.fixture(scope="module", params=["qwen2_moe", "qwen3_moe"])
def loaded(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any, Path]:
    path = build_tiny_moe(request.param, tmp_path_factory.mktemp("gen") / request.param)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float64, experts_implementation="eager").eval()
    return model, AutoTokenizer.from_pretrained(path), path


def _reference(model: Any) -> Any:
    @cache
    def greedy(prompt: tuple[int, ...]) -> tuple[int, ...]:
        """model.generate on the prompt alone: MAX_NEW greedy tokens, or fewer ending with EOS."""
        config = GenerationConfig(max_new_tokens=MAX_NEW, do_sample=False, eos_token_id=[EOS], pad_token_id=EOS)
        with torch.inference_mode():
            out = model.generate(torch.tensor([prompt]), generation_config=config)[0, len(prompt):].tolist()
        return tuple(out[: out.index(EOS) + 1] if EOS in out else out)

    return greedy


ids = st.integers(3, 2000)
batches = st.tuples(
    st.lists(ids, max_size=12),  # a start the prompts share (long enough to share from 4 tokens)
    st.lists(st.lists(ids, min_size=1, max_size=6), min_size=1, max_size=5),
)
FUZZ = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@FUZZ
@given(batches, st.integers(1, MAX_NEW), st.integers(0, 2 * MAX_NEW), st.data())
def test_loop_tokens_equal_model_generate_row_by_row(loaded: tuple[Any, Any, Path], batch: tuple[list[int], list[list[int]]],
                                                     max_new: int, eos_pick: int, data: st.DataObject) -> None:
    """Shared start, EOS at different steps (an extra EOS id taken from a row's own greedy tokens) and the
    budget: every row is model.generate's, cut at the first EOS or the budget."""
    model, _, _ = loaded
    reference = _reference(model)
    start, ends = batch
    prompts = [start + end for end in ends]
    refs = [reference(tuple(p)) for p in prompts]
    pool = [t for r in refs for t in r]
    eos_ids = [EOS, pool[eos_pick % len(pool)]]
    decoder = GreedyDecoder(model, "cpu")
    prefix = decoder.prefix(prompts, min_tokens=data.draw(st.integers(1, 6)))
    ours = decoder.decode(prompts, max_new_tokens=max_new, eos_ids=eos_ids, pad=EOS, prefix=prefix)
    for got, ref in zip(ours, refs, strict=True):
        first_eos = next((k for k, t in enumerate(ref) if t in eos_ids), len(ref))
        assert got == list(ref[: min(first_eos + 1, max_new)])


@FUZZ
@given(batches, st.data())
def test_stop_strings_stop_each_row_at_the_token_that_completes_one(loaded: tuple[Any, Any, Path],
                                                                       batch: tuple[list[int], list[list[int]]],
                                                                       data: st.DataObject) -> None:
    """A stop string drawn from one row's greedy text: each row ends at the first token whose decoded text
    contains a stop string, and ``finish`` cuts that text exactly as it cuts model.generate's."""
    model, tokenizer, _ = loaded
    reference = _reference(model)
    start, ends = batch
    prompts = [start + end for end in ends]
    refs = [reference(tuple(p)) for p in prompts]
    text = tokenizer.decode(list(data.draw(st.sampled_from(refs))), skip_special_tokens=True)
    at = data.draw(st.integers(0, max(0, len(text) - 1)))
    stops = (text[at:at + data.draw(st.integers(1, 4))] or "x", "never-generated-zz")
    ours = GreedyDecoder(model, "cpu").decode(prompts, max_new_tokens=MAX_NEW, eos_ids=[EOS], pad=EOS,
                                              stop=StopStrings(tokenizer, stops))
    req = GenerateRequest("", max_tokens=MAX_NEW, stop=stops)
    for got, ref in zip(ours, refs, strict=True):
        hits = [k for k in range(1, len(ref) + 1) if any(s in tokenizer.decode(list(ref[:k]), skip_special_tokens=True) for s in stops)]
        assert got == list(ref[: hits[0]] if hits else ref)
        mine, theirs = finish(tokenizer, got, req, [EOS]), finish(tokenizer, ref, req, [EOS])
        assert (mine.text, mine.finish_reason) == (theirs.text, theirs.finish_reason)


def test_a_generation_config_with_a_processor_goes_to_model_generate(loaded: tuple[Any, Any, Path]) -> None:
    """A repetition penalty in the model's generation config changes greedy tokens: the backend leaves such a
    model to model.generate, which applies it."""
    _, _, path = loaded
    backend = open_backend(str(path), device="cpu", max_length=64)
    assert plain_greedy(backend.model)
    backend.model.generation_config.repetition_penalty = 5.0
    assert not plain_greedy(backend.model)
    (ours,) = backend.generate([GenerateRequest("Once upon a time", max_tokens=8)])
    ids = backend.tokenizer("Once upon a time", return_tensors="pt").input_ids
    with torch.inference_mode():
        ref = backend.model.generate(ids, max_new_tokens=8, do_sample=False)[0, ids.shape[1]:]
    assert ours.text == backend.tokenizer.decode(ref, skip_special_tokens=True)
