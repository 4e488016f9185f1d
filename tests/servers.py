"""Start and stop OpenAI-compatible server processes on 127.0.0.1 for the tests (always by their PID)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(cmd: list[str], port: int, timeout_s: float = 120, log: Path | None = None,
                 env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Start ``cmd`` and wait (bounded) until GET /v1/models answers; its output goes to ``log`` when given."""
    out = log.open("wb") if log else subprocess.DEVNULL
    proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT if log else subprocess.PIPE, env=env,
                            start_new_session=True)  # its own process group: engine workers stop with it
    try:
        return _wait_ready(proc, port, timeout_s, log)
    except BaseException:
        stop_server(proc)
        raise


def _wait_ready(proc: subprocess.Popen[bytes], port: int, timeout_s: float, log: Path | None) -> subprocess.Popen[bytes]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace") if log else (proc.stderr.read().decode() if proc.stderr else "")
            raise RuntimeError(f"server exited with {proc.returncode}: {tail[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=2) as resp:
                if resp.status == 200:
                    return proc
        except OSError:
            time.sleep(0.3)
    raise RuntimeError(f"server on port {port} not ready within {timeout_s} s")


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL after 20 s, to the process group this server's PID leads (its workers too)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=20)
            break
        except subprocess.TimeoutExpired:
            continue
    proc.wait(timeout=20)
    with contextlib.suppress(ProcessLookupError):  # workers left behind by a parent that exited first
        os.killpg(proc.pid, signal.SIGKILL)
