"""pytest plugin (entry point ``pytest11``): ``--moegate-gate`` / ``--moegate-candidate``.

``pytest --moegate-gate gates/x.toml --moegate-candidate DIR`` adds one test per capability (budget)
of the gate, so CI systems that read JUnit XML see each capability pass or fail on its own. The gate
runs once per session, lazily, when the first capability test runs. Imports nothing heavy unless the
options are used.

pytest loads this module through the ``pytest11`` entry point, so it only ever runs inside pytest;
pytest is an optional dependency of moegate (``pip install 'moegate[test]'``) and nothing else in
``harness`` imports this module.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

try:
    import pytest
except ImportError as exc:  # pragma: no cover - only when imported by hand without pytest
    raise ImportError("harness.pytest_plugin is moegate's pytest plugin: install pytest (pip install 'moegate[test]')") from exc

if TYPE_CHECKING:
    from harness.api import GateOutcome

_OUTCOME = pytest.StashKey["GateOutcome | Exception"]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("moegate", "moegate regression gate")
    group.addoption("--moegate-gate", default=None, help="gate file (gates/<model>.toml): one test per capability")
    group.addoption("--moegate-candidate", default=None, help="candidate checkpoint (path, hub id or server URL)")
    group.addoption("--moegate-report-dir", default=None, help="where to write the gate's reports")
    group.addoption("--moegate-backend", default=None, help="candidate backend (default: the gate's baseline backend)")


def pytest_configure(config: pytest.Config) -> None:
    if config.getoption("--moegate-gate") and not config.getoption("--moegate-candidate"):
        raise pytest.UsageError("--moegate-gate needs --moegate-candidate DIR (the checkpoint to gate)")


class CapabilityFailed(Exception):
    """A capability that did not PASS; the message is the whole explanation."""


class GateFile(pytest.File):
    """The gate file as a collector: its budgets become the capability tests."""

    def collect(self):
        from harness.api import load_gate
        from harness.errors import UserError

        try:
            gate = load_gate(self.path)
        except UserError as exc:
            raise pytest.UsageError(f"moegate: {exc.line()}") from exc
        for index, budget in enumerate(gate.budgets):
            yield CapabilityItem.from_parent(self, name=f"moegate[{budget.display_label}]", index=index)


class CapabilityItem(pytest.Item):
    def __init__(self, *, index: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.index = index

    def runtest(self) -> None:
        outcome = _gate_outcome(self.config)
        if isinstance(outcome, Exception):
            raise outcome
        cap = outcome.verdict.capabilities[self.index]
        policy = outcome.verdict.policy
        if cap.status == "PASS" or (cap.status == "INCONCLUSIVE" and policy.inconclusive == "pass"):
            return
        raise CapabilityFailed(_failure_message(cap, outcome))

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style=None) -> str:
        if isinstance(excinfo.value, CapabilityFailed):
            return str(excinfo.value)
        from harness.errors import UserError

        if isinstance(excinfo.value, UserError):
            return f"moegate: {excinfo.value.line()}"
        return super().repr_failure(excinfo, style=style)

    def reportinfo(self) -> tuple[Path, int | None, str]:
        return self.path, None, f"moegate capability: {self.name}"


def _failure_message(cap: Any, outcome: GateOutcome) -> str:
    interval = f"[{cap.ci_low:.4g}, {cap.ci_high:.4g}]" if cap.ci_low is not None and cap.ci_high is not None else "n/a"
    change = f"{cap.change:.4g}" if cap.change is not None else "n/a"
    lines = [
        cap.explain(max_items=5),
        f"change {change} ({cap.kind}), interval {interval}, budget {cap.budget:g}",
        f"report: {outcome.reports.get('html', outcome.run_dir)}",
    ]
    return "\n".join(lines)


def _gate_outcome(config: pytest.Config) -> GateOutcome | Exception:
    """Run the gate once per session; later capability tests reuse the outcome (or the error)."""
    if _OUTCOME in config.stash:
        return config.stash[_OUTCOME]
    from harness.api import default_run_dir, gate_candidate, load_gate
    from harness.errors import UserError

    try:
        gate = load_gate(config.getoption("--moegate-gate"))
        candidate = config.getoption("--moegate-candidate")
        report_dir = config.getoption("--moegate-report-dir")
        run_dir = Path(report_dir) if report_dir else default_run_dir(gate.name, candidate)
        result: GateOutcome | Exception = gate_candidate(gate, candidate, run_dir,
                                                         backend=config.getoption("--moegate-backend"))
    except UserError as exc:
        result = exc
    config.stash[_OUTCOME] = result
    return result


def _gate_path(config: pytest.Config) -> Path | None:
    option = config.getoption("--moegate-gate")
    return Path(option).expanduser().resolve() if option else None


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> GateFile | None:
    """``pytest gates/x.toml --moegate-gate gates/x.toml ...`` collects the gate file itself."""
    if file_path.resolve() == _gate_path(parent.config):
        return GateFile.from_parent(parent, path=file_path)
    return None


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    """Add the capability tests when the gate file was not among the collected paths."""
    gate_path = _gate_path(config)
    if gate_path is None or any(isinstance(item, CapabilityItem) for item in items):
        return
    if not gate_path.is_file():
        raise pytest.UsageError(f"moegate: gate file {gate_path} not found")
    items.extend(GateFile.from_parent(session, path=gate_path).collect())


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    outcome = config.stash.get(_OUTCOME, None)
    if outcome is None:
        return
    terminalreporter.section("moegate gate")
    if isinstance(outcome, Exception):
        terminalreporter.write_line(f"error: {outcome}")
        return
    terminalreporter.write_line(outcome.verdict.summary())
    for kind, path in outcome.reports.items():
        terminalreporter.write_line(f"report ({kind}): {path}")
