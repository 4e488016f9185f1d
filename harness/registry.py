"""One registry type for suites and backends: lazy ``"module:attr"`` entries, clear errors, no silent overwrite.

A registry may also read an entry point group (``moegate.suites``), so a user's installed package adds
a suite without editing moegate: ``[project.entry-points."moegate.suites"] my_suite = "my_pkg.suite:MySuite"``.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable, Iterator
from importlib import metadata
from typing import Generic, TypeVar

from harness.errors import UserError

T = TypeVar("T")


class Registry(Generic[T]):
    """Name -> object, where an entry may be the object or a lazy ``"package.module:attr"`` string.

    Lazy entries keep ``import harness`` cheap: torch, lm-eval and friends load only when used. A name
    registered twice is an error (a third-party suite cannot silently replace a built-in one).
    """

    def __init__(self, kind: str, *, entry_points: str | None = None) -> None:
        self.kind = kind
        self.group = entry_points
        self._entries: dict[str, T | str] = {}
        self._sources: dict[str, str] = {}
        self._plugins_loaded = entry_points is None

    def register(self, name: str, target: T | str | None = None, *, source: str = "moegate") -> Callable[[T], T] | None:
        """Register ``target`` under ``name``; without ``target`` it works as a decorator."""
        if target is not None:
            self._add(name, target, source)
            return None

        def decorate(obj: T) -> T:
            self._add(name, obj, source)
            return obj

        return decorate

    def _add(self, name: str, target: T | str, source: str) -> None:
        if name in self._entries:
            raise UserError(
                f"{self.kind} '{name}' is registered twice (by {self._sources[name]} and by {source})",
                f"rename one of them; a {self.kind} name must be unique",
            )
        self._entries[name] = target
        self._sources[name] = source

    def _load_plugins(self) -> None:
        """Entry points of the group, registered lazily (their modules load only when the entry is used)."""
        if self._plugins_loaded:
            return
        self._plugins_loaded = True
        assert self.group is not None
        for entry in sorted(metadata.entry_points(group=self.group), key=lambda e: e.name):
            package = entry.dist.name if entry.dist is not None else "an installed package"
            self._add(entry.name, entry.value, f"{package} (entry point group {self.group})")

    def get(self, name: str) -> T:
        self._load_plugins()
        if name not in self._entries:
            close = difflib.get_close_matches(name, list(self._entries), n=1)
            hint = f"did you mean '{close[0]}'?" if close else f"known: {', '.join(sorted(self._entries))}"
            raise UserError(f"unknown {self.kind} '{name}'", hint)
        entry = self._entries[name]
        if isinstance(entry, str):
            module_name, _, attr = entry.partition(":")
            try:
                entry = getattr(importlib.import_module(module_name), attr)
            except (ImportError, AttributeError) as exc:
                raise UserError(f"{self.kind} '{name}' ({entry}, from {self._sources[name]}) cannot be imported: {exc}",
                                "install the package that provides it, or fix its entry point") from None
            self._entries[name] = entry
        return entry  # type: ignore[return-value]

    def names(self) -> list[str]:
        self._load_plugins()
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        self._load_plugins()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def snapshot(self) -> dict[str, tuple[T | str, str]]:
        self._load_plugins()
        return {name: (entry, self._sources[name]) for name, entry in self._entries.items()}

    def restore(self, entries: dict[str, tuple[T | str, str]]) -> None:
        """Reset to a snapshot (tests register temporary entries)."""
        self._entries = {name: entry for name, (entry, _) in entries.items()}
        self._sources = {name: source for name, (_, source) in entries.items()}
