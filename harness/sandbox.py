"""Run untrusted generated code (HumanEval completions) outside the moegate process, walled in by the kernel.

Each call starts ``python -I -S -B harness/_sandbox_child.py`` in its own session (process group)
with a minimal environment and a wall-clock timeout; afterwards its whole process group is SIGKILLed,
any process still carrying this run's token in its environment is SIGKILLed, and its temp dir is removed.

What holds, strongest first (Linux; ``SandboxResult.isolation`` says what held on each run):

- **Mount namespace** (needs a user namespace: root, or unprivileged user namespaces allowed): the
  program sees a read-only tree of the standard library and the shared libraries the interpreter
  maps, five device nodes and a private 64 MiB ``/tmp``; nothing of ``/root``, ``/home``, the checkout,
  the moegate cache, the host's ``/tmp`` or its unix sockets exists there. PID, network, IPC and UTS
  namespaces come with it: no network, and every process it leaves behind dies with it.
- **Landlock** (Linux >= 5.13), where no user namespace can be had: the same paths readable, only its
  own temp dir writable, no exec; names and metadata of other files stay visible (``stat``).
- **seccomp**, always where the architecture is known (x86_64, aarch64): no exec, no new processes
  (threads are fine), no sockets, no io_uring, ptrace, mounts, namespaces, keyrings, bpf or signals.
  Without it, Landlock is not enough (the host's unix sockets stay reachable).
- **Limits**: address space, CPU seconds, file size, no core files, open files, processes.
- **Python audit hook**, a second layer in the program's own interpreter (``_sandbox_hook.py``); no wall
  against a program written to get past it.

Where neither the mount namespace nor Landlock holds (or the network is open, or the host's unix
sockets are reachable: Landlock without seccomp, on an architecture with no syscall table), the program is not run
unless the user allowed it (``allow_unsandboxed``, or ``MOEGATE_ALLOW_UNSANDBOXED=1``, which the CLI's
``--allow-unsandboxed`` sets). A program passes only when it ran to its last line: the child then writes
a per-run token to a file the program has no path to; any early exit (``SystemExit`` with any code,
``os._exit``, a signal) leaves it missing. It does not protect against a kernel exploit.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from harness.errors import UserError

SandboxStatus = Literal["passed", "failed", "timeout", "error"]
Isolation = Literal["best", "mount-namespace", "landlock", "none"]

_CHILD = Path(__file__).with_name("_sandbox_child.py")
TOKEN_VAR = "MOEGATE_SANDBOX_TOKEN"
ALLOW_UNSANDBOXED_VAR = "MOEGATE_ALLOW_UNSANDBOXED"
TMP_MB = 64
"""Size of the private ``/tmp`` in the mount namespace (a tmpfs: everything the program may write)."""


@dataclass(frozen=True)
class SandboxResult:
    passed: bool
    status: SandboxStatus
    """``passed``: the program ran to its end (token written) and exited 0. ``failed``: anything else
    that ran (assertion, exception, early exit, memory, refused action). ``timeout``: wall or CPU limit.
    ``error``: the sandbox itself could not run the program, or refused to (no kernel isolation)."""
    stdout_tail: str = ""
    stderr_tail: str = ""
    returncode: int | None = None
    seconds: float = 0.0
    isolation: dict[str, object] = field(default_factory=dict)
    """What held (filesystem wall, namespaces, seccomp, limits, hook) and ``summary``, for reports and tests."""


def unsandboxed_allowed() -> bool:
    """The user's opt-in to running generated code without kernel isolation (the one place it is read)."""
    return os.environ.get(ALLOW_UNSANDBOXED_VAR, "").strip().lower() in ("1", "true", "yes")


