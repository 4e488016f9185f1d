"""The sandbox scores hostile programs as failed, leaves no process and no file behind, shows the
program only its minimal tree, still runs ordinary programs, and refuses to run without kernel walls
unless the user allowed it. Escape attempts: tests/test_sandbox_escapes.py."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

import harness.sandbox
from harness.errors import UserError
from harness.sandbox import ALLOW_UNSANDBOXED_VAR, SandboxResult, require_kernel_isolation, run_sandboxed


@pytest.fixture
def sandbox_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Make the sandbox create its temp dirs under a folder of our own, so we can check for leftovers."""
    base = tmp_path / "sandboxes"
    base.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(base))
    yield base
    assert list(base.iterdir()) == [], "sandbox temp dir left behind"
    assert _processes_with_home_under(base) == [], "sandbox processes left behind"


def _processes_with_home_under(base: Path) -> list[int]:
    """PIDs whose environment has HOME inside ``base`` (each sandbox sets HOME to its own temp dir)."""
    needle = f"HOME={base}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            variables = Path(f"/proc/{entry}/environ").read_bytes().split(b"\0")
            state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z" and any(v.startswith(needle) for v in variables):
            found.append(int(entry))
    return found


def _kernel_isolated(result: SandboxResult) -> bool:
    return bool(result.isolation.get("kernel_isolated"))


def test_passing_and_failing_programs(sandbox_tmp: Path) -> None:
    ok = run_sandboxed("def f(x):\n    return x + 1\nassert f(1) == 2\nprint('fine')", timeout_s=10)
    assert ok.passed and ok.status == "passed" and "fine" in ok.stdout_tail
    bad = run_sandboxed("assert 1 + 1 == 3", timeout_s=10)
    assert not bad.passed and bad.status == "failed" and "AssertionError" in bad.stderr_tail
    syntax = run_sandboxed("def f(:\n    pass", timeout_s=10)
    assert syntax.status == "failed" and "SyntaxError" in syntax.stderr_tail
    exited = run_sandboxed("import sys\nsys.exit(3)", timeout_s=10)
    assert exited.status == "failed" and exited.returncode == 3


def test_infinite_loop_times_out(sandbox_tmp: Path) -> None:
    result = run_sandboxed("while True:\n    pass", timeout_s=2, cpu_s=1)
    assert not result.passed and result.status == "timeout"
    assert result.seconds < 10


def test_sleeping_forever_hits_the_wall_timeout(sandbox_tmp: Path) -> None:
    result = run_sandboxed("import time\ntime.sleep(60)", timeout_s=1.5)
    assert result.status == "timeout" and result.seconds < 10


def test_fork_bomb_is_refused(sandbox_tmp: Path) -> None:
    result = run_sandboxed("import os\nwhile True:\n    os.fork()", timeout_s=3)
    assert not result.passed and result.status == "failed"


def test_fork_bomb_is_bounded_by_the_kernel_and_cleaned_up(sandbox_tmp: Path) -> None:
    """Without the Python hook: seccomp refuses the first fork (RLIMIT_NPROC would not stop root), and
    the PID namespace, the group kill and the token scan would end any child, even one that ``setsid``."""
    program = (
        "import os, time\n"
        "made = 0\n"
        "while made < 200:\n"
        "    try:\n"
        "        pid = os.fork()\n"
        "    except OSError:\n"
        "        break\n"
        "    if pid == 0:\n"
        "        os.setsid()\n"  # try to escape the process group
        "        time.sleep(60)\n"
        "        os._exit(0)\n"
        "    made += 1\n"
        "print('forked', made)\n"
        "raise SystemExit(1)\n"
    )
    result = run_sandboxed(program, timeout_s=5, max_procs=8, audit_hook=False)
    assert not result.passed
    made = int(result.stdout_tail.split()[-1])
    if str(result.isolation.get("syscalls")).startswith("seccomp"):
        assert made == 0, "seccomp did not refuse fork"
    elif os.getuid() != 0:
        assert made < 200, "RLIMIT_NPROC did not stop the fork bomb"


def test_huge_allocation_fails(sandbox_tmp: Path) -> None:
    result = run_sandboxed("block = bytearray(50 * 1024**3)\nprint(len(block))", timeout_s=5, memory_mb=512)
    assert not result.passed and result.status == "failed" and "MemoryError" in result.stderr_tail


