"""Gate files (``gates/<model>.toml``): which baseline, which suites with which settings, which budgets.

The whole file is validated up front (``load_gate``), so a typo fails in a second with one clear line,
not after an hour of suites: every key, the backend and its options (each backend's options model),
budget metrics against the metrics and checks each suite declares, distinct budget labels, suite
settings, and detector thresholds (``[detectors]``, which reach the verdict's detector flags and the
collapse suite's checks).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from harness.backends import BACKENDS
from harness.detectors import FLAGS, DetectorSettings
from harness.errors import UserError
from harness.gate import ANY_FLAG, Budget, GatePolicy, check_labels, flag_budget_warnings
from harness.gate.budgets import FLAG_KINDS
from harness.suites import SUITES, SuiteSettings, declared_flags, suite_settings

GATE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
DETECTORS_SETTING = "detectors"
"""A suite whose settings have this field gets the gate file's ``[detectors]`` (collapse)."""


class ModelSpec(BaseModel):
    """A model to evaluate: a local path, a hub id, the keyword ``testbed``, or a served model."""

    model_config = ConfigDict(extra="forbid")

    model: str
    """Local checkpoint path, hub id, ``testbed`` (the built-in test bed; local backends only) or, for
    ``openai``, the served name."""
    backend: str = "transformers"
    """A kind in ``harness.backends.BACKENDS``."""
    options: dict[str, Any] = Field(default_factory=dict)
    """Backend options, e.g. ``dtype``/``device`` for transformers, ``base_url`` for openai."""

    @field_validator("backend")
    @classmethod
    def _known_backend(cls, value: str) -> str:
        if value not in BACKENDS:
            raise ValueError(f"unknown backend {value!r} (known: {', '.join(BACKENDS.names())})")
        return value

    @field_validator("options")
    @classmethod
    def _valid_options(cls, value: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        kind = info.data.get("backend")
        if kind is not None:
            try:
                BACKENDS.get(kind).validate(value)
            except UserError as exc:
                raise ValueError(exc.line()) from None
        return value


class BaselineSection(ModelSpec):
    dir: str
    """Where the stored baseline lives, relative to the project root (the folder holding ``gates/``)."""
    manifest_sha256: str | None = Field(None, pattern=r"^[0-9a-fA-F]{64}$")
    """The stored baseline's manifest pinned (``moegate baseline record`` prints the line): a store
    whose manifest differs is refused, so changing the baseline means changing this reviewed file."""
    require_signature: bool = False
    """Refuse a baseline not signed with ``MOEGATE_BASELINE_KEY`` (see ``harness.integrity``)."""


class GateSection(GatePolicy):
    """``[gate]``: the statistical policy (``GatePolicy``'s fields) plus the gate's name and sequential stopping."""

    name: str
    """A plain name (letters, digits, ``_.-``): the default report folder is ``reports/<name>/``."""
    sequential: bool = False
    """Run suites whose budgets are all paired ``drop`` budgets in chunks and stop a capability as soon
    as its verdict cannot change (group-sequential test, ``harness.stats.sequential``)."""
    looks: int = Field(5, ge=1, le=50)
    """Planned looks of a sequential suite (the last at all items)."""
    spending: Literal["obf", "pocock"] = "obf"
    """Alpha spending across the looks: O'Brien-Fleming-type (little early) or Pocock-type (even)."""
    min_items: int = Field(20, ge=1)
    """No sequential look before this many items."""

    @field_validator("name")
    @classmethod
    def _plain_name(cls, value: str) -> str:
        if not GATE_NAME.match(value):
            raise ValueError(f"{value!r} must be a plain name (letters, digits, '_', '.', '-'; no '/', no '..'): "
                             "it names the report folder reports/<name>/")
        return value
    allow_cross_engine: bool = False
    """Gate scoring suites (log-likelihoods, perplexity, top-k tables) of a candidate computed by another
    engine than the baseline's (e.g. a vLLM baseline, a local transformers candidate); refused otherwise,
    since engines' log-probabilities differ for the same weights. Generation suites always may."""


class SuiteEntry(BaseModel):
    """``[suites.<name>]``: a profile of the pinned settings plus any overrides."""

    model_config = ConfigDict(extra="allow")

    profile: Literal["ci", "full"] = "ci"

    def overrides(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class GateFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    gate: GateSection
    baseline: BaselineSection
    suites: dict[str, SuiteEntry]
    budgets: list[Budget] = Field(min_length=1)
    detectors: DetectorSettings = Field(default_factory=DetectorSettings)
    """Detector thresholds, for the flags the verdict computes and for the collapse suite's checks."""


class GateConfig(BaseModel):
    """A validated gate file and where it came from."""

    path: Path
    file: GateFile
    settings: dict[str, SuiteSettings]
    """Resolved settings per suite (pinned defaults, profile, overrides, detector thresholds)."""
    warnings: list[str] = Field(default_factory=list)
    """What loading found doubtful but not wrong (flag budgets too small to tell noise from regression)."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    @property
    def name(self) -> str:
        return self.file.gate.name

    @property
    def budgets(self) -> list[Budget]:
        return self.file.budgets

    @property
    def baseline(self) -> BaselineSection:
        return self.file.baseline

    @property
    def detectors(self) -> DetectorSettings:
        return self.file.detectors

    @property
    def root(self) -> Path:
        """The project root: the parent of ``gates/`` when the file lives there, else its own folder."""
        folder = self.path.parent
        return folder.parent if folder.name == "gates" else folder

    @property
    def baseline_dir(self) -> Path:
        path = Path(self.file.baseline.dir).expanduser()
        return path if path.is_absolute() else self.root / path

    def policy(self) -> GatePolicy:
        return GatePolicy.model_validate(self.file.gate.model_dump(include=set(GatePolicy.model_fields)))


def _check_budget_metrics(path: Path, gate_file: GateFile) -> None:
    """Each budget names a metric its suite declares (flag budgets: a detector flag or one of its checks)."""
    for budget in gate_file.budgets:
        suite = SUITES.get(budget.suite)
        if budget.kind in FLAG_KINDS:
            known = [ANY_FLAG, *FLAGS, *declared_flags(suite)]
            what = "flag or check"
        else:
            known = [m.name for m in suite.metrics]
            what = "metric"
        if budget.metric not in known:
            raise UserError(
                f"gate file {path}: budget '{budget.display_label}' names {what} '{budget.metric}', which suite "
                f"'{budget.suite}' does not report (it has: {', '.join(known) or 'none'})",
                "fix the metric name in the gate file",
            )


def _resolved_settings(name: str, entry: SuiteEntry, detectors: DetectorSettings) -> SuiteSettings:
    settings = suite_settings(name, entry.profile, entry.overrides())
    if DETECTORS_SETTING in type(settings).model_fields and DETECTORS_SETTING not in entry.overrides():
        settings = settings.model_copy(update={DETECTORS_SETTING: detectors})
    return settings


def load_gate(path: str | Path) -> GateConfig:
    """Read and validate a gate file; every problem is a one-line ``UserError``."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"gate file {path} not found", "pass --gate gates/<model>.toml (see gates/testbed.toml)")
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise UserError(f"gate file {path} is not UTF-8 text", "save it as UTF-8") from exc
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"gate file {path} is not valid TOML: {exc}", "fix the syntax at that line") from exc
    try:
        gate_file = GateFile.model_validate(document)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(top level)"
        raise UserError(f"gate file {path}: '{where}': {first['msg']}", "fix that key (see gates/testbed.toml)") from exc
    for name in gate_file.suites:
        SUITES.get(name)  # unknown suite -> UserError with a did-you-mean
    for budget in gate_file.budgets:
        if budget.suite not in gate_file.suites:
            raise UserError(
                f"gate file {path}: budget '{budget.display_label}' names suite '{budget.suite}', which [suites] does not run",
                f"add [suites.{budget.suite}] or remove the budget",
            )
    try:
        check_labels(gate_file.budgets)
    except UserError as exc:
        raise UserError(f"gate file {path}: {exc.problem}", exc.fix) from None
    _check_budget_metrics(path, gate_file)
    settings = {name: _resolved_settings(name, entry, gate_file.detectors) for name, entry in gate_file.suites.items()}
    planned = {name: s.planned_items() for name, s in settings.items()}
    warnings = flag_budget_warnings(gate_file.budgets, planned, 1.0 - gate_file.gate.confidence)
    return GateConfig(path=path.resolve(), file=gate_file, settings=settings, warnings=warnings)