def run_sandboxed(
    code: str,
    *,
    timeout_s: float = 10.0,
    memory_mb: int = 1024,
    cpu_s: int = 10,
    max_procs: int = 16,
    tail_chars: int = 2000,
    audit_hook: bool = True,
    isolation: Isolation = "best",
    allow_unsandboxed: bool | None = None,
) -> SandboxResult:
    """Run ``code`` as a Python program in a fresh sandboxed subprocess.

    ``isolation``: "best" takes the strongest wall that works here; the others force one (tests use them
    to check each wall, and ``audit_hook=False`` to check the kernel alone). ``allow_unsandboxed``: None
    reads the user's opt-in from the environment.
    """
    allowed = unsandboxed_allowed() if allow_unsandboxed is None else allow_unsandboxed
    token = uuid.uuid4().hex
    root = Path(tempfile.mkdtemp(prefix="moegate-sandbox-"))
    start = time.monotonic()
    proc: subprocess.Popen[bytes] | None = None
    try:
        workdir = root / "work"
        workdir.mkdir()
        (root / "newroot").mkdir()
        program = root / "program.py"
        program.write_text(code, encoding="utf-8")
        success_token = uuid.uuid4().hex  # written by the child only after the program's last line
        config = {
            "program": str(program),
            "token": success_token,
            "workdir": str(workdir),
            "new_root": str(root / "newroot"),
            "report": str(root / "report.json"),
            "verdict": str(root / "verdict"),
            "memory_mb": memory_mb,
            "cpu_s": cpu_s,
            "max_procs": max_procs,
            "tmp_mb": TMP_MB,
            "audit_hook": audit_hook,
            "isolation": isolation,
            "allow_unsandboxed": allowed,
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
            # A timer thread, not wait(timeout=): that polls with sleeps of up to 50 ms, the bulk of a short run.
            expired = threading.Event()
            pgid = proc.pid

            def expire() -> None:
                expired.set()
                _kill_group(pgid)

            timer = threading.Timer(timeout_s, expire)
            timer.start()
            try:
                returncode = proc.wait()
            finally:
                timer.cancel()
            timed_out = expired.is_set()
        _kill_group(proc.pid)
        _kill_tokened(token)
        stdout = _tail(root / "stdout", tail_chars)
        stderr = _tail(root / "stderr", tail_chars)
        report = _read_json(root / "report.json")
        finished = _read_bytes(root / "verdict") == success_token.encode()
        status = _status(returncode, timed_out, report, finished)
        if returncode == 0 and not finished and status == "failed":
            stderr = (stderr + "\nsandbox: exit status 0 before the program's last line: a failure\n")[-tail_chars:]
        return SandboxResult(
            status == "passed", status, stdout, stderr, returncode, time.monotonic() - start, report
        )
    finally:
        if proc is not None:
            _kill_group(proc.pid)
            _kill_tokened(token)
        shutil.rmtree(root, ignore_errors=True)


@functools.cache
def kernel_isolation() -> dict[str, object]:
    """What the sandbox achieves on this machine (one trivial run, once per process)."""
    return run_sandboxed("pass", timeout_s=30, allow_unsandboxed=True).isolation


def require_kernel_isolation() -> str:
    """The isolation summary to record; a ``UserError`` when the kernel cannot isolate generated code
    here and the user has not opted out of that."""
    report = kernel_isolation()
    if report.get("kernel_isolated") or unsandboxed_allowed():
        return str(report.get("summary", "unknown"))
    why = "; ".join(str(report[k]) for k in ("mount_namespace_error", "landlock_error", "unix_sockets_error") if k in report)
    raise UserError(
        f"no kernel sandbox for generated code on this machine ({why or 'no mount namespace or Landlock was tried'})",
        "allow unprivileged user namespaces or use Linux >= 5.13 with Landlock, or pass --allow-unsandboxed "
        f"(or set {ALLOW_UNSANDBOXED_VAR}=1) to run it under the Python audit hook only",
    )


def _status(returncode: int, timed_out: bool, report: dict[str, object], finished: bool) -> SandboxStatus:
    if timed_out:
        return "timeout"
    if not report or "refused" in report:
        return "error"  # the launcher died before it could set up, or refused: nothing of the program ran
    if returncode == 0 and finished:
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


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:
        return b""


def _read_json(path: Path) -> dict[str, object]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}
