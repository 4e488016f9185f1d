"""Load a resolved checkpoint into transformers: the one place moegate builds a model from files.

Loader errors become one ``UserError`` line; ``auto`` device and dtype follow lm-eval's choices on CPU.
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from harness.checkpoint._files import ModelSource, read_config
from harness.errors import UserError

DTYPES = ("auto", "float32", "bfloat16", "float16")
DEVICES = ("auto", "cpu", "cuda", "mps")


def resolve_device(device: str) -> str:
    import torch

    if device not in DEVICES:
        raise UserError(f"unknown device '{device}'", f"use one of {', '.join(DEVICES)}")
    if device == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("device 'cuda' requested but torch sees no CUDA GPU", "use --device cpu or auto")
    if device == "mps" and not torch.backends.mps.is_available():
        raise UserError("device 'mps' requested but it is not available", "use --device cpu or auto")
    return device


def resolve_dtype(dtype: str, device: str, config: dict[str, Any] | None = None) -> Any:
    """``auto`` is float32 on CPU (bf16 matmuls are slow there) and the checkpoint's dtype elsewhere."""
    import torch

    if dtype not in DTYPES:
        raise UserError(f"unknown dtype '{dtype}'", f"use one of {', '.join(DTYPES)}")
    if dtype != "auto":
        return getattr(torch, dtype)
    if device == "cpu":
        return torch.float32
    stored = (config or {}).get("torch_dtype") or (config or {}).get("dtype") or "bfloat16"
    return getattr(torch, str(stored).removeprefix("torch."), torch.bfloat16)


@contextmanager
def _quiet_transformers() -> Iterator[None]:
    """transformers prints multi-line load reports; failures become one ``UserError`` line instead."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()  # moegate shows its own progress; a per-tensor bar is noise
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def _tokenizer_problem(source: ModelSource, exc: BaseException) -> str:
    """Name the tokenizer file that does not parse (tokenizers' own message names none)."""
    folder = Path(source.load_dir)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        path = folder / name
        if source.kind != "gguf" and path.is_file():
            try:
                json.loads(path.read_text(encoding="utf-8"))
            except (UnicodeDecodeError, ValueError) as bad:
                return f"{path} is not valid JSON ({bad})"
    text = str(exc.__cause__ or exc).strip()
    first = text.splitlines()[0] if text else type(exc).__name__
    if source.kind != "gguf" and (folder / "tokenizer.json").is_file():
        return f"{folder / 'tokenizer.json'} cannot be read ({first})"
    return first


def load_model_and_tokenizer(source: ModelSource, *, dtype: str = "auto", device: str = "auto") -> tuple[Any, Any, str]:
    """Load (model, tokenizer, device) in eval mode; loader errors become one-line ``UserError``s."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = resolve_device(device)
    config = read_config(source.path) if source.kind == "hf_dir" and source.path else None
    torch_dtype = resolve_dtype(dtype, device, config)
    kwargs: dict[str, Any] = {}
    if source.gguf_file:
        kwargs["gguf_file"] = source.gguf_file
    model_kwargs = dict(kwargs, dtype=torch_dtype)
    if source.weight_format == "pickle":
        model_kwargs["use_safetensors"] = False
    model_kwargs["output_loading_info"] = True
    # pickle.UnpicklingError: torch's weights-only loader refusing a pickle that would run code
    errors: tuple[type[BaseException], ...] = (OSError, ValueError, KeyError, RuntimeError, pickle.UnpicklingError, EOFError)
    try:
        from huggingface_hub.errors import StrictDataclassError

        errors = (*errors, StrictDataclassError)
    except ImportError:  # older huggingface_hub: config validation raises ValueError
        pass
    try:
        with _quiet_transformers():
            tokenizer = AutoTokenizer.from_pretrained(source.load_dir, **kwargs)
    except Exception as exc:  # noqa: BLE001 — tokenizers raises a bare Exception for a malformed tokenizer.json
        raise UserError(f"could not load the tokenizer of {source.spec}: {_tokenizer_problem(source, exc)}",
                        "restore the tokenizer files from the original checkpoint") from None
    try:
        with _quiet_transformers():
            model, info = AutoModelForCausalLM.from_pretrained(source.load_dir, **model_kwargs)
    except pickle.UnpicklingError:
        raise UserError(f"could not load model {source.spec}: its pickle weights hold objects torch's weights-only "
                        "loader refuses (a pickle can run code when loaded)",
                        "do not load this file; get the weights as safetensors from a source you trust") from None
    except errors as exc:
        cause = exc.__cause__ or exc
        text = str(cause).strip()
        first = text.splitlines()[0] if text else type(cause).__name__
        if "mismatched" in text or "size mismatch" in text:
            first = "weight shapes do not match config.json (e.g. expert count or sizes)"
        raise UserError(f"could not load model {source.spec}: {first}", "check that config.json and the weights belong together") from None
    missing = list(info.get("missing_keys") or [])
    if missing:
        raise UserError(
            f"model {source.spec} lacks {len(missing)} weight(s) its config needs (e.g. {sorted(missing)[0]})",
            "the checkpoint is incomplete or was saved with other tensor names; re-export it",
        )
    model.to(device)
    model.eval()
    return model, tokenizer, device
