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
from harness.gate._sequential import SequentialPlan, suite_decisions
from harness.gate.config import ModelSpec
from harness.records import ItemRecord, SequentialInfo, SuiteRun
from harness.sequential import look_points
from harness.suites import SUITES, Suite, SuiteSettings

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


def run_suites(
    backend: Backend, suites: dict[str, SuiteSettings], *, log: Log | None = None,
    sequential: SequentialPlan | None = None,
) -> dict[str, SuiteRun]:  # fmt: skip
    """Run each suite; a suite that crashes yields a run with ``error`` set (the gate fails on it).

    With ``sequential``, the suites it plans run in chunks and stop once their budgets are decided.
    A ``UserError`` (bad data file, bad settings) is not a suite failure: it stops the run at once.
    """
    runs: dict[str, SuiteRun] = {}
    for name, settings in suites.items():
        if log:
            log(f"suite {name}: running")
        start = time.perf_counter()
        try:
            suite = SUITES.get(name)()
            chunked = sequential is not None and _chunkable(name, suite, sequential, log)
            run = _run_in_looks(suite, backend, settings, sequential, log) if chunked else suite.run(backend, settings)  # type: ignore[arg-type]
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


def _chunkable(name: str, suite: Suite, plan: SequentialPlan, log: Log | None) -> bool:
    why = plan.notes.get(name)
    if why is None and name in plan.budgets and not getattr(suite, "item_ids_setting", None):
        why = "the suite cannot run a chosen subset of its items"
    if why is None and name not in plan.budgets:
        why = "no budget"
    if why and log:
        log(f"suite {name}: sequential stopping off, all items run ({why})")
    return why is None


def _run_in_looks(suite: Suite, backend: Backend, settings: SuiteSettings, plan: SequentialPlan, log: Log | None) -> SuiteRun:
    """Run the baseline's items in its stored order, chunk by chunk up to each look; stop when all budgets are decided.

    Each chunk is a normal run restricted to those items (``suite.item_ids_setting``). If a chunk's
    prompts differ from the baseline's (e.g. few-shot examples drawn in item order), pairing would be
    wrong: the suite is then run in full instead.
    """
    name, field = suite.name, suite.item_ids_setting  # type: ignore[attr-defined]
    base = plan.baseline[name]
    ids, base_by_id = [r.item_id for r in base.records], {r.item_id: r for r in base.records}
    records: list[ItemRecord] = []
    run: SuiteRun | None = None
    for n in look_points(len(ids), plan.looks, plan.min_items):
        chunk = ids[len(records) : n]
        part = suite.run(backend, settings.model_copy(update={field: chunk}))
        if part.error:
            return part.model_copy(update={"settings": settings.model_dump(mode="json")})
        got = {r.item_id: r for r in part.records}
        odd = [i for i in chunk if i not in got or got[i].prompt != base_by_id[i].prompt] + sorted(set(got) - set(chunk))
        if odd:
            if log:
                log(f"suite {name}: item {odd[0]} of a chunk differs from the baseline's; sequential off, all items run")
            return suite.run(backend, settings)
        records += [got[i] for i in chunk]
        info = SequentialInfo(items_total=len(ids), items_used=n, looks=plan.looks, spending=plan.spending,
                              min_items=plan.min_items, alpha=plan.alpha)  # fmt: skip
        run_settings = {**part.settings, field: settings.model_dump(mode="json").get(field)}
        run = part.model_copy(update={"records": list(records), "settings": run_settings, "sequential": info})
        info.decisions = suite_decisions(plan.budgets[name], base, run, plan.alpha)
        if log:
            log(f"suite {name}: look at {n}/{len(ids)} items: " + ", ".join(f"{k} {v}" for k, v in info.decisions.items()))
        if "INCONCLUSIVE" not in info.decisions.values():
            break
    assert run is not None
    return run
