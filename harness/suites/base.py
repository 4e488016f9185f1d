"""What a suite is, and the registry that finds one by name.

A suite is a small class: pinned settings (a pydantic model, defaults in ``suites/<name>.toml``),
the metrics it reports, and ``run(backend, settings) -> SuiteRun``. Suites know nothing of the gate.
A suite that can run exactly a given list of its items (by record ``item_id``, in that order) names
that setting in an optional ``item_ids_setting`` class attribute; sequential gate runs need it.
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


S = TypeVar("S", bound=SuiteSettings)


def as_settings(settings: SuiteSettings, cls: type[S]) -> S:
    """``settings`` as the suite's own class: ``run`` takes any ``SuiteSettings`` and validates them again."""
    return settings if isinstance(settings, cls) else cls.model_validate(settings.model_dump())


class Suite(Protocol):
    name: ClassVar[str]
    request_kinds: ClassVar[frozenset[str]]
    """Backend request kinds it sends: ``generate``, ``loglikelihood``, ``loglikelihood_rolling`` (what
    ``moegate serve-check`` needs to say which suites a server can run; ``generate`` with a ``chat`` setting
    that is on means chat completions)."""
    Settings: ClassVar[type[SuiteSettings]]
    metrics: ClassVar[tuple[MetricSpec, ...]]

    def run(self, backend: Backend, settings: SuiteSettings) -> SuiteRun: ...


SUITES: Registry[type[Suite]] = Registry("suite")
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
