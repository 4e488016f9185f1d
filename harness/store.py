"""Stored runs (baselines and gate candidates): per-item records (gzip JSONL) plus a manifest of fingerprints, settings and hashes.

A baseline is recorded once and compared against many candidates; a gate run stores its candidate
the same way, so ``moegate verdict`` can recompute everything without a model. The manifest holds the
sha256 of every records file and of every artifact (a suite's binary side data, ``artifacts/<suite>/<name>``),
which catches an accidental edit or a damaged copy (``harness.integrity`` says what proves more). A
store written by another schema version is refused in one line, before anything is compared. A store is
marked ``.moegate-store``; moegate replaces no other folder (``harness.atomic.atomic_dir``).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import platform
from collections.abc import Mapping
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, ValidationError, field_validator

from harness import integrity
from harness._version import __version__
from harness.atomic import atomic_dir, atomic_write_text
from harness.errors import UserError
from harness.records import RECORD_SCHEMA_VERSION, Artifacts, ItemRecord, MetricSpec, SequentialInfo, SuiteRun

MANIFEST = "manifest.json"
STORE_KIND = "store"
STORE_SCHEMA_VERSION = 2
"""2: artifacts, backend options, one ``item_ids`` setting name, collapse's detector thresholds in its settings."""
RE_RECORD = "re-record it with this moegate (moegate baseline record, or moegate run for a candidate)"


def _inside_store(value: str) -> str:
    parts = Path(value).parts
    if not parts or Path(value).is_absolute() or ".." in parts or "\\" in value:
        raise ValueError(f"{value!r} is not a path inside the store")
    return value


class StoredArtifact(BaseModel):
    file: str
    """Path inside the store (``artifacts/<suite>/<name>``)."""
    sha256: str
    size: int

    _file_inside = field_validator("file")(_inside_store)


class StoredSuite(BaseModel):
    settings: dict[str, Any]
    data_sha256: dict[str, str] = Field(default_factory=dict)
    metrics: list[MetricSpec] = Field(default_factory=list)
    error: str | None = None
    seconds: float = 0.0
    records_file: str
    records_sha256: str
    n_items: int
    sequential: SequentialInfo | None = None
    artifacts: dict[str, StoredArtifact] = Field(default_factory=dict)

    _records_inside = field_validator("records_file")(_inside_store)


class Manifest(BaseModel):
    """What a stored run is: which model, which settings, which data, which environment."""

    schema_version: int = STORE_SCHEMA_VERSION
    moegate_version: str = __version__
    created_utc: str
    model: str
    backend: str
    options: dict[str, Any] = Field(default_factory=dict)
    """The backend options the run used (a candidate runs with the baseline's unless told otherwise)."""
    fingerprint: str
    weights_digest: str | None = None
    """Every byte of the local checkpoint's model files hashed (``content_digest``); None for served models
    and older stores. A gate refuses a baseline checkpoint that no longer hashes to it."""
    engine: dict[str, Any] | None = None
    """What computed the numbers (``harness.backends.base.EngineInfo`` as a dict); None in older stores."""
    environment: dict[str, str]
    suites: dict[str, StoredSuite]


