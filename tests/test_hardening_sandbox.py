"""Escape attempts against the code sandbox beyond tests/test_sandbox.py: low-level spellings of the
same actions (``os.open``, ``io.FileIO``, symlinks, ``_posixsubprocess``), and processes started
around the Python hook must still die with the run.

``_posixsubprocess.fork_exec`` raised no audit event and let a program exec ``/bin/cat`` on the
user's home; the hook refuses it at import, and seccomp refuses the fork and the exec.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from harness.sandbox import run_sandboxed
from tests.test_sandbox import _kernel_isolated, _processes_with_home_under, sandbox_tmp  # noqa: F401 - fixture

FORK_EXEC = """
import _posixsubprocess, os
r, w = os.pipe(); er, ew = os.pipe()
args = [{argv!r}, [{exe!r}.encode()], True, (), None, None, -1, -1, -1, w, -1, -1, er, ew, False, {setsid}, -1,
        None, None, None, -1, None]
try:
    pid = _posixsubprocess.fork_exec(*args, False)
except TypeError:
    pid = _posixsubprocess.fork_exec(*args)
os.close(w)
print('GOT', os.read(r, 100) if {wait} else pid)
"""


@pytest.fixture
def secret(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    path = home / ".ssh" / "id_rsa"
    path.write_text("TOP-SECRET-KEY")
    monkeypatch.setenv("HOME", str(home))
    return path


READ_HOME = {
    "symlink": lambda s: f"import os\nos.symlink({s!r}, 'link')\nprint(open('link').read())",
    "FileIO": lambda s: f"import io\nprint(io.FileIO({s!r}).read())",
    "os.open": lambda s: f"import os\nfd = os.open({s!r}, os.O_RDONLY)\nprint(os.read(fd, 100))",
    "pathlib": lambda s: f"import pathlib\nprint(pathlib.Path({s!r}).read_bytes())",
    "fork_exec cat": lambda s: FORK_EXEC.format(argv=["/bin/cat", s], exe="/bin/cat", setsid=False, wait=True),
}


@pytest.mark.parametrize("spelling", list(READ_HOME))
def test_home_stays_unreadable_by_any_spelling(spelling: str, secret: Path, sandbox_tmp: Path) -> None:  # noqa: F811
    result = run_sandboxed(READ_HOME[spelling](str(secret)), timeout_s=5)
    assert not result.passed and "TOP-SECRET" not in result.stdout_tail, result.stdout_tail


@pytest.mark.parametrize("program", [
    "import os\nfd = os.open({target!r}, os.O_WRONLY | os.O_CREAT)\nos.write(fd, b'x')",
    "import io\nio.FileIO({target!r}, 'w').write(b'x')",
    "import os\nos.link('/etc/hostname', {target!r})",
])
def test_no_write_outside_by_any_spelling(program: str, tmp_path: Path, sandbox_tmp: Path) -> None:  # noqa: F811
    target = tmp_path / "escaped"
    result = run_sandboxed(program.format(target=str(target)), timeout_s=5)
    assert not result.passed and not target.exists()


def test_processes_started_around_the_hook_die_with_the_run(sandbox_tmp: Path) -> None:  # noqa: F811
    """Kernel layer alone (hook off): a setsid'd ``sleep`` exec'd directly is refused by seccomp; where
    it could start, it must not outlive the run."""
    program = FORK_EXEC.format(argv=["/bin/sleep", "60"], exe="/bin/sleep", setsid=True, wait=False)
    result = run_sandboxed(program, timeout_s=5, audit_hook=False)
    if str(result.isolation.get("syscalls")).startswith("seccomp"):
        assert not result.passed and "Operation not permitted" in result.stderr_tail, result.stderr_tail
    time.sleep(0.2)
    assert _processes_with_home_under(sandbox_tmp) == []
    leftover = [p for p in os.listdir("/proc") if p.isdigit() and _cmdline(p) == b"/bin/sleep\x0060\x00"]
    assert leftover == [] or not _kernel_isolated(result)


def _cmdline(pid: str) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def test_timeout_holds_against_signal_handlers(sandbox_tmp: Path) -> None:  # noqa: F811
    program = "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nwhile True:\n    time.sleep(0.1)"
    result = run_sandboxed(program, timeout_s=1.5)
    assert result.status == "timeout" and result.seconds < 10
