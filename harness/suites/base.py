"""What a suite is, and the registry that finds one by name.

A suite is a small class: pinned settings (a pydantic model, defaults in ``suites/<name>.toml``),
the metrics it reports, and ``run(backend, settings, baseline=None) -> SuiteRun``. Suites know nothing
of the gate. Third-party suites register through the ``moegate.suites`` entry point group.
"""

from __future__ import annotations

import sys
from typing import Any, ClassVar, Protocol, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from harness.backends.base import Backend
from harness.errors import UserError
from harness.records import MetricSpec, SuiteRun
from harness.registry import Registry
from harness.resources import suites_dir


class SuiteSettings(BaseModel):
    """Base for every suite's settings: unknown keys are an error, not silently ignored."""

    model_config = ConfigDict(extra="forbid")

    limit: int | None = None
    """Number of items (None: all). Items are chosen by ``seed`` when fewer than all."""
    seed: int = 1234

    def planned_items(self) -> int | None:
        """Items a run will record, when the settings alone say (None: it depends on the data)."""
        return self.limit


S = TypeVar("S", bound=SuiteSettings)


def as_settings(settings: SuiteSettings, cls: type[S]) -> S:
    """``settings`` as the suite's own class: ``run`` takes any ``SuiteSettings`` and validates them again."""
    return settings if isinstance(settings, cls) else cls.model_validate(settings.model_dump())


ITEM_IDS = "item_ids"
"""The one name of the setting "run only these items"."""


class ChosenItems(SuiteSettings):
    """Settings of a suite that can run exactly a given list of its items (sequential gate runs need it)."""

    item_ids: list[str] | None = None
    """Only these items (record ``item_id``s), in this order; None: the suite's own selection (``limit``, ``seed``)."""

    def planned_items(self) -> int | None:
        return len(self.item_ids) if self.item_ids is not None else super().planned_items()


class Suite(Protocol):
    """A suite.

    Attributes:
        name: registry name, also every record's ``suite``.
        Settings: its pinned settings; derive them from ``ChosenItems`` when the suite can run a given
            list of items (``item_ids``, in that order).
        metrics: every metric it may report (a gate file's budgets are checked against them).
        checks: optional class attribute, the names of the pass/fail checks its records carry (budgets
            on flags may name them besides the detector flags).

    ``run`` receives the baseline's stored run of the same suite when a candidate is gated (None when
    the baseline itself is recorded), so a suite can score the candidate against what the baseline
    stored (its records and ``artifacts``).
    """

    name: ClassVar[str]
    request_kinds: ClassVar[frozenset[str]]
    """Backend request kinds it sends: ``generate``, ``loglikelihood``, ``loglikelihood_rolling`` (what
    ``moegate serve-check`` needs to say which suites a server can run; ``generate`` with a ``chat`` setting
    that is on means chat completions)."""
    Settings: ClassVar[type[SuiteSettings]]
    metrics: ClassVar[tuple[MetricSpec, ...]]

    def run(self, backend: Backend, settings: SuiteSettings, *, baseline: SuiteRun | None = None) -> SuiteRun: ...


def runs_chosen_items(suite: type[Suite] | Suite) -> bool:
    """Whether the suite can run exactly a given list of its items (its settings have ``item_ids``)."""
    return ITEM_IDS in suite.Settings.model_fields


def declared_flags(suite: type[Suite]) -> tuple[str, ...]:
    """The check names a suite's records may fail (``checks``), for budgets on flags."""
    return tuple(getattr(suite, "checks", ()))


def with_limit(settings: SuiteSettings, limit: int) -> SuiteSettings:
    """``settings`` cut to ``limit`` items: the count, and a pinned item list cut to its first ``limit`` ids."""
    values = {**settings.model_dump(), "limit": limit}
    if values.get(ITEM_IDS) is not None:
        values[ITEM_IDS] = list(values[ITEM_IDS])[:limit]
    return type(settings).model_validate(values)


SUITES: Registry[type[Suite]] = Registry("suite", entry_points="moegate.suites")
"""Suite name -> suite class (lazy "module:Class" entries; see harness/suites/__init__.py)."""


def suite_settings(name: str, profile: str = "ci", overrides: dict[str, Any] | None = None) -> SuiteSettings:
    """Settings for suite ``name``: ``suites/<name>.toml`` ``[<profile>]`` table, then ``overrides``.

    The file's top-level keys are shared by all profiles; ``[ci]`` and ``[full]`` tables override them.
    """
    suite_cls = SUITES.get(name)
    path = suites_dir() / f"{name}.toml"
    values: dict[str, Any] = {}
    if path.is_file():
        try:
            document = tomllib.loads(path.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise UserError(f"{path}: not valid TOML ({exc})", "fix the file's syntax") from exc
        profiles = {k: v for k, v in document.items() if isinstance(v, dict) and k in ("ci", "full")}
        values = {k: v for k, v in document.items() if k not in profiles and k != "description"}
        if profile not in ("ci", "full"):
            raise UserError(f"unknown suite profile '{profile}'", "use 'ci' or 'full'")
        values.update(profiles.get(profile, {}))
    values.update(overrides or {})
    try:
        return suite_cls.Settings(**values)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise UserError(f"suite '{name}' setting '{where}': {first['msg']}", f"fix it in {path} or in the gate file") from exc