def environment() -> dict[str, str]:
    """Versions that can change numbers without changing settings (a difference is warned about)."""
    env = {"python": platform.python_version(), "platform": platform.platform(terse=True)}
    for package in ("torch", "transformers", "lm_eval", "sacrebleu", "mlx", "mlx-lm"):
        try:
            env[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return env


def _records_bytes(records: list[ItemRecord]) -> bytes:
    lines = "".join(json.dumps(r.model_dump(mode="json"), ensure_ascii=False, sort_keys=True) + "\n" for r in records)
    return gzip.compress(lines.encode("utf-8"), mtime=0)


def _write_artifacts(tmp: Path, suite: str, artifacts: Artifacts) -> dict[str, StoredArtifact]:
    stored = {}
    for name in artifacts:
        blob = artifacts[name]
        rel = f"artifacts/{suite}/{name}"
        (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp / rel).write_bytes(blob)
        stored[name] = StoredArtifact(file=rel, sha256=hashlib.sha256(blob).hexdigest(), size=len(blob))
    return stored


def write_store(
    target: Path, runs: dict[str, SuiteRun], *, model: str, backend: str, fingerprint: str,
    options: Mapping[str, Any] | None = None, engine: Mapping[str, Any] | None = None,
    protect: tuple[Path | str, ...] = (), weights_digest: str | None = None,
) -> Manifest:  # fmt: skip
    """Write ``runs`` into ``target`` (replacing it atomically: a crash leaves the old store intact).

    ``target`` must be free, empty or a store (``check_replaceable``) and neither be nor hold any of
    ``protect`` (the gate file, the models). Signed when ``MOEGATE_BASELINE_KEY`` is set.
    """
    suites: dict[str, StoredSuite] = {}
    with atomic_dir(Path(target), kind=STORE_KIND, protect=protect, recognise=looks_like_store) as tmp:
        (tmp / "records").mkdir()
        for name, run in runs.items():
            blob = _records_bytes(run.records)
            rel = f"records/{name}.jsonl.gz"
            (tmp / rel).write_bytes(blob)
            suites[name] = StoredSuite(
                settings=run.settings,
                data_sha256=run.data_sha256,
                metrics=run.metrics,
                error=run.error,
                seconds=run.seconds,
                records_file=rel,
                records_sha256=hashlib.sha256(blob).hexdigest(),
                n_items=len(run.records),
                sequential=run.sequential,
                artifacts=_write_artifacts(tmp, name, run.artifacts),
            )
        manifest = Manifest(
            created_utc=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            model=model,
            backend=backend,
            options=dict(options or {}),
            fingerprint=fingerprint,
            weights_digest=weights_digest,
            engine=dict(engine) if engine is not None else None,
            environment=environment(),
            suites=suites,
        )
        text = manifest.model_dump_json(indent=2) + "\n"
        atomic_write_text(tmp / MANIFEST, text)
        integrity.sign(tmp, text.encode("utf-8"))
    return manifest


def looks_like_store(path: Path) -> bool:
    """A store written before stores were marked: its manifest.json is a JSON object with moegate's keys."""
    try:
        document = json.loads((Path(path) / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return isinstance(document, dict) and {"schema_version", "fingerprint", "suites"} <= set(document)


def manifest_sha256(store: Path) -> str:
    """What ``[baseline] manifest_sha256`` pins."""
    return hashlib.sha256((Path(store) / MANIFEST).read_bytes()).hexdigest()


def load_baseline(store: Path, *, pin: str | None = None, require_signature: bool = False) -> tuple[Manifest, dict[str, SuiteRun]]:
    """``load_store`` for a baseline, checked further: the pinned manifest sha256, the signature, impossible values."""
    read_manifest(store)
    integrity.verify(Path(store), (Path(store) / MANIFEST).read_bytes(), pin=pin, require_signature=require_signature)
    manifest, runs = load_store(store)
    integrity.check_values(Path(store), runs)
    return manifest, runs


def read_manifest(store: Path) -> Manifest:
    path = Path(store) / MANIFEST
    if not path.is_file():
        raise UserError(
            f"no stored run at {store} ({MANIFEST} missing)",
            "record the baseline first: moegate baseline record --gate <gate file>",
        )
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise UserError(f"{path} is not a valid moegate manifest", "re-record it with moegate baseline record") from exc
    version = document.get("schema_version") if isinstance(document, dict) else None
    if isinstance(version, int) and version != STORE_SCHEMA_VERSION:
        raise UserError(
            f"stored run {store} has store schema version {version} "
            f"(written by moegate {document.get('moegate_version', '?')}); this moegate reads version {STORE_SCHEMA_VERSION}",
            RE_RECORD,
        )
    try:
        return Manifest.model_validate(document)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise UserError(f"{path} is not a valid moegate manifest ({where}: {first['msg']})",
                        "re-record it with moegate baseline record") from exc


def load_store(store: Path) -> tuple[Manifest, dict[str, SuiteRun]]:
    """Read a stored run, verifying every records file against the manifest's sha256."""
    store = Path(store)
    manifest = read_manifest(store)
    runs: dict[str, SuiteRun] = {}
    for name, entry in manifest.suites.items():
        path = _in_store(store, entry.records_file)
        if not path.is_file():
            raise UserError(f"stored records {path} are missing", "re-record the baseline (moegate baseline record)")
        blob = path.read_bytes()
        if hashlib.sha256(blob).hexdigest() != entry.records_sha256:
            raise UserError(
                f"stored records {path} were edited by hand (sha256 differs from {MANIFEST})",
                "restore the file from version control or re-record the baseline",
            )
        try:
            lines = gzip.decompress(blob).decode("utf-8").splitlines()
            records = [ItemRecord.model_validate_json(line) for line in lines if line.strip()]
        except (OSError, UnicodeDecodeError, ValidationError, ValueError) as exc:
            raise UserError(f"stored records {path} cannot be read ({type(exc).__name__})", "re-record the baseline") from exc
        old = next((r for r in records if r.version != RECORD_SCHEMA_VERSION), None)
        if old is not None:
            raise UserError(f"stored records {path} have record schema version {old.version}; this moegate reads "
                            f"version {RECORD_SCHEMA_VERSION}", RE_RECORD)
        runs[name] = SuiteRun(
            suite=name,
            settings=entry.settings,
            data_sha256=entry.data_sha256,
            metrics=entry.metrics,
            records=records,
            error=entry.error,
            seconds=entry.seconds,
            sequential=entry.sequential,
            artifacts=_stored_artifacts(store, entry.artifacts),
        )
    return manifest, runs


def _in_store(store: Path, rel: str) -> Path:
    """``store / rel``, refused where a symbolic link leads it out of the store."""
    path = store / rel
    try:
        inside = path.resolve().is_relative_to(store.resolve())
    except (OSError, RuntimeError):
        inside = False
    if not inside:
        raise UserError(f"stored run {store}: {rel} points outside the store", "restore the store from version control or re-record it")
    return path


def _check_artifact(path: Path, expected: str, digest: str | None) -> None:
    if digest is None:
        raise UserError(f"stored artifact {path} is missing", "restore it from version control or re-record the run")
    if digest != expected:
        raise UserError(f"stored artifact {path} was edited by hand (sha256 differs from {MANIFEST})",
                        "restore the file from version control or re-record the run")


def _streamed_sha256(path: Path) -> str | None:
    if not path.is_file():
        return None
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _read_checked(path: Path, expected: str) -> bytes:
    blob = path.read_bytes() if path.is_file() else None
    _check_artifact(path, expected, None if blob is None else hashlib.sha256(blob).hexdigest())
    assert blob is not None
    return blob


def _stored_artifacts(store: Path, entries: dict[str, StoredArtifact]) -> Artifacts:
    """Artifacts checked now (hashed as a stream: no file is held in memory) and checked again when read."""
    loaders = {}
    for name, entry in entries.items():
        path = _in_store(store, entry.file)
        _check_artifact(path, entry.sha256, _streamed_sha256(path))
        loaders[name] = lambda path=path, sha=entry.sha256: _read_checked(path, sha)
    return Artifacts(loaders=loaders)


def settings_differences(manifest: Manifest, name: str, wanted: BaseModel) -> list[str]:
    """The keys of ``wanted`` (a suite's settings) whose stored values differ (a suite may record more)."""
    stored = manifest.suites[name].settings
    current = wanted.model_dump(mode="json")
    return sorted(k for k in current if current[k] != stored.get(k))


def check_comparable(manifest: Manifest, settings: Mapping[str, BaseModel], *, store: Path) -> list[str]:
    """Refuse a comparison whose suites or settings differ from the baseline's; return warnings.

    Only the environment (library versions, platform) may differ, and that is warned about.
    """
    for name, wanted in settings.items():
        stored = manifest.suites.get(name)
        if stored is None:
            raise UserError(
                f"the baseline at {store} has no records for suite '{name}'",
                "re-record the baseline with this gate file (moegate baseline record)",
            )
        # a suite may record more than its settings (e.g. lm-eval task versions): that is checked after the run
        keys = settings_differences(manifest, name, wanted)
        if keys:
            raise UserError(
                f"suite '{name}' settings differ from the baseline's ({', '.join(keys)})",
                "use the settings the baseline recorded or re-record the baseline",
            )
    here = environment()
    return [
        f"environment differs from the baseline's: {key} {manifest.environment.get(key)} -> {here.get(key)}"
        for key in sorted(set(here) | set(manifest.environment))
        if here.get(key) != manifest.environment.get(key)
    ]


def check_same_data(manifest: Manifest, runs: dict[str, SuiteRun]) -> None:
    """The candidate must have read byte-identical data files, with what the suite recorded beside its settings."""
    for name, run in runs.items():
        stored = manifest.suites.get(name)
        recorded = sorted(k for k in run.settings if stored and k in stored.settings and run.settings[k] != stored.settings[k])
        if recorded:
            raise UserError(
                f"suite '{name}' ran with {', '.join(recorded)} different from the baseline's",
                "use the library versions the baseline was recorded with, or re-record the baseline",
            )
        if stored and stored.data_sha256 and run.data_sha256 and stored.data_sha256 != run.data_sha256:
            raise UserError(
                f"suite '{name}' read different data than the baseline (sha256 differs)",
                "restore the data files the baseline used or re-record the baseline",
            )
