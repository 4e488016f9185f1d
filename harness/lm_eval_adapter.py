"""lm-eval's ``LM`` over moegate's Backend protocol, so lm-eval's own task logic runs through moegate.

lm-eval builds the prompts, few-shot contexts, chat templates, filters and metrics; every model call it
makes lands here and becomes a ``LoglikelihoodRequest``, ``RollingRequest`` or ``GenerateRequest`` on the
backend it wraps (normally a ``CachedBackend``, so reruns and baseline/candidate pairs reuse answers).
Generation semantics follow lm-eval's ``HFLM``: ``until`` plus the EOS text are stop strings, the text is
cut at the first one, ``max_gen_toks`` defaults to 256, ``do_sample=False`` means greedy.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from typing import Any

from lm_eval.api.model import LM
from lm_eval.models.utils import handle_stop_sequences, normalize_gen_kwargs

from harness.backends.base import Backend, GenerateRequest, LoglikelihoodRequest, RollingRequest
from harness.errors import UserError

DEFAULT_MAX_GEN_TOKS = 256
"""lm-eval's ``HFLM`` default when a task names no ``max_gen_toks``."""

LOG_LEVEL_VAR = "LMEVAL_LOG_LEVEL"
"""lm-eval's own switch: when set (e.g. ``INFO``), moegate leaves lm-eval's logs and progress bars alone."""

EXPECTED_WARNINGS = (
    "Overwriting default num_fewshot of",  # a suite pins num_fewshot on purpose
    "Custom kwargs can be passed to `--metadata`",  # moegate's tasks read their data paths from metadata
    "specified through cli, these settings will update set parameters",  # pinned max_gen_toks / temperature
)
"""lm-eval warnings about choices moegate makes on purpose: not shown to the user."""

_UNWRAP_ATTRS = ("backend", "inner", "wrapped")
"""Attributes under which wrapping backends (the request cache) keep the backend they wrap."""


def backend_tokenizer(backend: Backend) -> Any | None:
    """The HF tokenizer behind ``backend`` (through cache wrappers), or ``None`` when it has none."""
    seen: set[int] = set()
    current: Any = backend
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        tokenizer = getattr(current, "tokenizer", None)
        if tokenizer is not None:
            return tokenizer
        current = next((getattr(current, a) for a in _UNWRAP_ATTRS if getattr(current, a, None) is not None), None)
    return None


