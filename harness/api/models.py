"""Which model a run opens, and how: the ``testbed`` keyword, the request cache, and the one builder
of the baseline's and the candidate's specs that every entry point (CLI, pytest plugin, demo) uses.

The rule: the candidate runs with the baseline's backend and backend options (what the stored baseline
recorded), except what the user overrides by name. Every remaining difference between the two specs
is listed (``spec_differences``), logged and written into the report.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from harness.api.config import ModelSpec
from harness.backends import BACKENDS, Backend, open_backend
from harness.cache import CachedBackend, RequestCache, default_cache_path

TESTBED = "testbed"
"""Model keyword for the built-in test bed (built on first use), for backends that read local checkpoints."""

Log = Callable[[str], None]


def resolve_testbed(model: str, backend: str = "transformers", log: Log | None = None) -> str:
    """Map the ``testbed`` keyword to the test bed's folder (building it once) for local backends.

    A served model called ``testbed`` (``openai``) is that server's model, never the local test bed.
    """
    if model != TESTBED or not BACKENDS.get(backend).local:
        return model
    from harness.testbed import ensure_testbed

    if log:
        log("test bed: building or reusing the SmolLM2 MoE test bed")
    return str(ensure_testbed(progress=log))


def open_model(spec: ModelSpec, *, cache: bool = True, log: Log | None = None) -> Backend:
    """Open ``spec`` with its backend, behind the request cache unless ``cache`` is False."""
    backend = open_backend(resolve_testbed(spec.model, spec.backend, log), spec.backend, **spec.options)
    if not cache:
        return backend
    return CachedBackend(backend, RequestCache(default_cache_path()), description=spec.model)


def derived_spec(
    reference: ModelSpec, model: str | None = None, *, backend: str | None = None,
    options: Mapping[str, Any] | None = None,
) -> ModelSpec:  # fmt: skip
    """``reference``'s backend and options with the user's explicit overrides on top.

    Options belong to a backend: when the user names another backend, the reference's options do not
    carry over (only the user's do).
    """
    kind = backend or reference.backend
    inherited = dict(reference.options) if kind == reference.backend else {}
    return ModelSpec(model=model or reference.model, backend=kind, options={**inherited, **dict(options or {})})


def spec_differences(baseline: ModelSpec, candidate: ModelSpec, *, asked: Mapping[str, Any] | None = None,
                     asked_backend: bool = False) -> list[str]:  # fmt: skip
    """Backend settings in which the candidate differs from the baseline, each marked asked for or not."""
    asked = asked or {}

    def mark(key: str | None) -> str:
        requested = asked_backend if key is None else key in asked
        return "as asked" if requested else "NOT asked for: numbers may differ for that reason alone"

    out = []
    if candidate.backend != baseline.backend:
        out.append(f"backend: baseline {baseline.backend}, candidate {candidate.backend} ({mark(None)})")
    for key in sorted(set(baseline.options) | set(candidate.options)):
        b, c = baseline.options.get(key), candidate.options.get(key)
        if b != c:
            out.append(f"backend option {key}: baseline {b!r}, candidate {c!r} ({mark(key)})")
    return out


def label_of(model: ModelSpec | Backend) -> tuple[str, str, dict[str, Any]]:
    """(model, backend kind, options) to record for a spec or an already open backend."""
    if isinstance(model, ModelSpec):
        return model.model, model.backend, dict(model.options)
    description = getattr(model, "description", None) or getattr(model, "model_name", None) or f"<open {model.name} backend>"
    return str(description), model.name, {}


SCORING_KINDS = frozenset({"loglikelihood", "loglikelihood_rolling", "next_token_topk"})
"""Request kinds whose numbers are log-probabilities: two engines compute them differently."""


def engine_differences(baseline: Mapping[str, Any] | None, candidate: Mapping[str, Any]) -> list[str]:
    """How the engine that computes the candidate's numbers differs from the one that computed the
    baseline's (name, version, context); the served model's name is expected to differ."""
    if baseline is None:
        return []
    return [
        f"{key}: baseline {baseline.get(key)!r}, candidate {candidate.get(key)!r}"
        for key in ("engine", "version", "max_context")
        if baseline.get(key) != candidate.get(key)
    ]
