"""Gate files (``gates/<model>.toml``): which baseline, which suites with which settings, which budgets.

Validated up front so that a typo fails in a second with one clear line, not after an hour of suites.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from harness.errors import UserError
from harness.gate.budgets import Budget, GatePolicy
from harness.suites import SUITES, SuiteSettings, suite_settings

BackendKind = Literal["transformers", "openai", "mlx"]


class ModelSpec(BaseModel):
    """A model to evaluate: a local path, a hub id, the keyword ``testbed``, or a served model."""

    model_config = ConfigDict(extra="forbid")

    model: str
    """Local checkpoint path, hub id, ``testbed`` (the built-in test bed) or, for ``openai``, the served name."""
    backend: BackendKind = "transformers"
    options: dict[str, Any] = Field(default_factory=dict)
    """Backend options, e.g. ``dtype``/``device`` for transformers, ``base_url`` for openai."""


class BaselineSection(ModelSpec):
    dir: str
    """Where the stored baseline lives, relative to the project root (the folder holding ``gates/``)."""


class GateSection(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    confidence: float = Field(0.95, gt=0.5, lt=1.0)
    correction: Literal["holm", "none"] = "holm"
    inconclusive: Literal["fail", "pass"] = "fail"
    bootstrap_resamples: int = Field(10_000, ge=1_000)
    seed: int = 0
    sequential: bool = False
    """Run suites whose budgets are all paired ``drop`` budgets in chunks and stop a capability as soon
    as its verdict cannot change (group-sequential test, ``harness.sequential``)."""
    looks: int = Field(5, ge=1, le=50)
    """Planned looks of a sequential suite (the last at all items)."""
    spending: Literal["obf", "pocock"] = "obf"
    """Alpha spending across the looks: O'Brien-Fleming-type (little early) or Pocock-type (even)."""
    min_items: int = Field(20, ge=1)
    """No sequential look before this many items."""


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


class GateConfig(BaseModel):
    """A validated gate file and where it came from."""

    path: Path
    file: GateFile
    settings: dict[str, SuiteSettings]
    """Resolved settings per suite (pinned defaults, profile, overrides)."""

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
    def root(self) -> Path:
        """The project root: the parent of ``gates/`` when the file lives there, else its own folder."""
        folder = self.path.parent
        return folder.parent if folder.name == "gates" else folder

    @property
    def baseline_dir(self) -> Path:
        path = Path(self.file.baseline.dir).expanduser()
        return path if path.is_absolute() else self.root / path

    def policy(self) -> GatePolicy:
        g = self.file.gate
        return GatePolicy(
            confidence=g.confidence,
            correction=g.correction,
            inconclusive=g.inconclusive,
            bootstrap_resamples=g.bootstrap_resamples,
            seed=g.seed,
        )


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
    settings = {
        name: suite_settings(name, entry.profile, entry.overrides()) for name, entry in gate_file.suites.items()
    }
    return GateConfig(path=path.resolve(), file=gate_file, settings=settings)
