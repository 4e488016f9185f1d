"""The ``testbed`` keyword for commands that take a local checkpoint, as ``moegate eval`` and gate files accept it."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def testbed_keyword(_ctx: Any, _param: Any, value: Any) -> Any:
    """Click callback: ``testbed`` names the built-in test bed's folder (built on first use).

    A real file or folder called ``testbed`` in the working directory wins over the keyword.
    """
    from harness.api import TESTBED, resolve_testbed

    if value is None or str(value) != TESTBED or Path(value).exists():
        return value
    path = resolve_testbed(TESTBED)
    return Path(path) if isinstance(value, Path) else path