def test_file_size_and_open_files_are_capped(sandbox_tmp: Path) -> None:
    """RLIMIT_FSIZE (16 MiB a file) and RLIMIT_NOFILE (256), the kernel alone (hook off)."""
    program = (
        "import os\nwritten = 0\n"
        "try:\n"
        "    with open('big', 'wb', buffering=0) as f:\n"
        "        for _ in range(20):\n"
        "            written += f.write(bytes(1 << 20))\n"
        "except OSError as exc:\n"
        "    print('stopped', exc.errno)\n"
        "handles = []\n"
        "try:\n"
        "    for i in range(400):\n"
        "        handles.append(open('/dev/null'))\n"
        "except OSError as exc:\n"
        "    print('stopped', exc.errno)\n"
        "print('MB', written >> 20, 'files', len(handles))\n"
    )
    result = run_sandboxed(program, timeout_s=10, audit_hook=False)
    words = result.stdout_tail.split()
    assert words[-4:-1] == ["MB", "16", "files"] and int(words[-1]) < 256, result.stdout_tail
    assert result.stdout_tail.count("stopped") == 2, result.stderr_tail


def test_writing_outside_its_dir_is_refused(sandbox_tmp: Path, tmp_path: Path) -> None:
    target = tmp_path / "escaped.txt"
    program = f"open({str(target)!r}, 'w').write('pwned')\n"
    result = run_sandboxed(program, timeout_s=5)
    assert not result.passed and not target.exists()
    renamed = run_sandboxed(
        f"import os\nopen('x', 'w').write('1')\nos.rename('x', {str(target)!r})", timeout_s=5
    )
    assert not renamed.passed and not target.exists()
    inside = run_sandboxed(
        "open('scratch.txt', 'w').write('ok')\nassert open('scratch.txt').read() == 'ok'", timeout_s=5
    )
    assert inside.passed, inside.stderr_tail


def test_socket_is_refused(sandbox_tmp: Path) -> None:
    program = "import socket\ns = socket.create_connection(('127.0.0.1', 22), timeout=1)\nprint('connected')"
    result = run_sandboxed(program, timeout_s=5)
    assert not result.passed and "connected" not in result.stdout_tail


def test_network_is_absent_at_kernel_level(sandbox_tmp: Path) -> None:
    program = (
        "import socket\n"
        "s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)\n"
        "s.settimeout(1)\n"
        "s.connect(('1.1.1.1', 80))\n"
        "print('connected')\n"
    )
    result = run_sandboxed(program, timeout_s=5, audit_hook=False)
    if not _kernel_isolated(result):
        pytest.skip(f"no kernel isolation here: {result.isolation}")
    assert not result.passed and "connected" not in result.stdout_tail
    # seccomp refuses the socket; without it the network namespace has no route
    assert "operation not permitted" in result.stderr_tail.lower() or "unreachable" in result.stderr_tail.lower()


