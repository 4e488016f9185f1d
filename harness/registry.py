"""One registry type for suites, detectors and backends: lazy ``"module:attr"`` entries, clear errors."""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from harness.errors import UserError

T = TypeVar("T")


class Registry(Generic[T]):
    """Name -> object, where an entry may be the object or a lazy ``"package.module:attr"`` string.

    Lazy entries keep ``import harness`` cheap: torch, lm-eval and friends load only when used.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T | str] = {}

    def register(self, name: str, target: T | str | None = None) -> Callable[[T], T] | None:
        """Register ``target`` under ``name``; without ``target`` it works as a decorator."""
        if target is not None:
            self._entries[name] = target
            return None

        def decorate(obj: T) -> T:
            self._entries[name] = obj
            return obj

        return decorate

    def get(self, name: str) -> T:
        if name not in self._entries:
            close = difflib.get_close_matches(name, list(self._entries), n=1)
            hint = f"did you mean '{close[0]}'?" if close else f"known: {', '.join(sorted(self._entries))}"
            raise UserError(f"unknown {self.kind} '{name}'", hint)
        entry = self._entries[name]
        if isinstance(entry, str):
            module_name, _, attr = entry.partition(":")
            entry = getattr(importlib.import_module(module_name), attr)
            self._entries[name] = entry
        return entry  # type: ignore[return-value]

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def snapshot(self) -> dict[str, T | str]:
        return dict(self._entries)

    def restore(self, entries: dict[str, T | str]) -> None:
        """Reset to a snapshot (tests register temporary entries)."""
        self._entries = dict(entries)
