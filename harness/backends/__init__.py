"""Backends: engines behind the three-request-kind seam (``harness.backends.base.Backend``).

``open_backend(model, kind)`` is the one way in; kinds are registered lazily so importing
``harness.backends`` never imports torch.
"""

from __future__ import annotations

from typing import Any

from harness.backends.base import Backend
from harness.registry import Registry

BACKENDS: Registry[Any] = Registry("backend")
"""kind -> a callable ``(model: str, **options) -> Backend``."""
BACKENDS.register("transformers", "harness.backends.transformers:open_transformers")
BACKENDS.register("openai", "harness.backends.openai:open_openai")
BACKENDS.register("mlx", "harness.backends.mlx:open_mlx")


def open_backend(model: str, kind: str = "transformers", **options: Any) -> Backend:
    """Open ``model`` (a path, GGUF file, hub id or server URL) with backend ``kind``.

    Options go to the backend's factory, e.g. ``dtype``, ``device``, ``trust_pickle``, ``batch_size``.
    """
    factory = BACKENDS.get(kind)
    return factory(model, **options)


__all__ = ["BACKENDS", "Backend", "open_backend"]
