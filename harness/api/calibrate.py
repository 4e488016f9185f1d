"""``moegate baseline calibrate``: the baseline gated against benign perturbations of itself, stored as
its noise floor (``calibration.json`` beside the store, bound to the manifest by its sha256).

Perturbations that must not change behaviour: ``renumber`` (routed experts and router rows permuted
alike: the same function), ``bf16`` (every float32 tensor cast to bfloat16 and back), ``batch`` (another
batch size and half the CPU threads, request cache bypassed: only float noise changes).
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from pydantic import ValidationError

from harness import integrity
from harness.api.config import GateConfig, ModelSpec
from harness.api.models import Log, open_model, resolve_testbed
from harness.atomic import atomic_write_text
from harness.backends import BACKENDS
from harness.errors import UserError
from harness.gate import evaluate_gate
from harness.gate.budgets import Budget
from harness.gate.churn import (
    CALIBRATION_SCHEMA_VERSION,
    Calibration,
    Perturbation,
    perturbation_of,
    with_churn,
)
from harness.gate.flags import detector_flags
from harness.resources import cache_dir
from harness.runner import run_suites
from harness.store import MANIFEST, load_baseline, manifest_sha256

CALIBRATION_FILE = "calibration.json"
PERTURBATIONS = ("renumber", "bf16", "dtype", "batch")


def read_calibration(store: Path, *, require_signature: bool = False) -> tuple[Calibration | None, str | None]:
    """The store's calibration, or None with the reason when it has none or it no longer matches the store.
    Verified like the manifest when ``MOEGATE_BASELINE_KEY`` is set: its churn can widen a budget."""
    path = Path(store) / CALIBRATION_FILE
    if not path.is_file():
        return None, None
    blob = path.read_bytes()
    try:
        calibration = Calibration.model_validate_json(blob.decode("utf-8"))
    except (ValidationError, UnicodeDecodeError) as exc:
        raise UserError(f"{path} is not a calibration moegate wrote ({exc.__class__.__name__})",
                        "delete it and run moegate baseline calibrate again") from None  # fmt: skip
    if calibration.schema_version != CALIBRATION_SCHEMA_VERSION:
        raise UserError(f"{path} has schema version {calibration.schema_version}, this moegate reads "
                        f"{CALIBRATION_SCHEMA_VERSION}", "run moegate baseline calibrate again")  # fmt: skip
    if (Path(store) / MANIFEST).is_file() and calibration.manifest_sha256 != manifest_sha256(store):
        return None, f"{path} was measured on another recording of the baseline (ignored): run moegate baseline calibrate again"
    integrity.verify_file(path, blob, redo="run moegate baseline calibrate again", require_signature=require_signature)
    return calibration, None


def benign_failures(budgets: Sequence[Budget], calibration: Calibration) -> list[str]:
    """Budgets that the baseline itself FAILs under a benign perturbation (its stored lower bound, or
    its count, beyond the budget as written now), each named with the perturbation."""
    out = []
    for budget in with_churn(list(budgets), calibration):
        for perturbation in calibration.perturbations:
            seen = perturbation.capabilities.get(budget.display_label)
            if seen is None or seen.change is None:
                continue  # a budget added since the calibration, or a capability it could not measure
            beyond = seen.change if budget.is_count or seen.ci_low is None else seen.ci_low
            if beyond > budget.max:
                out.append(f"budget '{budget.display_label}' (max {budget.max:g}) FAILs the baseline itself under "
                           f"the benign perturbation '{perturbation.name}' ({perturbation.description}): "
                           f"change {seen.change:.4g}, lower bound {beyond:.4g}")  # fmt: skip
    return out


def calibrated_budgets(config: GateConfig, store: Path) -> tuple[list[Budget], Calibration | None, list[str]]:
    """The gate's budgets with ``churn_multiple`` applied, the calibration and any warning about it."""
    calibration, warning = read_calibration(store, require_signature=config.baseline.require_signature)
    needing = [b.display_label for b in config.budgets if b.churn_multiple is not None]
    if needing and calibration is None:
        raise UserError(f"budget(s) {', '.join(needing)} are set as a multiple of the baseline's churn, and the "
                        f"baseline at {store} has no current calibration",
                        f"run moegate baseline calibrate --gate {config.path}")  # fmt: skip
    missing = [label for label in needing if calibration is not None and calibration.churn(label) is None]
    if missing:
        raise UserError(f"the calibration of {store} did not measure {', '.join(missing)}",
                        f"run moegate baseline calibrate --gate {config.path} again")  # fmt: skip
    if calibration is not None:
        failures = benign_failures(config.budgets, calibration)
        if failures:
            raise UserError(failures[0], "raise that budget's max (or set churn_multiple), or give the suite more items")
    return with_churn(list(config.budgets), calibration), calibration, [warning] if warning else []