def test_home_secrets_are_not_readable(
    sandbox_tmp: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    secret = home / ".ssh" / "id_rsa"
    secret.write_text("TOP-SECRET-KEY")
    monkeypatch.setenv("HOME", str(home))
    by_path = run_sandboxed(f"print(open({str(secret)!r}).read())", timeout_s=5)
    assert not by_path.passed and "TOP-SECRET" not in by_path.stdout_tail
    by_tilde = run_sandboxed(
        "import os\nprint(open(os.path.expanduser('~/.ssh/id_rsa')).read())", timeout_s=5
    )
    assert not by_tilde.passed and "TOP-SECRET" not in by_tilde.stdout_tail


def test_subprocess_and_ctypes_are_refused(sandbox_tmp: Path) -> None:
    shell = run_sandboxed("import subprocess\nsubprocess.run(['true'])", timeout_s=5)
    assert not shell.passed and "not allowed" in shell.stderr_tail
    native = run_sandboxed("import ctypes\nctypes.CDLL(None)", timeout_s=5)
    assert not native.passed


ORDINARY = """
import bisect, collections, copy, datetime, decimal, fractions, functools, hashlib, heapq, itertools, json
import math, random, re, string, sys, tempfile, threading, typing
assert hashlib.md5(b"moegate").hexdigest() == "c174d9e69f59f667d7b1ad7e372e4e75"
assert random.Random(1).random() > 0 and len(__import__("os").urandom(8)) == 8
seen = []
worker = threading.Thread(target=seen.append, args=(1,))
worker.start()
worker.join()
assert seen == [1]
with tempfile.NamedTemporaryFile("w") as handle:
    handle.write("scratch")
with open("/dev/null", "w") as sink:
    sink.write("x")
print("ordinary", sys.version_info[:2])
"""


@pytest.mark.parametrize("isolation", ["best", "landlock"])
def test_ordinary_programs_run_behind_each_wall(isolation: str, sandbox_tmp: Path) -> None:
    """The standard library (what HumanEval's programs import, and more), threads, the temp dir, /dev."""
    result = run_sandboxed(ORDINARY, timeout_s=10, isolation=isolation)  # type: ignore[arg-type]
    if not result.isolation.get("kernel_isolated"):
        pytest.skip(f"no {isolation} here: {result.isolation}")
    assert result.passed, result.stderr_tail
    assert "ordinary" in result.stdout_tail


def test_the_mount_namespace_shows_a_minimal_read_only_tree(sandbox_tmp: Path) -> None:
    program = (
        "import json, os, sys\n"
        "print(json.dumps([sorted(os.listdir(d)) for d in ('/', '/dev', '/etc', '/tmp')] + [os.getpid()]))\n"
        "for target in ('/usr/moegate-test', sys.prefix + '/moegate-test', '/moegate-test'):\n"
        "    try:\n"
        "        open(target, 'w')\n"
        "        print('WROTE', target)\n"
        "    except OSError as exc:\n"
        "        print('refused', exc.errno)\n"
    )
    result = run_sandboxed(program, timeout_s=10, audit_hook=False)
    if result.isolation.get("filesystem") != "mount-namespace":
        pytest.skip(f"no mount namespace here: {result.isolation}")
    top, dev, etc, tmp, pid = json.loads(result.stdout_tail.splitlines()[0])
    assert pid == 1, "the program is PID 1 of its PID namespace: every process it makes dies with it"
    assert not set(top) & {"home", "work", "proc", "sys", "var", "run", "mnt", "opt", "srv"}, top
    assert dev == ["full", "null", "random", "urandom", "zero"] and etc == ["ld.so.cache"] and tmp == []
    assert "WROTE" not in result.stdout_tail and result.stdout_tail.count("refused") == 3


def test_without_kernel_walls_nothing_runs_unless_allowed(sandbox_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ALLOW_UNSANDBOXED_VAR, raising=False)
    marker = "print('the program ran')"
    refused = run_sandboxed(marker, timeout_s=10, isolation="none")
    assert refused.status == "error" and "the program ran" not in refused.stdout_tail
    assert "refused to run the program" in refused.stderr_tail
    assert refused.isolation["kernel_isolated"] is False and refused.isolation["filesystem"] == "none"
    monkeypatch.setenv(ALLOW_UNSANDBOXED_VAR, "1")
    allowed = run_sandboxed(marker, timeout_s=10, isolation="none")
    assert allowed.passed and "the program ran" in allowed.stdout_tail
    assert str(allowed.isolation["summary"]).startswith("UNSANDBOXED:")


def test_a_machine_without_kernel_walls_is_refused_in_one_line(
    sandbox_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the HumanEval suite checks before it generates anything; the report is a real wall-less run's."""
    report = run_sandboxed("pass", timeout_s=10, isolation="none", allow_unsandboxed=True).isolation
    monkeypatch.setattr(harness.sandbox, "kernel_isolation", lambda: report)
    monkeypatch.delenv(ALLOW_UNSANDBOXED_VAR, raising=False)
    with pytest.raises(UserError, match="no kernel sandbox for generated code") as caught:
        require_kernel_isolation()
    assert "--allow-unsandboxed" in caught.value.line() and "\n" not in caught.value.line()
    monkeypatch.setenv(ALLOW_UNSANDBOXED_VAR, "1")
    assert require_kernel_isolation().startswith("UNSANDBOXED:")
