"""MoegateLM: lm-eval requests become moegate backend requests with HFLM's conventions."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import pytest
from lm_eval.api.instance import Instance

from harness.backends.base import (
    GenerateRequest,
    Generation,
    Loglikelihood,
    LoglikelihoodRequest,
    RollingRequest,
    RollingResult,
    WindowScore,
)
from harness.errors import UserError
from harness.lm_eval_adapter import (
    DEFAULT_MAX_GEN_TOKS,
    MoegateLM,
    backend_tokenizer,
    quiet_lm_eval,
)

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


class RecordingBackend:
    """A real (if simple) backend: scores by text length and echoes, and keeps every request it saw."""

    name = "recording"

    def __init__(self, tokenizer: object | None = None) -> None:
        self.tokenizer = tokenizer
        self.seen: list[object] = []

    def fingerprint(self) -> str:
        return "recording"

    def loglikelihood(self, requests: Sequence[LoglikelihoodRequest]) -> list[Loglikelihood]:
        self.seen.extend(requests)
        return [Loglikelihood(logprob=-float(len(r.continuation)), is_greedy=len(r.continuation) < 3) for r in requests]

    def loglikelihood_rolling(self, requests: Sequence[RollingRequest]) -> list[RollingResult]:
        self.seen.extend(requests)
        return [RollingResult(windows=(WindowScore(-1.0, 2), WindowScore(-0.5, len(r.text)))) for r in requests]

    def generate(self, requests: Sequence[GenerateRequest]) -> list[Generation]:
        self.seen.extend(requests)
        return [Generation(text=f"echo:{r.prompt[-5:]}", tokens=3, finish_reason="stop") for r in requests]


class CacheLike:
    """Wraps a backend the way harness.cache.CachedBackend does (``.backend``)."""

    name = "cache"

    def __init__(self, backend: RecordingBackend) -> None:
        self.backend = backend


@pytest.fixture(scope="module")
def tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["<unk>", "<|im_end|>", "<|im_start|>", "hello", "world"])}
    raw = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="<|im_end|>", unk_token="<unk>")
    tok.chat_template = CHATML
    tok.name_or_path = "tiny/chatml"
    return tok


def _inst(kind: str, args: tuple, idx: int = 0) -> Instance:
    return Instance(request_type=kind, doc={}, arguments=args, idx=idx)


def test_loglikelihood_and_rolling_map_to_backend_requests() -> None:
    backend = RecordingBackend()
    lm = MoegateLM(backend)
    out = lm.loglikelihood([_inst("loglikelihood", ("Question: x\nAnswer:", " yes")), _inst("loglikelihood", ("Q", " no way"))])
    assert out == [(-4.0, False), (-7.0, False)]
    assert backend.seen[:2] == [LoglikelihoodRequest("Question: x\nAnswer:", " yes"), LoglikelihoodRequest("Q", " no way")]
    assert lm.loglikelihood_rolling([_inst("loglikelihood_rolling", ("abcd",))]) == [-1.5]
    assert backend.seen[2] == RollingRequest(text="abcd")
    assert lm.loglikelihood([]) == [] and lm.generate_until([]) == []


def test_generate_until_follows_hflm_conventions(tokenizer) -> None:
    backend = RecordingBackend(tokenizer)
    lm = MoegateLM(backend, seed=7)
    texts = lm.generate_until([
        _inst("generate_until", ("ctx one", {"until": ["Question:", "</s>"], "do_sample": False, "temperature": 0.0})),
        _inst("generate_until", ("ctx two", {"until": "\n\n", "max_gen_toks": 12, "do_sample": True, "temperature": 0.7})),
        _inst("generate_until", ("ctx three", {"do_sample": True})),
    ])
    assert texts == ["echo:x one", "echo:x two", "echo:three"]
    greedy, sampled, default_t = backend.seen
    assert greedy == GenerateRequest("ctx one", DEFAULT_MAX_GEN_TOKS, ("Question:", "</s>", "<|im_end|>"), False, 0.0, 7)
    assert sampled == GenerateRequest("ctx two", 12, ("\n\n", "<|im_end|>"), False, 0.7, 7)
    assert default_t.temperature == 1.0 and default_t.stop == ("<|im_end|>",)


def test_unsupported_generation_setting_is_a_user_error() -> None:
    lm = MoegateLM(RecordingBackend())
    with pytest.raises(UserError, match="top_p"):
        lm.generate_request("ctx", {"until": [], "do_sample": True, "top_p": 0.9})


def test_chat_template_is_the_tokenizers_through_a_cache_wrapper(tokenizer) -> None:
    wrapped = CacheLike(RecordingBackend(tokenizer))
    assert backend_tokenizer(wrapped) is tokenizer
    lm = MoegateLM(wrapped)
    history = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"}]
    rendered = lm.apply_chat_template(history)
    assert rendered == tokenizer.apply_chat_template(history, tokenize=False, add_generation_prompt=True)
    assert rendered.endswith("<|im_start|>assistant\n")
    prefilled = lm.apply_chat_template([*history, {"role": "assistant", "content": "world"}], add_generation_prompt=False)
    assert prefilled.endswith("world")
    assert lm.tokenizer_name == "tiny__chatml"
    assert lm.chat_template(True) == CHATML and lm.chat_template(False) is None


def test_chat_without_a_tokenizer_is_a_user_error() -> None:
    lm = MoegateLM(RecordingBackend())
    with pytest.raises(UserError, match="chat template"):
        lm.apply_chat_template([{"role": "user", "content": "hi"}])


@pytest.mark.usefixtures("loud_lm_eval")
def test_quiet_lm_eval_keeps_warnings_drops_info_and_bars_then_restores(capfd: pytest.CaptureFixture[str]) -> None:
    """Where lm-eval's logging prints INFO (as its CLI sets it up), the block shows only unexpected
    warnings, as moegate lines; afterwards lm-eval's handler, level and bars are back."""
    import lm_eval.api.task

    task_logger = logging.getLogger("lm_eval.api.task")
    with quiet_lm_eval():
        task_logger.info("Building contexts for t on rank 0...")
        task_logger.warning("Overwriting default num_fewshot of t from None to 0")
        task_logger.warning("[Task: t] Label index was not in within range\nSample: x")
        list(lm_eval.api.task.tqdm(range(3)))
    assert capfd.readouterr().err == "moegate: lm-eval warning: [Task: t] Label index was not in within range Sample: x\n"
    task_logger.info("after the block")
    list(lm_eval.api.task.tqdm(range(3)))
    err = capfd.readouterr().err
    assert "after the block" in err and "3/3" in err
