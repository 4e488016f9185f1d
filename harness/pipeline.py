"""The heavy half of a gate: open a model, run its suites through the request cache, annotate flags.

Everything here produces or decorates item records; deciding is left to ``harness.gate``.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable

from harness.backends import open_backend
from harness.backends.base import Backend
from harness.cache import CachedBackend, RequestCache, default_cache_path
from harness.errors import UserError
from harness.gate.config import ModelSpec
from harness.records import SuiteRun
from harness.suites import SUITES, SuiteSettings

TESTBED = "testbed"
"""Model keyword for the built-in test bed (built on first use)."""

Log = Callable[[str], None]


def resolve_model(model: str, log: Log | None = None) -> str:
    """Map the ``testbed`` keyword to the test bed's folder (building it once); other specs pass through."""
    if model != TESTBED:
        return model
    from harness.testbed import ensure_testbed

    if log:
        log("test bed: building or reusing the SmolLM2 MoE test bed")
    return str(ensure_testbed(progress=log))


def open_model(spec: ModelSpec, *, cache: bool = True, log: Log | None = None) -> Backend:
    """Open ``spec`` with its backend, behind the request cache unless ``cache`` is False."""
    backend = open_backend(resolve_model(spec.model, log), spec.backend, **spec.options)
    if not cache:
        return backend
    return CachedBackend(backend, RequestCache(default_cache_path()), description=spec.model)


def run_suites(backend: Backend, suites: dict[str, SuiteSettings], *, log: Log | None = None) -> dict[str, SuiteRun]:
    """Run each suite; a suite that crashes yields a run with ``error`` set (the gate fails on it).

    A ``UserError`` (bad data file, bad settings) is not a suite failure: it stops the run at once.
    """
    runs: dict[str, SuiteRun] = {}
    for name, settings in suites.items():
        if log:
            log(f"suite {name}: running")
        start = time.perf_counter()
        try:
            run = SUITES.get(name)().run(backend, settings)
        except UserError:
            raise
        except Exception as exc:  # noqa: BLE001 — a crashing suite is reported, and fails the gate
            detail = traceback.format_exception_only(type(exc), exc)[-1].strip()
            run = SuiteRun(suite=name, settings=settings.model_dump(mode="json"), error=detail)
            if log:
                log(f"suite {name}: ERROR {detail}")
        if run.error is None and not run.records:
            raise UserError(f"suite {name} produced no items (settings {settings.model_dump(mode='json')})",
                            "check its data files and its limit/n_items settings in the gate file")
        run.seconds = round(time.perf_counter() - start, 2)
        runs[name] = run
        if log and run.error is None:
            log(f"suite {name}: {len(run.records)} items in {run.seconds:.0f} s")
    return runs
