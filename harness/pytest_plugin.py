"""pytest plugin (entry point ``pytest11``): a gate run as one test per capability.

``pytest --moegate-gate gates/x.toml --moegate-candidate DIR`` adds one item per budget; the gate
runs once, lazily, when the first item runs. Failures carry the change, its interval, the budget and
the worst flipped items, so ``--junitxml`` output reads well in any CI. Without the options the
plugin does nothing and imports nothing heavy.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

_OUTCOME = pytest.StashKey[dict[str, Any]]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("moegate", "moegate regression gate")
    group.addoption("--moegate-gate", default=None, help="gate file (gates/<model>.toml): one test per capability")
    group.addoption("--moegate-candidate", default=None, help="candidate checkpoint (path, hub id or served model)")
    group.addoption("--moegate-report-dir", default=None, help="where to write the gate's reports")
    group.addoption("--moegate-backend", default=None, help="candidate backend (default: the gate's baseline backend)")


class CapabilityItem(pytest.Item):
    """One budget of the gate; passes, fails or skips on that capability's verdict."""

    def __init__(self, *, label: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.label = label

    def runtest(self) -> None:
        state = _run_gate_once(self.config)
        cap = next(c for c in state["verdict"].capabilities if c.label == self.label)
        if cap.status == "PASS":
            return
        if cap.status == "INCONCLUSIVE" and state["verdict"].policy.inconclusive == "pass":
            pytest.skip(f"INCONCLUSIVE (tolerated by the gate's policy): {cap.reason}")
        raise CapabilityFailure(cap.explain())

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> str:
        if isinstance(excinfo.value, CapabilityFailure):
            return str(excinfo.value)
        return super().repr_failure(excinfo, style=style)  # type: ignore[arg-type]

    def reportinfo(self) -> tuple[Path, int, str]:
        return Path(self.config.getoption("--moegate-gate")), 0, f"moegate capability: {self.label}"


class CapabilityFailure(Exception):
    """A capability that did not pass (its message is the explanation shown by pytest)."""


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    gate_path = config.getoption("--moegate-gate")
    if not gate_path:
        return
    if not config.getoption("--moegate-candidate"):
        raise pytest.UsageError("--moegate-gate needs --moegate-candidate (the checkpoint to gate)")
    from harness.errors import UserError
    from harness.gate.config import load_gate

    try:
        gate = load_gate(gate_path)
    except UserError as exc:
        raise pytest.UsageError(exc.line()) from exc
    config.stash[_OUTCOME] = {"gate": gate}
    for budget in gate.budgets:
        items.append(CapabilityItem.from_parent(session, name=f"moegate[{budget.display_label}]", label=budget.display_label))


def _run_gate_once(config: pytest.Config) -> dict[str, Any]:
    state = config.stash[_OUTCOME]
    if "verdict" in state:
        return state
    if "error" in state:
        raise CapabilityFailure(state["error"])
    from harness.cli.gate import default_run_dir
    from harness.errors import UserError
    from harness.gate.config import ModelSpec
    from harness.gate.run import gate_candidate

    gate = state["gate"]
    candidate = config.getoption("--moegate-candidate")
    backend = config.getoption("--moegate-backend") or gate.baseline.backend
    report_dir = config.getoption("--moegate-report-dir")
    run_dir = Path(report_dir) if report_dir else default_run_dir(gate.name, candidate)
    try:
        outcome = gate_candidate(gate, ModelSpec(model=candidate, backend=backend), run_dir)
    except UserError as exc:
        state["error"] = f"gate could not run: {exc.line()}"
        raise CapabilityFailure(state["error"]) from exc
    state["verdict"] = outcome.verdict
    state["reports"] = outcome.reports
    return state


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    state = config.stash.get(_OUTCOME, None)
    if not state or "verdict" not in state:
        return
    terminalreporter.section("moegate gate")
    terminalreporter.write_line(state["verdict"].summary())
    for kind, path in state["reports"].items():
        terminalreporter.write_line(f"report ({kind}): {path}")
