"""Each backend's options model (harness.backends.options) matches what its factory accepts, defaults included,
so a gate file or a flag is checked by the same list the backend uses."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import pytest

from harness.backends import BACKENDS


def _defaults(*functions: Callable[..., Any], skip: set[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for function in functions:
        for name, param in inspect.signature(function).parameters.items():
            if name not in skip and param.kind is not param.VAR_KEYWORD:
                out[name] = param.default
    return out


def _factories() -> dict[str, dict[str, Any]]:
    from harness.backends.mlx import MlxBackend
    from harness.backends.openai import OpenAIBackend
    from harness.backends.transformers import TransformersBackend

    plumbing = {"self", "model", "tokenizer", "path", "device", "source", "settings", "sleep"}
    transformers = _defaults(TransformersBackend.from_pretrained, TransformersBackend.__init__, skip=plumbing)
    transformers["device"] = inspect.signature(TransformersBackend.from_pretrained).parameters["device"].default
    openai = _defaults(OpenAIBackend.__init__, skip=plumbing)
    openai["base_url"] = None  # positional in the class; the registry factory also takes it from the model argument
    return {"transformers": transformers, "openai": openai, "mlx": _defaults(MlxBackend.__init__, skip=plumbing)}


@pytest.mark.parametrize("kind", ["transformers", "openai", "mlx"])
def test_options_model_matches_the_factory(kind: str) -> None:
    model = BACKENDS.get(kind).options
    declared = {name: field.default for name, field in model.model_fields.items()}
    assert declared == _factories()[kind]


def test_backend_kinds_say_whether_they_read_local_checkpoints() -> None:
    assert {k: BACKENDS.get(k).local for k in BACKENDS} == {"mlx": True, "openai": False, "transformers": True}
