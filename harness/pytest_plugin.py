"""pytest plugin (entry point ``pytest11``): ``--moegate-gate`` / ``--moegate-candidate``.

Imports nothing heavy unless the options are used.
"""

from __future__ import annotations

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("moegate", "moegate regression gate")
    group.addoption("--moegate-gate", default=None, help="gate file (gates/<model>.toml): one test per capability")
    group.addoption("--moegate-candidate", default=None, help="candidate checkpoint (path, hub id or server URL)")
    group.addoption("--moegate-report-dir", default=None, help="where to write the gate's reports")
