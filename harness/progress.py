"""One progress bar helper for long work: rich on a terminal, silent in CI logs and tests.

Quiet when stderr is not a TTY or ``MOEGATE_QUIET=1``, so logs stay readable and pytest output clean.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol


class Advance(Protocol):
    def __call__(self, n: int = 1) -> None: ...


def progress_enabled() -> bool:
    return os.environ.get("MOEGATE_QUIET", "") not in ("1", "true", "yes") and sys.stderr.isatty()


@contextmanager
def progress_bar(total: int, description: str) -> Iterator[Advance]:
    """Yield ``advance(n=1)``; draws a rich bar on stderr only when it helps a person watching.

    Example::

        with progress_bar(len(items), "scoring") as advance:
            for item in items:
                ...
                advance()
    """
    if not progress_enabled() or total <= 0:
        yield lambda n=1: None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = (
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
    )
    with Progress(*columns, console=Console(stderr=True), transient=False) as progress:
        task = progress.add_task(description, total=total)
        yield lambda n=1: progress.advance(task, n)
