"""Gate runs end to end: record a baseline, gate a candidate, re-decide a stored run.

The CLI, the pytest plugin and ``moegate demo`` all call these three functions, so they behave alike.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.atomic import atomic_write_text
from harness.errors import UserError
from harness.gate._sequential import SequentialPlan, plan_sequential
from harness.gate.budgets import Budget
from harness.gate.config import GateConfig, ModelSpec
from harness.gate.flags import detector_flags
from harness.gate.verdict import GateVerdict, evaluate_gate
from harness.records import SuiteRun
from harness.store import Manifest, check_comparable, check_same_data, load_store, write_store

Log = Callable[[str], None]

CANDIDATE_STORE = "candidate"
RUN_INFO = "run.json"


def _stderr(message: str) -> None:
    print(f"moegate: {message}", file=sys.stderr, flush=True)


@dataclass
class GateOutcome:
    verdict: GateVerdict
    reports: dict[str, Path]
    run_dir: Path
    warnings: list[str] = field(default_factory=list)


def record_baseline(config: GateConfig, *, model: ModelSpec | None = None, out: Path | None = None, log: Log = _stderr) -> Manifest:
    """Run the gate's suites on its baseline model and store the records (atomically)."""
    from harness.pipeline import open_model, run_suites

    spec = model or config.baseline
    backend = open_model(spec, log=log)
    runs = run_suites(backend, config.settings, log=log)
    target = out or config.baseline_dir
    manifest = write_store(target, runs, model=spec.model, backend=spec.backend, fingerprint=backend.fingerprint())
    log(f"baseline stored in {target}")
    return manifest


def gate_candidate(
    config: GateConfig,
    candidate: ModelSpec,
    run_dir: Path,
    *,
    baseline_dir: Path | None = None,
    sequential: bool | None = None,
    log: Log = _stderr,
) -> GateOutcome:
    """Gate ``candidate`` against the stored baseline; store its records and write the reports.

    ``sequential``: run suites in chunks and stop each once its budgets are decided (None: the gate
    file's ``[gate] sequential``).
    """
    from harness.pipeline import open_model, run_suites

    store = baseline_dir or config.baseline_dir
    baseline = load_store(store)  # verified before any time is spent on the candidate, then reused
    manifest = baseline[0]
    warnings = check_comparable(manifest, config.settings, store=store)
    for warning in warnings:
        log(f"warning: {warning}")
    if candidate.backend == "transformers" and config.baseline.backend == "transformers":
        audit = _audit_first(config, candidate, baseline[1], run_dir, warnings, log)
        if audit is not None:
            return audit
    backend = open_model(candidate, log=log)
    fingerprint = backend.fingerprint()
    if fingerprint == manifest.fingerprint:
        log("note: the candidate's fingerprint equals the baseline's (same weights and settings)")
    candidate_runs = run_suites(backend, config.settings, log=log, sequential=_plan(config, baseline[1], sequential))
    check_same_data(manifest, candidate_runs)
    write_store(run_dir / CANDIDATE_STORE, candidate_runs, model=candidate.model, backend=candidate.backend, fingerprint=fingerprint)
    info = {"gate": str(config.path), "baseline_dir": str(Path(store).resolve()), "candidate": candidate.model_dump(mode="json")}
    atomic_write_text(run_dir / RUN_INFO, json.dumps(info, indent=2) + "\n")
    return decide(config, run_dir, baseline_dir=store, warnings=warnings, baseline=baseline)


def _plan(config: GateConfig, baseline_runs: dict[str, SuiteRun], sequential: bool | None) -> SequentialPlan | None:
    g = config.file.gate
    if not (g.sequential if sequential is None else sequential):
        return None
    return plan_sequential(config.budgets, baseline_runs, config.policy(), looks=g.looks, spending=g.spending,
                           min_items=g.min_items)  # fmt: skip


def _audit_first(config: GateConfig, candidate: ModelSpec, baseline_runs: dict[str, SuiteRun], run_dir: Path, warnings: list[str], log: Log) -> GateOutcome | None:
    """``moegate inspect`` against the baseline's weights; NaN/Inf or config-contradicting weights FAIL before any suite."""
    from harness.atomic import atomic_write_text
    from harness.inspect import AUDIT_FILE, audit_extra, audit_for_gate, audit_verdict
    from harness.pipeline import resolve_model
    from harness.reports import write_reports

    audit = audit_for_gate(resolve_model(candidate.model, log), resolve_model(config.baseline.model, log))
    if audit is None:
        return None
    log(audit.summary())
    atomic_write_text(run_dir / AUDIT_FILE, json.dumps(audit_extra(audit), indent=2) + "\n")
    if not audit.fatal:  # other problems (damaged tensors) FAIL in decide(), next to what the suites measured
        return None
    verdict = audit_verdict(audit, config.policy())
    extra = {"gate": config.name, "gate file": str(config.path), "warnings": warnings, "inspect": audit_extra(audit)}
    reports = write_reports(verdict, baseline_runs, {}, run_dir, extra=extra)
    return GateOutcome(verdict=verdict, reports=reports, run_dir=run_dir, warnings=warnings)


