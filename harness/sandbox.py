"""Run untrusted generated code (HumanEval completions) outside the moegate process.

Each call starts ``python -I -S -B harness/_sandbox_child.py`` in its own session (process group)
with a private temp dir as cwd, HOME and TMPDIR, a minimal environment, and a wall-clock timeout;
afterwards its whole process group is SIGKILLed, any process still carrying this run's token in its
environment is SIGKILLed, and the temp dir is removed.

What is enforced where (Linux):

- **Kernel**, always: address-space limit (``RLIMIT_AS``), CPU seconds (``RLIMIT_CPU``), file size
  (``RLIMIT_FSIZE``), no core files, open-file cap, the wall timeout and the kill of the process group.
- **Kernel**, when unprivileged user namespaces are allowed (reported in ``SandboxResult.isolation``):
  a new network namespace (no usable interface: no network at all), a new PID namespace whose init is
  the program (every process it leaves behind dies with it, even after ``setsid``), and a process cap
  (``RLIMIT_NPROC``; it is not enforced for root outside a user namespace).
- **Python audit hook** (defence in depth; native code could bypass it, which is why ``ctypes`` is
  refused): no sockets, subprocesses, fork/exec, signals to other processes, file writes or
  renames/removals outside the temp dir, and no reads under the user's home (except the Python
  installation itself).

It does not protect against a kernel exploit; run CI on throwaway machines as usual.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

SandboxStatus = Literal["passed", "failed", "timeout", "error"]

_CHILD = Path(__file__).with_name("_sandbox_child.py")
TOKEN_VAR = "MOEGATE_SANDBOX_TOKEN"


@dataclass(frozen=True)
class SandboxResult:
    passed: bool
    status: SandboxStatus
    """``passed``: exit 0. ``failed``: non-zero exit (assertion, exception, memory, refused action).
    ``timeout``: wall or CPU limit. ``error``: the sandbox itself could not run the program."""
    stdout_tail: str = ""
    stderr_tail: str = ""
    returncode: int | None = None
    seconds: float = 0.0
    isolation: dict[str, object] = field(default_factory=dict)
    """What the child managed to set up (namespaces, limits), for reports and tests."""


def run_sandboxed(
    code: str,
    *,
    timeout_s: float = 10.0,
    memory_mb: int = 1024,
    cpu_s: int = 10,
    max_procs: int = 16,
    tail_chars: int = 2000,
    audit_hook: bool = True,
) -> SandboxResult:
    """Run ``code`` as a Python program in a fresh sandboxed subprocess; exit status 0 means passed.

    ``audit_hook=False`` leaves only the kernel's enforcement (tests use it to check that layer alone).
    """
    token = uuid.uuid4().hex
    root = Path(tempfile.mkdtemp(prefix="moegate-sandbox-"))
    start = time.monotonic()
    proc: subprocess.Popen[bytes] | None = None
    try:
        workdir = root / "work"
        workdir.mkdir()
        program = root / "program.py"
        program.write_text(code, encoding="utf-8")
        config = {
            "program": str(program),
            "workdir": str(workdir),
            "readable": sorted(
                {sys.base_prefix, sys.base_exec_prefix, sys.prefix, sys.exec_prefix, str(_CHILD.parent)}
            ),
            "denied": sorted({str(Path.home()), os.path.expanduser("~"), "/root", "/home"}),
            "report": str(root / "report.json"),
            "memory_mb": memory_mb,
            "cpu_s": cpu_s,
            "max_procs": max_procs,
            "audit_hook": audit_hook,
        }
        (root / "config.json").write_text(json.dumps(config), encoding="utf-8")
        env = {
            "HOME": str(workdir),
            "TMPDIR": str(workdir),
            "PATH": "/usr/bin:/bin",
            "LANG": "C.UTF-8",
            "LC_ALL": "C.UTF-8",
            TOKEN_VAR: token,
        }
        with (root / "stdout").open("wb") as out, (root / "stderr").open("wb") as err:
            try:
                proc = subprocess.Popen(
                    [sys.executable, "-I", "-S", "-B", str(_CHILD), str(root / "config.json")],
                    cwd=workdir,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=err,
                    start_new_session=True,
                    close_fds=True,
                )
            except OSError as exc:
                return SandboxResult(False, "error", stderr_tail=f"could not start the sandbox: {exc}")
            timed_out = False
            try:
                returncode = proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                timed_out = True
                _kill_group(proc.pid)
                returncode = proc.wait()
        _kill_group(proc.pid)
        _kill_tokened(token)
        stdout = _tail(root / "stdout", tail_chars)
        stderr = _tail(root / "stderr", tail_chars)
        isolation = _read_json(root / "report.json")
        status = _status(returncode, timed_out, isolation, stderr)
        return SandboxResult(
            status == "passed", status, stdout, stderr, returncode, time.monotonic() - start, isolation
        )
    finally:
        if proc is not None:
            _kill_group(proc.pid)
            _kill_tokened(token)
        shutil.rmtree(root, ignore_errors=True)


def _status(returncode: int, timed_out: bool, isolation: dict[str, object], stderr: str) -> SandboxStatus:
    if timed_out:
        return "timeout"
    if not isolation:
        return "error"  # the launcher died before it could set up; nothing of the program ran
    if returncode == 0:
        return "passed"
    cpu_signals = {signal.SIGXCPU, signal.SIGKILL}
    if returncode in {128 + int(s) for s in cpu_signals} or returncode in {-int(s) for s in cpu_signals}:
        return "timeout"
    return "failed"


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def processes_with_token(token: str) -> list[int]:
    """PIDs whose environment carries ``token`` (a sandbox run's marker), found by scanning /proc."""
    needle = f"{TOKEN_VAR}={token}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            environ = Path(f"/proc/{entry}/environ").read_bytes()
        except OSError:
            continue
        if needle in environ.split(b"\0"):
            found.append(int(entry))
    return found


def _kill_tokened(token: str) -> None:
    """Kill escapees (a ``setsid`` child left the process group) by the token in their environment."""
    for _ in range(3):
        pids = processes_with_token(token)
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)


def _tail(path: Path, chars: int) -> str:
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - chars * 4))
            return handle.read().decode("utf-8", "replace")[-chars:]
    except OSError:
        return ""


def _read_json(path: Path) -> dict[str, object]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}
