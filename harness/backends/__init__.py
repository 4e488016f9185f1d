"""Backends: engines behind the request-kind seam (``harness.backends.base.Backend``).

``open_backend(model, kind, **options)`` is the one way in. Each kind is registered once, with its
factory (imported lazily, so importing ``harness.backends`` never imports torch), its options model
(``harness.backends.options``) and whether it reads a local checkpoint; the CLI, gate files and the
application layer all take the list of kinds from ``BACKENDS``.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from harness.backends.base import Backend
from harness.backends.options import BackendOptions, MlxOptions, OpenAIOptions, TransformersOptions
from harness.errors import UserError
from harness.registry import Registry


@dataclass(frozen=True)
class BackendKind:
    """One backend: how to open it and what it accepts."""

    name: str
    factory: str
    """``"module:function"`` called as ``function(model, **options) -> Backend``."""
    options: type[BackendOptions]
    local: bool
    """Reads a local checkpoint (so the ``testbed`` keyword means the built-in test bed); False for servers."""

    def validate(self, options: dict[str, Any]) -> BackendOptions:
        """The options as this backend's model; a bad one is a one-line ``UserError``."""
        try:
            return self.options.model_validate(options)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "options"
            known = ", ".join(self.options.model_fields)
            if first["type"] == "extra_forbidden":
                raise UserError(f"unknown {self.name} backend option '{where}'", f"known: {known}") from None
            raise UserError(f"{self.name} backend option '{where}': {first['msg']}", f"known options: {known}") from None

    def open(self, model: str, options: dict[str, Any]) -> Backend:
        module, _, attr = self.factory.partition(":")
        factory = getattr(importlib.import_module(module), attr)
        return factory(model, **self.validate(options).model_dump(exclude_unset=True))  # type: ignore[no-any-return]


BACKENDS: Registry[BackendKind] = Registry("backend")
"""kind -> ``BackendKind``."""
BACKENDS.register("transformers", BackendKind("transformers", "harness.backends.transformers:open_transformers",
                                              TransformersOptions, local=True))
BACKENDS.register("openai", BackendKind("openai", "harness.backends.openai:open_openai", OpenAIOptions, local=False))
BACKENDS.register("mlx", BackendKind("mlx", "harness.backends.mlx:open_mlx", MlxOptions, local=True))


def open_backend(model: str, kind: str = "transformers", **options: Any) -> Backend:
    """Open ``model`` (a path, GGUF file, hub id or server URL) with backend ``kind``.

    Options are checked against the kind's options model, e.g. ``dtype``, ``device``, ``trust_pickle``,
    ``batch_size`` for transformers (``harness.backends.options``).
    """
    return BACKENDS.get(kind).open(model, options)


__all__ = ["BACKENDS", "Backend", "BackendKind", "BackendOptions", "open_backend"]