def decide(
    config: GateConfig,
    run_dir: Path,
    *,
    baseline_dir: Path | None = None,
    warnings: list[str] | None = None,
    baseline: tuple[Manifest, dict[str, SuiteRun]] | None = None,
) -> GateOutcome:
    """Recompute the verdict and reports of a stored run, without any model.

    ``baseline``: the store already loaded (and verified) from ``baseline_dir`` by the caller.
    """
    from harness.inspect import AUDIT_FILE
    from harness.reports import write_reports

    store = baseline_dir or _stored_baseline_dir(run_dir) or config.baseline_dir
    manifest, baseline_runs = baseline or load_store(store)
    cand_manifest, candidate_runs = load_store(run_dir / CANDIDATE_STORE)
    budgets = _budgets_for(config.budgets, candidate_runs)
    verdict = evaluate_gate(
        baseline_runs, candidate_runs, budgets, config.policy(), flags=detector_flags(baseline_runs, candidate_runs)
    )
    extra: dict[str, Any] = {
        # shown as header lines of the reports: one readable string each
        "gate": config.name, "gate file": str(config.path),
        "baseline": f"{manifest.model} (fingerprint {manifest.fingerprint[:16]}, records in {store})",
        "candidate": f"{cand_manifest.model} (fingerprint {cand_manifest.fingerprint[:16]})",
        "warnings": warnings or [],
    }
    if (run_dir / AUDIT_FILE).is_file():
        from harness.inspect import with_audit

        extra["inspect"] = json.loads((run_dir / AUDIT_FILE).read_text(encoding="utf-8"))
        verdict = with_audit(verdict, extra["inspect"])
    heatmap = expert_heatmap(Path(cand_manifest.model))
    if heatmap:
        extra["expert_heatmap"] = heatmap
    reports = write_reports(verdict, baseline_runs, candidate_runs, run_dir, extra=extra)
    return GateOutcome(verdict=verdict, reports=reports, run_dir=run_dir, warnings=warnings or [])


def _stored_baseline_dir(run_dir: Path) -> Path | None:
    info = run_dir / RUN_INFO
    if not info.is_file():
        return None
    stored = json.loads(info.read_text(encoding="utf-8")).get("baseline_dir")
    return Path(stored) if stored else None


def _budgets_for(budgets: list[Budget], runs: dict[str, SuiteRun]) -> list[Budget]:
    missing = sorted({b.suite for b in budgets} - set(runs))
    if missing:
        raise UserError(
            f"the stored run has no records for suite(s) {', '.join(missing)}",
            "gate with the same gate file the run was made with, or rerun moegate run",
        )
    return budgets


def expert_heatmap(checkpoint: Path) -> dict[str, Any] | None:
    """Per-layer expert scores with the compressed experts marked, from the compression record.

    ``pruning.json`` carries each expert's importance and the pruned ones; ``quantization.json`` the
    bits per expert. A checkpoint made elsewhere has neither, and the report shows no heatmap.
    """
    pruning, quant = checkpoint / "pruning.json", checkpoint / "quantization.json"
    if pruning.is_file():
        info = json.loads(pruning.read_text(encoding="utf-8"))
        layers = info.get("layers", [])
        return {
            "matrix": [row["scores"] for row in layers],
            "marked": [[i, e] for i, row in enumerate(layers) for e in row["pruned"]],
            "layer_labels": [str(row["layer"]) for row in layers],
            "title": f"expert {info.get('criterion', 'importance')} per layer (pruned experts outlined)",
        }
    if quant.is_file():
        layers = json.loads(quant.read_text(encoding="utf-8")).get("layers", [])
        lowest = min((min(row["bits"]) for row in layers), default=0)
        return {
            "matrix": [row["bits"] for row in layers],
            "marked": [[i, e] for i, row in enumerate(layers) for e, b in enumerate(row["bits"]) if b == lowest],
            "layer_labels": [str(row["layer"]) for row in layers],
            "title": f"bits per expert (the {lowest}-bit experts outlined)",
            "colorbar_label": "bits",
        }
    return None
