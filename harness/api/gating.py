"""Gate runs end to end: record a baseline, gate a candidate, re-decide a stored run, evaluate a model.

The CLI, the pytest plugin and ``moegate demo`` all call these functions, so they behave alike. Each
takes a model as a spec string, a ``ModelSpec`` or an already open ``Backend`` (as
``lm_eval.simple_evaluate(model=str | LM)`` does).
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from harness.api._audit import AUDIT_FILE, audit_verdict, expert_heatmap, with_audit
from harness.api._diagnosis import audit_findings, confirmed_fail, gate_diagnosis, riskiest_first
from harness.api._identity import check_baseline_weights, local_checkpoint, same_as_baseline, weights_digest
from harness.api.calibrate import calibrated_budgets
from harness.api.config import GateConfig, ModelSpec
from harness.api.models import (
    SCORING_KINDS,
    Log,
    derived_spec,
    engine_differences,
    label_of,
    open_model,
    resolve_testbed,
    spec_differences,
)
from harness.atomic import atomic_write_text, check_replaceable, claim_dir
from harness.backends import Backend
from harness.backends.base import engine_of
from harness.errors import UserError
from harness.gate import GateVerdict, evaluate_gate, sequential_rule
from harness.gate.churn import annotated
from harness.gate.flags import detector_flags
from harness.inspect import audit_extra, audit_for_gate
from harness.records import SuiteRun
from harness.reports import ModelRun, RunInfo, write_reports
from harness.routing import record_routes
from harness.runner import run_suites
from harness.store import (
    Manifest,
    check_comparable,
    check_same_data,
    load_baseline,
    load_store,
    looks_like_store,
    settings_differences,
    write_store,
)
from harness.suites import SUITES, SuiteSettings, suite_settings, with_limit

CANDIDATE_STORE = "candidate"
RUN_INFO = "run.json"
RUN_KIND = "run"

ModelLike = str | ModelSpec | Backend


def _stderr(message: str) -> None:
    print(f"moegate: {message}", file=sys.stderr, flush=True)


@dataclass
class GateOutcome:
    verdict: GateVerdict
    reports: dict[str, Path]
    run_dir: Path
    warnings: list[str] = field(default_factory=list)
    backend_differences: list[str] = field(default_factory=list)
    """How the candidate's backend settings differ from the baseline's (each marked asked for or not)."""


@dataclass
class Evaluation:
    runs: dict[str, SuiteRun]
    fingerprint: str
    manifest: Manifest | None = None
    """The store written (``out``), if any."""


def _spec(reference: ModelSpec, model: str | None, backend: str | None, options: Mapping[str, Any] | None) -> ModelSpec:
    try:
        return derived_spec(reference, model, backend=backend, options=options)
    except ValidationError as exc:
        raise UserError(f"model settings: {exc.errors()[0]['msg']}", "fix the backend or its options") from None


def default_run_dir(gate_name: str, candidate: str) -> Path:
    """``reports/<gate>/<UTC time>-<candidate folder name>``."""
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", Path(candidate.rstrip("/")).name or "candidate")[:48]
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return Path("reports") / gate_name / f"{stamp}-{slug}"


def _local(*models: object) -> list[Path]:
    """The models given that are local files or folders (moegate must never replace those)."""
    paths = [Path(m.model if isinstance(m, ModelSpec) else str(m)).expanduser() for m in models if isinstance(m, (str, ModelSpec))]
    return [p for p in paths if p.exists()]


def _is_old_run_dir(path: Path) -> bool:
    """A run folder written before run folders were marked: its run.json names a gate, or it holds a candidate store."""
    try:
        info = json.loads((path / RUN_INFO).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        info = None
    return (isinstance(info, dict) and "gate" in info) or looks_like_store(path / CANDIDATE_STORE)


def _claim_run_dir(run_dir: Path, protect: Sequence[Path | str], *, create: bool = True) -> None:
    """Refuse a run folder moegate may not write into (a file, someone's folder, or one holding the models)."""
    if create:
        claim_dir(run_dir, RUN_KIND, protect=protect, recognise=_is_old_run_dir)
    else:
        check_replaceable(run_dir, RUN_KIND, protect=protect, recognise=_is_old_run_dir)
        check_replaceable(run_dir / CANDIDATE_STORE, "store", protect=protect, recognise=looks_like_store)


def _baseline(config: GateConfig, store: Path) -> tuple[Manifest, dict[str, SuiteRun]]:
    """The stored baseline, checked against the gate file's pin and signature rule and for impossible values."""
    return load_baseline(store, pin=config.baseline.manifest_sha256, require_signature=config.baseline.require_signature)


def _opened(model: ModelSpec | Backend, log: Log) -> Backend:
    return open_model(model, log=log) if isinstance(model, ModelSpec) else model


def record_baseline(
    config: GateConfig, *, model: ModelLike | None = None, backend: str | None = None,
    options: Mapping[str, Any] | None = None, out: Path | None = None, log: Log = _stderr,
) -> Manifest:  # fmt: skip
    """Run the gate's suites on its baseline model and store the records (atomically).

    ``model``/``backend``/``options`` override the gate file's ``[baseline]`` (options only by name).
    """
    spec = _spec(config.baseline, model, backend, options) if model is None or isinstance(model, str) else model
    check_replaceable(out or config.baseline_dir, "store", protect=(config.path, *_local(spec)), recognise=looks_like_store)
    opened = _opened(spec, log)
    runs = record_routes(opened, run_suites(opened, config.settings, log=log), log=log)
    target = out or config.baseline_dir
    name, kind, used = label_of(spec)
    digest = weights_digest(spec.model, spec.backend, log) if isinstance(spec, ModelSpec) else None
    manifest = write_store(target, runs, model=name, backend=kind, options=used, fingerprint=opened.fingerprint(),
                           engine=asdict(engine_of(opened)), protect=(config.path, *_local(spec)),
                           weights_digest=digest)  # fmt: skip
    log(f"baseline stored in {target}")
    return manifest


def stored_spec(manifest: Manifest) -> ModelSpec:
    """The baseline as it was recorded (not validated: a store may name a backend this install lacks)."""
    return ModelSpec.model_construct(model=manifest.model, backend=manifest.backend, options=dict(manifest.options))


def gate_candidate(
    config: GateConfig, candidate: ModelLike, run_dir: Path | str, *, backend: str | None = None,
    options: Mapping[str, Any] | None = None, baseline_dir: Path | None = None, sequential: bool | None = None,
    fail_fast: bool = False, log: Log = _stderr,
) -> GateOutcome:  # fmt: skip
    """Gate ``candidate`` against the stored baseline; store its records and write the reports.

    A candidate given by name runs with the stored baseline's backend and options, except the
    ``backend`` and ``options`` named here. ``sequential``: run suites in chunks and stop each once
    its budgets are decided (None: the gate file's ``[gate] sequential``). Suites run riskiest first
    (``moegate risk``); ``fail_fast``: stop at the first FAIL the remaining suites cannot overturn.
    """
    run_dir = Path(run_dir)
    store = baseline_dir or config.baseline_dir
    manifest, baseline_runs = _baseline(config, store)  # verified before any time is spent on the candidate, then reused
    protect = (config.path, store, *_local(candidate, manifest.model))
    _claim_run_dir(run_dir, protect, create=False)  # before any model loads
    warnings = [*config.warnings, *check_comparable(manifest, config.settings, store=store)]
    budgets, _, noted = calibrated_budgets(config, Path(store))  # a budget the baseline's own churn FAILs: refused now
    warnings += noted
    base_spec = stored_spec(manifest)
    if isinstance(candidate, str):
        spec: ModelSpec | Backend = _spec(base_spec, candidate, backend, options)
    else:
        spec = candidate
    if isinstance(spec, ModelSpec):
        differences = spec_differences(base_spec, spec, asked=options, asked_backend=backend is not None)
    else:
        differences = [f"candidate is an open {spec.name} backend; its options are not recorded"]
    for line in warnings + [f"backend settings differ: {d}" for d in differences]:
        log(f"warning: {line}")
    if isinstance(spec, ModelSpec) and spec.backend == "transformers" and base_spec.backend == "transformers":
        early = _audit_first(config, spec, manifest, baseline_runs, run_dir, warnings, log, protect)
        if early is not None:
            return early
    else:
        check_baseline_weights(manifest, log)
    opened = _opened(spec, log)
    engine = asdict(engine_of(opened))
    engine_changes = engine_differences(manifest.engine, engine)
    _refuse_cross_engine(config, manifest.engine, engine)
    for line in engine_changes:
        log(f"warning: engine differs: {line}")
    fingerprint = opened.fingerprint()
    where = local_checkpoint(spec.model, spec.backend, log) if isinstance(spec, ModelSpec) else None
    opened, identical = same_as_baseline(opened, fingerprint, manifest, where, log)
    if identical:
        log(f"note: {identical}")
        warnings.append(identical)
    g = config.file.gate
    rule = sequential_rule(budgets, baseline_runs, config.policy(), looks=g.looks, spending=g.spending,
                           min_items=g.min_items) if (g.sequential if sequential is None else sequential) else None  # fmt: skip
    findings = json.loads((run_dir / AUDIT_FILE).read_text(encoding="utf-8")) if (run_dir / AUDIT_FILE).is_file() else None
    suites = riskiest_first(config.settings, budgets, baseline_runs, findings, log)
    stopped: list[str] = []

    def stop(done: dict[str, SuiteRun]) -> str | None:
        why = confirmed_fail(baseline_runs, done, budgets, config.policy(), config.detectors) if fail_fast else None
        stopped.extend([why] if why else [])
        return why

    candidate_runs = run_suites(opened, suites, log=log, baseline=baseline_runs, stopping=rule, stop=stop)
    check_same_data(manifest, candidate_runs)
    name, kind, used = label_of(spec)
    _claim_run_dir(run_dir, protect)
    write_store(run_dir / CANDIDATE_STORE, candidate_runs, model=name, backend=kind, options=used, fingerprint=fingerprint,
                engine=engine, protect=protect)  # fmt: skip
    info = {"gate": str(config.path), "baseline_dir": str(Path(store).resolve()), "backend_differences": differences,
            "engine_differences": engine_changes, "stopped_early": stopped[0] if stopped else None,
            "same_as_baseline": identical}  # fmt: skip
    atomic_write_text(run_dir / RUN_INFO, json.dumps(info, indent=2) + "\n")
    return decide(config, run_dir, baseline_dir=store, warnings=warnings, baseline=(manifest, baseline_runs))


def _refuse_cross_engine(config: GateConfig, baseline: Mapping[str, Any] | None, candidate: Mapping[str, Any]) -> None:
    """Log-probabilities from two engines differ for the same weights: scoring suites need one engine."""
    if baseline is None or baseline.get("engine") == candidate.get("engine") or config.file.gate.allow_cross_engine:
        return
    scoring = sorted(name for name in config.settings if SUITES.get(name).request_kinds & SCORING_KINDS)
    if scoring:
        raise UserError(
            f"the baseline's numbers were computed by {baseline.get('engine')}, the candidate's would be by "
            f"{candidate.get('engine')}; scoring suite(s) {', '.join(scoring)} compare log-probabilities, which "
            "differ between engines for the same weights",
            "run the candidate on the baseline's engine, re-record the baseline on this one, or set "
            "allow_cross_engine = true under [gate] in the gate file",
        )


def _audit_first(
    config: GateConfig, candidate: ModelSpec, manifest: Manifest, baseline_runs: dict[str, SuiteRun], run_dir: Path,
    warnings: list[str], log: Log, protect: Sequence[Path | str],
) -> GateOutcome | None:  # fmt: skip
    """``moegate inspect`` against the baseline's weights; NaN/Inf or config-contradicting weights FAIL before any suite.

    The baseline checkpoint is checked against the store's ``weights_digest`` between the audit's scan (which
    caches the digests, so the check reads nothing again) and the first file written into the run folder.
    """
    audit = audit_for_gate(resolve_testbed(candidate.model, candidate.backend, log),
                           resolve_testbed(manifest.model, manifest.backend, log))  # fmt: skip
    check_baseline_weights(manifest, log)
    if audit is None:
        return None
    log(audit.summary())
    findings = audit_extra(audit)
    _claim_run_dir(run_dir, protect)
    atomic_write_text(run_dir / AUDIT_FILE, json.dumps(findings, indent=2) + "\n")
    if not audit.fatal:  # other problems (damaged tensors) FAIL in decide(), next to what the suites measured
        return None
    verdict = audit_verdict(audit, config.policy())
    run = RunInfo(gate=config.name, gate_file=str(config.path), warnings=warnings)
    reports = write_reports(verdict, baseline_runs, {}, run_dir, run=run, inspect=findings)
    return GateOutcome(verdict=verdict, reports=reports, run_dir=run_dir, warnings=warnings)


UNSANDBOXED = "generated code ran without kernel isolation"


def unsandboxed_warnings(runs: Mapping[str, SuiteRun], side: str = "") -> list[str]:
    """Where generated code ran under the audit hook alone (``--allow-unsandboxed``), one line per suite
    for the report; ``side`` names whose runs these are ("the candidate's ")."""
    lines = []
    for name, run in sorted(runs.items()):
        held = sorted({s for r in run.records if str(s := r.meta.get("sandbox", "")).startswith("UNSANDBOXED:")})
        if held:
            lines.append(f"{UNSANDBOXED} for {side}suite '{name}' ({', '.join(held)}; --allow-unsandboxed)")
    return lines


def decide(
    config: GateConfig, run_dir: Path | str, *, baseline_dir: Path | None = None, warnings: list[str] | None = None,
    baseline: tuple[Manifest, dict[str, SuiteRun]] | None = None,
) -> GateOutcome:  # fmt: skip
    """Recompute the verdict and reports of a stored run, without any model.

    ``baseline``: the store already loaded (and verified) from ``baseline_dir`` by the caller. Budgets
    and detector thresholds come from ``config``; suite settings it changes since the run are warned about.
    """
    run_dir = Path(run_dir)
    info = _run_info(run_dir)
    store = baseline_dir or (Path(info["baseline_dir"]) if info.get("baseline_dir") else config.baseline_dir)
    manifest, baseline_runs = baseline or _baseline(config, Path(store))
    cand_manifest, candidate_runs = load_store(run_dir / CANDIDATE_STORE)
    _claim_run_dir(run_dir, (config.path, store, *_local(manifest.model, cand_manifest.model)))
    missing = sorted({b.suite for b in config.budgets} - set(candidate_runs))
    if missing and not info.get("stopped_early"):  # --fail-fast: the suites not run FAIL as "not run"
        raise UserError(f"the stored run has no records for suite(s) {', '.join(missing)}",
                        "gate with the same gate file the run was made with, or rerun moegate run")
    warnings = list(config.warnings if warnings is None else warnings)
    if info.get("same_as_baseline") and info["same_as_baseline"] not in warnings:
        warnings.append(str(info["same_as_baseline"]))
    for name, wanted in config.settings.items():
        changed = settings_differences(cand_manifest, name, wanted) if name in cand_manifest.suites else []
        if changed and baseline is None:
            warnings.append(f"suite '{name}' ran with other settings than this gate file's ({', '.join(changed)}); "
                            "its records keep the run's settings")  # fmt: skip
    budgets, calibration, noted = calibrated_budgets(config, Path(store))
    warnings += [w for w in noted + unsandboxed_warnings(baseline_runs, "the baseline's ")
                 + unsandboxed_warnings(candidate_runs, "the candidate's ") if w not in warnings]
    flags = detector_flags(baseline_runs, candidate_runs, config.detectors)
    verdict = annotated(evaluate_gate(baseline_runs, candidate_runs, budgets, config.policy(), flags=flags), calibration)
    findings = None
    if (run_dir / AUDIT_FILE).is_file():
        findings = json.loads((run_dir / AUDIT_FILE).read_text(encoding="utf-8"))
        verdict = with_audit(verdict, findings)
    differences = list(info.get("backend_differences") or [])
    for line in [f"backend settings differ: {d}" for d in differences] + [
        f"engine differs: {d}" for d in info.get("engine_differences") or []
    ]:
        if line not in warnings:
            warnings.append(line)
    run = RunInfo(
        gate=config.name, gate_file=str(config.path), warnings=warnings, backend_differences=differences,
        baseline=ModelRun(model=manifest.model, backend=manifest.backend, options=manifest.options,
                          fingerprint=manifest.fingerprint, store=str(store), engine=manifest.engine),
        candidate=ModelRun(model=cand_manifest.model, backend=cand_manifest.backend, options=cand_manifest.options,
                           fingerprint=cand_manifest.fingerprint, store=str(run_dir / CANDIDATE_STORE),
                           engine=cand_manifest.engine),
    )  # fmt: skip
    if findings is None and manifest.backend != "openai":
        findings_for_diagnosis = _late_audit(cand_manifest.model, resolve_testbed(manifest.model, manifest.backend))
    else:
        findings_for_diagnosis = findings
    diagnosis = gate_diagnosis(manifest.backend, baseline_runs, findings_for_diagnosis, verdict, Path(cand_manifest.model))
    reports = write_reports(verdict, baseline_runs, candidate_runs, run_dir, run=run, inspect=findings,
                            expert_heatmap=expert_heatmap(Path(cand_manifest.model)), diagnosis=diagnosis)  # fmt: skip
    return GateOutcome(verdict=verdict, reports=reports, run_dir=run_dir, warnings=warnings,
                       backend_differences=differences)  # fmt: skip


def _late_audit(candidate: str, baseline: str) -> dict[str, Any] | None:
    """The audit for the diagnosis when the gate did not run one (mlx backend); None when it cannot."""
    try:
        return audit_findings(candidate, baseline)
    except UserError:
        return None


def _run_info(run_dir: Path) -> dict[str, Any]:
    path = run_dir / RUN_INFO
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise UserError(f"{path} is not valid JSON", "rerun moegate run to rewrite it") from exc
    return data if isinstance(data, dict) else {}


def evaluate(
    model: ModelLike, suites: Sequence[str] | Mapping[str, SuiteSettings], *, profile: str = "ci",
    limit: int | None = None, backend: str | None = None, options: Mapping[str, Any] | None = None,
    out: Path | None = None, log: Log = _stderr,
) -> Evaluation:  # fmt: skip
    """Run suites on one model, no gate and no baseline (``moegate eval``); with ``out``, store the records.

    ``suites``: names (their ``profile`` settings) or resolved settings. ``limit`` cuts every suite to
    that many items, a profile's pinned item list included.
    """
    settings = dict(suites) if isinstance(suites, Mapping) else {name: suite_settings(name, profile) for name in suites}
    if limit is not None:
        if limit < 1:
            raise UserError(f"limit = {limit} asks for no items", "pass a limit of at least 1, or none for the profile's count")
        settings = {name: with_limit(s, limit) for name, s in settings.items()}
    if isinstance(model, str):
        reference = ModelSpec.model_construct(model=model, backend=backend or "transformers", options={})
        spec: ModelSpec | Backend = _spec(reference, None, None, options)
    else:
        spec = model
    if out is not None:
        check_replaceable(out, "store", protect=_local(spec), recognise=looks_like_store)
    opened = _opened(spec, log)
    runs = run_suites(opened, settings, log=log)
    fingerprint = opened.fingerprint()
    manifest = None
    if out is not None:
        name, kind, used = label_of(spec)
        manifest = write_store(out, runs, model=name, backend=kind, options=used, fingerprint=fingerprint,
                               protect=tuple(_local(spec)))
    return Evaluation(runs=runs, fingerprint=fingerprint, manifest=manifest)
