"""The heavy half of a gate: run suites on an open backend, each suite once or in chunks by a stopping rule.

Everything here produces item records; deciding is left to ``harness.gate``. Chunked runs take a
``StoppingRule`` (the gate's ``SequentialRule`` is one) instead of importing the gate.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable
from typing import Protocol

from harness.backends.base import Backend
from harness.errors import UserError
from harness.records import ItemRecord, SequentialInfo, SuiteRun
from harness.suites import ITEM_IDS, SUITES, Suite, SuiteSettings, runs_chosen_items

Log = Callable[[str], None]


class StoppingRule(Protocol):
    """When a suite may run in chunks, where its looks are, and what each look decided."""

    def why_not(self, suite: str) -> str | None:
        """Why ``suite`` runs in full; None when it runs in chunks."""
        ...

    def look_points(self, total: int) -> list[int]:
        """Items seen at each planned look of a suite with ``total`` items (the last one: all)."""
        ...

    def look(self, suite: str, partial: SuiteRun, total: int) -> SequentialInfo:
        """The plan and decisions after ``partial`` (the first items); the suite stops when ``decided``."""
        ...


def run_suites(
    backend: Backend, suites: dict[str, SuiteSettings], *, log: Log | None = None,
    baseline: dict[str, SuiteRun] | None = None, stopping: StoppingRule | None = None,
    stop: Callable[[dict[str, SuiteRun]], str | None] | None = None,
) -> dict[str, SuiteRun]:  # fmt: skip
    """Run each suite; a suite that crashes yields a run with ``error`` set (the gate fails on it).

    ``baseline``: the baseline's stored runs, handed to each suite's ``run`` (None when recording the
    baseline itself). With ``stopping``, the suites it allows run in chunks of the baseline's stored
    item order and stop once decided. ``stop`` sees the runs so far after each suite; when it returns a
    reason, the remaining suites do not run (``--fail-fast``). A ``UserError`` (bad data file, bad
    settings) is not a suite failure: it stops the run at once.
    """
    check_context(backend, suites)
    runs: dict[str, SuiteRun] = {}
    order = sharing_order(list(suites))
    if log and order != list(suites):
        log(f"suites run as {', '.join(order)}: a top-k suite's tables answer a rolling suite's windows from the cache")
    for name in order:
        settings = suites[name]
        if log:
            log(f"suite {name}: running")
        start = time.perf_counter()
        base = (baseline or {}).get(name)
        try:
            suite = SUITES.get(name)()
            if stopping is not None and base is not None and _chunkable(name, suite, stopping, log):
                run = _run_in_looks(suite, backend, settings, base, stopping, log)
            else:
                run = suite.run(backend, settings, baseline=base)
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
        why = stop(runs) if stop is not None and len(runs) < len(suites) else None
        if why:
            if log:
                log(f"stopping: {why}; not run: {', '.join(s for s in suites if s not in runs)}")
            break
    return {name: runs[name] for name in suites if name in runs}


def sharing_order(names: list[str]) -> list[str]:
    """``names`` with each suite asking for top-k tables moved just before the first suite asking for rolling
    log-likelihoods, when it comes after it: the request cache stores a text-form top-k table as the rolling
    result of its windows (``CachedBackend``), never the reverse, so the wikitext2 suite then reads the kld
    suite's forward passes instead of running its own. Every other suite keeps its place."""
    kinds = {name: getattr(SUITES.get(name), "request_kinds", frozenset()) for name in names}
    order = list(names)
    for name in [n for n in names if "next_token_topk" in kinds[n]]:
        first = next((i for i, n in enumerate(order) if "loglikelihood_rolling" in kinds[n]), None)
        if first is not None and first < order.index(name):
            order.insert(first, order.pop(order.index(name)))
    return order


def check_context(backend: Backend, suites: dict[str, SuiteSettings]) -> None:
    """Refuse, before any suite runs, a ``seq_len`` beyond the positions the model has (``backend.max_length``)."""
    positions = getattr(backend, "max_length", None)
    if not isinstance(positions, int) or isinstance(positions, bool):
        return
    for name, settings in suites.items():
        seq_len = getattr(settings, "seq_len", None)
        if isinstance(seq_len, int) and seq_len > positions:
            raise UserError(f"suite {name}: seq_len = {seq_len} is beyond the model's {positions} positions "
                            "(max_position_embeddings)", f"set seq_len to at most {positions} under [suites.{name}]")


def _chunkable(name: str, suite: Suite, stopping: StoppingRule, log: Log | None) -> bool:
    why = stopping.why_not(name)
    if why is None and not runs_chosen_items(suite):
        why = "the suite cannot run a chosen subset of its items"
    if why and log:
        log(f"suite {name}: sequential stopping off, all items run ({why})")
    return why is None


def _run_in_looks(
    suite: Suite, backend: Backend, settings: SuiteSettings, base: SuiteRun, stopping: StoppingRule, log: Log | None
) -> SuiteRun:  # fmt: skip
    """Run the baseline's items in its stored order, chunk by chunk up to each look; stop once decided.

    Each chunk is a normal run restricted to those items (``item_ids``). If a chunk's prompts differ
    from the baseline's (e.g. few-shot examples drawn in item order), pairing would be wrong, and a
    chunk with binary artifacts cannot be merged: the suite then runs in full instead.
    """
    name = suite.name
    ids, base_by_id = [r.item_id for r in base.records], {r.item_id: r for r in base.records}
    records: list[ItemRecord] = []
    run: SuiteRun | None = None
    for n in stopping.look_points(len(ids)):
        chunk = ids[len(records) : n]
        part = suite.run(backend, settings.model_copy(update={ITEM_IDS: chunk}), baseline=base)
        if part.error:
            return part.model_copy(update={"settings": settings.model_dump(mode="json")})
        got = {r.item_id: r for r in part.records}
        odd = [i for i in chunk if i not in got or got[i].prompt != base_by_id[i].prompt] + sorted(set(got) - set(chunk))
        if odd or part.artifacts:
            why = f"item {odd[0]} of a chunk differs from the baseline's" if odd else "it stores artifacts"
            if log:
                log(f"suite {name}: {why}; sequential off, all items run")
            return suite.run(backend, settings, baseline=base)
        records += [got[i] for i in chunk]
        run_settings = {**part.settings, ITEM_IDS: settings.model_dump(mode="json").get(ITEM_IDS)}
        run = part.model_copy(update={"records": list(records), "settings": run_settings})
        info = stopping.look(name, run, len(ids))
        run.sequential = info
        if log:
            log(f"suite {name}: look at {n}/{len(ids)} items: " + ", ".join(f"{k} {v}" for k, v in info.decisions.items()))
        if info.decided:
            break
    assert run is not None
    return run
