"""Each backend's options as a pydantic model: a gate file's ``[baseline] options`` and the CLI's flags
are checked against these before any model opens, so a typo fails in a second.

A new option is one line in its backend's model (the factory then receives it by name). Only the
options a user set are passed on (``model_dump(exclude_unset=True)``): the factories' own defaults
apply otherwise, and ``tests/test_backend_options.py`` checks that the defaults shown here are theirs.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Dtype = Literal["auto", "float32", "bfloat16", "float16"]
Device = Literal["auto", "cpu", "cuda", "mps"]


class BackendOptions(BaseModel):
    """Base of every backend's options: unknown keys are an error, not silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class TransformersOptions(BackendOptions):
    dtype: Dtype = "auto"
    """``auto``: float32 on CPU, the checkpoint's dtype elsewhere."""
    device: Device = "auto"
    trust_pickle: bool = False
    """Allow pickle weights (``*.bin``), which can run code when loaded; only for sources you trust."""
    gguf_file: str | None = None
    """The GGUF file inside a folder holding several."""
    max_length: int | None = Field(None, ge=2)
    """Context length (default: from the config, as lm-eval does)."""
    batch_size: int = Field(8, ge=1)
    max_batch_tokens: int = Field(4096, ge=1)
    add_bos_token: bool | None = None
    """Force BOS on or off for plain prompts (default: the tokenizer's)."""
    share_prefixes: bool = True
    """Run a context shared by several continuations once (results agree to float noise)."""


class OpenAIOptions(BackendOptions):
    base_url: str | None = None
    """``http://HOST:PORT/v1``; without it the model argument must be the URL."""
    model_name: str | None = None
    """The served model id (default: the only one the server lists)."""
    api_key: str | None = None
    concurrency: int = Field(8, ge=1)
    timeout_s: float = Field(300.0, gt=0)
    max_retries: int = Field(5, ge=0)
    seed: int = 0
    logprob_shift: int = 0
    """Correct a server whose prompt log-probs are shifted (see ``OpenAIBackend.check_alignment``)."""


class MlxOptions(BackendOptions):
    max_length: int | None = Field(None, ge=2)
    batch_size: int = Field(8, ge=1)
    add_bos_token: bool | None = None