class MoegateLM(LM):
    """An lm-eval model whose every request goes through a moegate ``Backend``.

    Args:
        backend: the backend (usually a ``CachedBackend``) that answers all requests.
        tokenizer: HF tokenizer for chat templates; found on the backend when not given. Only chat
            tasks (``apply_chat_template``) need one.
        max_gen_toks: generation budget when a task's ``generation_kwargs`` names none.
        seed: sampling seed passed on for ``do_sample=True`` requests.
    """

    def __init__(
        self,
        backend: Backend,
        *,
        tokenizer: Any | None = None,
        max_gen_toks: int = DEFAULT_MAX_GEN_TOKS,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.backend = backend
        self.tokenizer = tokenizer if tokenizer is not None else backend_tokenizer(backend)
        self.max_gen_toks = int(max_gen_toks)
        self.seed = int(seed)

    # ------------------------------------------------------------------ the three request kinds
    def loglikelihood(self, requests: list[Any], disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        """``Instance.args == (context, continuation)`` -> ``(sum logprob, is_greedy)``."""
        batch = [LoglikelihoodRequest(context=str(ctx), continuation=str(cont)) for ctx, cont in _args(requests)]
        results = self.backend.loglikelihood(batch) if batch else []
        return [(float(r.logprob), bool(r.is_greedy)) for r in results]

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
        """``Instance.args == (text,)`` -> total logprob of the text (the backend picks the windows)."""
        batch = [RollingRequest(text=str(args[0])) for args in _args(requests)]
        results = self.backend.loglikelihood_rolling(batch) if batch else []
        return [float(r.logprob) for r in results]

    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        """``Instance.args == (context, gen_kwargs)`` -> continuation cut at the first stop string."""
        batch = [self.generate_request(str(ctx), kwargs) for ctx, kwargs in _args(requests)]
        results = self.backend.generate(batch) if batch else []
        return [g.text for g in results]

    def generate_request(self, context: str, gen_kwargs: dict[str, Any]) -> GenerateRequest:
        """Map lm-eval ``generation_kwargs`` to a ``GenerateRequest`` (HFLM's conventions)."""
        if not isinstance(gen_kwargs, dict):
            raise TypeError(f"generation kwargs must be a dict, got {type(gen_kwargs).__name__}")
        kwargs = dict(normalize_gen_kwargs(gen_kwargs, self.max_gen_toks))
        stop = handle_stop_sequences(kwargs.pop("until", None), eos=self._eos_text())
        max_tokens = int(kwargs.pop("max_gen_toks"))
        do_sample = bool(kwargs.pop("do_sample", False))
        temperature = float(kwargs.pop("temperature", 0.0) or 0.0)
        if do_sample and temperature == 0.0:
            temperature = 1.0  # transformers' default when sampling without a temperature
        seed = int(kwargs.pop("seed", self.seed))
        if kwargs:
            raise UserError(
                f"generation setting(s) {sorted(kwargs)} are not supported through moegate's backends",
                "use only until, max_gen_toks, do_sample, temperature and seed in the task's generation_kwargs",
            )
        return GenerateRequest(
            prompt=context,
            max_tokens=max_tokens,
            stop=tuple(s for s in stop if s),
            chat=False,  # lm-eval has already applied the chat template when the task asks for one
            temperature=temperature if do_sample else 0.0,
            seed=seed,
        )

    def _eos_text(self) -> str | None:
        if self.tokenizer is None or getattr(self.tokenizer, "eos_token", None) is None:
            return None
        return str(self.tokenizer.eos_token)

    # ------------------------------------------------------------------ chat templates
    def _require_tokenizer(self) -> Any:
        if self.tokenizer is None or not getattr(self.tokenizer, "chat_template", None):
            raise UserError(
                f"this task applies a chat template but backend '{getattr(self.backend, 'name', '?')}' "
                "exposes no tokenizer with one",
                "use a transformers backend for a model with a chat template, or set apply_chat_template = false",
            )
        return self.tokenizer

    @property
    def tokenizer_name(self) -> str:
        """Names the template in lm-eval's logs and request-cache keys."""
        tokenizer = self._require_tokenizer()
        return str(getattr(tokenizer, "name_or_path", "") or "tokenizer").replace("/", "__")

    def chat_template(self, chat_template: bool | str = False) -> str | None:
        if not chat_template or self.tokenizer is None:
            return None
        return getattr(self.tokenizer, "chat_template", None)

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        """As ``HFLM.apply_chat_template``: render with the tokenizer's template, dropping the system
        turn only when the template rejects one."""
        import jinja2

        tokenizer = self._require_tokenizer()
        kwargs = {"tokenize": False, "add_generation_prompt": add_generation_prompt,
                  "continue_final_message": not add_generation_prompt}
        try:
            return tokenizer.apply_chat_template(chat_history, **kwargs)
        except jinja2.exceptions.TemplateError:
            history = [m for m in chat_history if m["role"] != "system"]
            return tokenizer.apply_chat_template(history, **kwargs)


class _AsMoegateLines(logging.Handler):
    """lm-eval's warnings as one-line ``moegate: lm-eval: ...`` lines on stderr (expected ones dropped)."""

    def emit(self, record: logging.LogRecord) -> None:
        message = " ".join(record.getMessage().split())
        if any(expected in message for expected in EXPECTED_WARNINGS):
            return
        if len(message) > 300:
            message = message[:300] + " ..."
        print(f"moegate: lm-eval {record.levelname.lower()}: {message}", file=sys.stderr, flush=True)


@contextmanager
def quiet_lm_eval() -> Iterator[None]:
    """lm-eval's INFO logs and progress bars (and those of ``datasets``, which it reads with) off for the
    block, its warnings as moegate's own lines; everything restored afterwards.

    With ``LMEVAL_LOG_LEVEL`` set, lm-eval logs at that level in its own format and draws its bars.
    """
    if os.environ.get(LOG_LEVEL_VAR):
        from lm_eval.utils import setup_logging

        setup_logging()  # reads LMEVAL_LOG_LEVEL
        yield
        return
    import datasets
    import lm_eval.api.task

    logger = logging.getLogger("lm_eval")
    level, handlers, propagate = logger.level, logger.handlers[:], logger.propagate
    task_tqdm, bars = lm_eval.api.task.tqdm, datasets.is_progress_bar_enabled()
    logger.setLevel(logging.WARNING)
    logger.handlers[:] = [_AsMoegateLines()]
    logger.propagate = False
    lm_eval.api.task.tqdm = partial(task_tqdm, disable=True)  # the "building contexts" bar has no switch
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        logger.setLevel(level)  # setLevel, not assignment: it clears the child loggers' cached levels
        logger.handlers[:] = handlers
        logger.propagate = propagate
        lm_eval.api.task.tqdm = task_tqdm
        if bars:
            datasets.enable_progress_bars()


def _args(requests: Sequence[Any]) -> list[tuple[Any, ...]]:
    """``Instance.args`` of each request (plain tuples are accepted too, for direct use)."""
    return [tuple(getattr(r, "args", r)) for r in requests]