@contextmanager
def _threads(halved: bool) -> Iterator[None]:
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(max(1, before // 2) if halved else before)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _perturbed(name: str, spec: ModelSpec, folder: Path, work: Path) -> tuple[ModelSpec, str, bool]:
    """The perturbed subject, what it is, and whether the request cache may serve it."""
    from harness.compress._perturb import renumber_experts, round_trip

    if name == "renumber":
        path = renumber_experts(folder, work / "renumber", seed=0)
        return spec.model_copy(update={"model": str(path)}), "routed experts and router rows permuted alike", True
    if name == "bf16":
        path = round_trip(folder, work / "bf16", dtype="bfloat16")
        return spec.model_copy(update={"model": str(path)}), "every float32 tensor cast to bfloat16 and back", True
    if name == "dtype":  # what serving in another precision does: the weights as they are, computed in bf16
        current = str(spec.options.get("dtype") or "float32")
        other = "float32" if current == "bfloat16" else "bfloat16"
        update = {"options": {**spec.options, "dtype": other}, "model": str(folder)}
        return spec.model_copy(update=update), f"loaded in {other} instead of {current}", True
    batch = int(spec.options.get("batch_size", 8))
    other = 1 if batch != 1 else 4
    update = {"options": {**spec.options, "batch_size": other}, "model": str(folder)}
    return spec.model_copy(update=update), f"batch size {other} instead of {batch}, half the CPU threads", False


def calibrate_baseline(
    config: GateConfig, *, perturbations: Sequence[str] = PERTURBATIONS, log: Log,
) -> Calibration:  # fmt: skip
    """Gate the stored baseline against each perturbation of itself and store what each capability did."""
    unknown = sorted(set(perturbations) - set(PERTURBATIONS))
    if unknown or not perturbations:
        raise UserError(f"unknown perturbation(s) {', '.join(unknown) or '(none given)'}",
                        f"choose from {', '.join(PERTURBATIONS)}")  # fmt: skip
    store = config.baseline_dir
    manifest, baseline_runs = load_baseline(store, pin=config.baseline.manifest_sha256,
                                            require_signature=config.baseline.require_signature)  # fmt: skip
    spec = ModelSpec.model_construct(model=manifest.model, backend=manifest.backend, options=dict(manifest.options))
    if not BACKENDS.get(spec.backend).local:
        raise UserError(f"the baseline at {store} was recorded through a server ({spec.backend}): calibration "
                        "perturbs its weights", "calibrate a local copy (transformers or mlx) of the same model")  # fmt: skip
    folder = Path(resolve_testbed(spec.model, spec.backend, log))
    found: list[Perturbation] = []
    with tempfile.TemporaryDirectory(prefix="calibrate-", dir=cache_dir()) as work:
        for name in perturbations:
            if name == "dtype" and spec.backend != "transformers":
                log(f"calibrate: dtype skipped (the {spec.backend} backend has no dtype option)")
                continue
            subject, description, cached = _perturbed(name, spec, folder, Path(work))
            log(f"calibrate: {name} ({description})")
            opened = open_model(subject, cache=cached, log=log)
            with _threads(halved=name == "batch"):
                runs = run_suites(opened, config.settings, log=log, baseline=baseline_runs)
            flags = detector_flags(baseline_runs, runs, config.detectors)
            verdict = evaluate_gate(baseline_runs, runs, config.budgets, config.policy(), flags=flags)
            for cap in verdict.capabilities:
                log(f"  {cap.label}: {cap.status} (change {cap.change})")
            found.append(perturbation_of(name, description, opened.fingerprint(), verdict))
    calibration = Calibration(manifest_sha256=manifest_sha256(store),
                              created_utc=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                              perturbations=found)  # fmt: skip
    write_calibration(store, calibration)
    return calibration


def write_calibration(store: Path, calibration: Calibration) -> None:
    """``calibration.json`` beside the baseline, signed (``calibration.json.hmac``) when the key is set."""
    text = calibration.model_dump_json(indent=2) + "\n"
    atomic_write_text(Path(store) / CALIBRATION_FILE, text)
    integrity.sign_file(Path(store) / CALIBRATION_FILE, text.encode("utf-8"))
