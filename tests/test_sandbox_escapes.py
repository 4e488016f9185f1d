"""Escape attempts against the code sandbox: each class that got through the Python-hook-only sandbox
in the issue-12 review, and more. Every attempt runs with the audit hook (the default), with the
kernel alone (``audit_hook=False``), and with the kernel forced to Landlock (the fallback where no user
namespace can be had). What must hold is the kernel's wall: a secret outside the sandbox is never read,
nothing outside is written or deleted, no program is started, no host unix socket is reached.

The programs first try to disable the hook (gc walks to its closure, ``__code__`` rewrites, patched
helpers, its frames in a traceback) and then do the harm with plain Python; on the old sandbox each one
succeeded, and each does its harm in a plain interpreter (``test_each_attack_works_where_nothing_stops_it``).
"""

from __future__ import annotations

import _posixsubprocess
import functools
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import harness
import harness.sandbox
from harness.sandbox import SandboxResult, run_sandboxed
from tests.test_hardening_sandbox import FORK_EXEC
from tests.test_sandbox import sandbox_tmp  # noqa: F401 - fixture: no temp dir or process left behind

DEFEAT_BY_CELLS = """
import gc
def _defeat():
    for obj in gc.get_objects():
        code, cells = getattr(obj, "__code__", None), getattr(obj, "__closure__", None)
        if code is None or not cells or code.co_varnames[:2] != ("event", "args"):
            continue
        for name, cell in zip(code.co_freevars, cells):
            value = cell.cell_contents
            if isinstance(value, tuple) and all(isinstance(v, str) for v in value):
                cell.cell_contents = ("\\0",)
            elif isinstance(value, (set, frozenset, dict, list)):
                cell.cell_contents = type(value)()
            elif callable(value):
                cell.cell_contents = (lambda *a, **k: None) if name == "resolve" else (lambda *a, **k: True)
            elif isinstance(value, str):
                cell.cell_contents = "/"
try:
    _defeat()
except Exception as exc:
    print("could not defeat the hook:", exc)
"""

DEFEAT_BY_CODE = """
import gc
try:
    for obj in gc.get_objects():
        code = getattr(obj, "__code__", None)
        if code is not None and getattr(obj, "__name__", "") == "hook" and code.co_varnames[:2] == ("event", "args"):
            names = code.co_freevars
            src = "def _mk():\\n"
            src += ("    " + " = ".join(names) + " = None\\n") if names else ""
            src += "    def hook(event, args):\\n"
            src += ("        (" + ", ".join(names) + ",)\\n") if names else ""
            src += "        return None\\n    return hook\\n"
            made = {}
            exec(src, made)
            obj.__code__ = made["_mk"]().__code__
except Exception as exc:
    print("could not rewrite the hook:", exc)
"""

LOAD_POSIXSUBPROCESS_BY_PATH = f"""
import importlib.util, os
_spec = importlib.util.spec_from_file_location("innocent._posixsubprocess", {_posixsubprocess.__file__!r})
_posixsubprocess = importlib.util.module_from_spec(_spec)
"""

LIE = "class Lie(str):\n    def __str__(self):\n        return 'harmless.txt'\n"

DEFEAT_BY_TRACEBACK = """
def _defeat():
    tb = None
    try:
        open('/moegate-no-such-file')  # refused by the hook: its exception carries the hook's frames
    except OSError as exc:
        tb = exc.__traceback__
    while tb is not None:
        for value in list(tb.tb_frame.f_locals.values()):  # the hook's helpers, closures sharing its cells
            code, cells = getattr(value, "__code__", None), getattr(value, "__closure__", None) or ()
            for name, cell in zip(getattr(code, "co_freevars", ()), cells):
                if name == "inside":
                    cell.cell_contents = lambda *a: True
        tb = tb.tb_next
_defeat()
"""
"""No gc walk, no ``__code__`` write, no ctypes: plain Python that the hook cannot refuse."""


@pytest.fixture(params=[("best", True), ("best", False), ("landlock", False)], ids=["hook", "kernel", "landlock"])
def sandbox(request: pytest.FixtureRequest, sandbox_tmp: Path) -> Callable[[str], SandboxResult]:  # noqa: F811
    isolation, hook = request.param
    extra = {} if isolation == "best" else {"isolation": isolation}
    held = _walls_here(isolation)
    if held.get("kernel_isolated") is False:
        pytest.skip(f"no kernel wall for isolation={isolation} on this machine: {held}")

    def run(code: str) -> SandboxResult:
        return run_sandboxed(code, timeout_s=10, audit_hook=hook, **extra)

    return run


@functools.cache
def _walls_here(isolation: str) -> dict[str, object]:
    forced = {} if isolation == "best" else {"isolation": isolation, "allow_unsandboxed": True}
    return run_sandboxed("pass", timeout_s=30, **forced).isolation  # type: ignore[arg-type]


@pytest.fixture
def secret(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, str]:
    """A fake ``~/.ssh/id_rsa`` in a temp HOME, and its content."""
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    value = f"TOP-SECRET-{uuid.uuid4().hex}"
    path = home / ".ssh" / "id_rsa"
    path.write_text(value)
    monkeypatch.setenv("HOME", str(home))
    return path, value


READS: dict[str, Callable[[Path], str]] = {
    "relative path after chdir": lambda s: f"import os\nos.chdir({str(s.parent)!r})\nprint(open('id_rsa').read())",
    "dir_fd": lambda s: (
        f"import os\nd = os.open('/', os.O_RDONLY)\nprint(os.read(os.open({str(s)[1:]!r}, os.O_RDONLY, dir_fd=d), 99))"
    ),
    "lying str subclass": lambda s: f"{LIE}print(open(Lie({str(s)!r})).read())",
    "patched builtins.any": lambda s: f"import builtins\nbuiltins.any = lambda it: False\nprint(open({str(s)!r}).read())",
    "patched posixpath.realpath": lambda s: (
        f"import posixpath\nposixpath.realpath = lambda p, **k: '/nowhere'\nprint(open({str(s)!r}).read())"
    ),
    "gc closure rewrite": lambda s: f"{DEFEAT_BY_CELLS}print(open({str(s)!r}).read())",
    "__code__ rewrite": lambda s: f"{DEFEAT_BY_CODE}print(open({str(s)!r}).read())",
    "hard link into the work dir": lambda s: f"import os\nos.link({str(s)!r}, 'copy')\nprint(open('copy').read())",
    "_posixsubprocess by path": lambda s: LOAD_POSIXSUBPROCESS_BY_PATH
    + FORK_EXEC.replace("import _posixsubprocess, os", "").format(
        argv=["/bin/cat", str(s)], exe="/bin/cat", setsid=False, wait=True
    ),
    "ctypes syscalls": lambda s: (
        f"{DEFEAT_BY_CODE}import ctypes\nlibc = ctypes.CDLL(None)\nfd = libc.open({str(s).encode()!r}, 0)\n"
        "buf = ctypes.create_string_buffer(99)\nlibc.read(fd, buf, 99)\nprint(buf.value)"
    ),
    "host /tmp file": lambda s: f"print(open({str(s.parent.parent.parent / 'host-tmp-file')!r}).read())",
    "hook rewritten through a traceback": lambda s: f"{DEFEAT_BY_TRACEBACK}print(open({str(s)!r}).read())",
}


@pytest.mark.parametrize("attack", list(READS))
def test_no_secret_is_read(attack: str, sandbox: Callable[[str], SandboxResult], secret: tuple[Path, str]) -> None:
    path, value = secret
    (path.parent.parent.parent / "host-tmp-file").write_text(value)
    result = sandbox(READS[attack](path))
    assert result.status != "error", result.stderr_tail
    assert value not in result.stdout_tail + result.stderr_tail, (attack, result.isolation)


def test_the_checkout_and_the_moegate_process_are_not_readable(sandbox: Callable[[str], SandboxResult]) -> None:
    own_source = Path(harness.__file__).with_name("sandbox.py")
    program = f"text = open({str(own_source)!r}).read()\nprint(text[text.index('def run_sandboxed'):][:40])"
    result = sandbox(program)
    assert "def run_sandboxed" not in result.stdout_tail, result.isolation
    # API keys live in the environment of the process that runs moegate (HF_TOKEN, OPENAI_API_KEY, ...)
    name, value = next(
        v.split(b"=", 1) for v in Path(f"/proc/{os.getpid()}/environ").read_bytes().split(b"\0") if len(v) > 12
    )
    program = (
        f"data = open('/proc/{os.getpid()}/environ', 'rb').read()\n"
        f"print([v for v in data.split(bytes(1)) if v.startswith({name + b'='!r})])"
    )
    result = sandbox(program)
    assert repr(value)[2:-1] not in result.stdout_tail, result.isolation


WRITES: dict[str, Callable[[Path], str]] = {
    "relative path after chdir": lambda d: f"import os\nos.chdir({str(d)!r})\nopen('pwned', 'w').write('x')",
    "dir_fd": lambda d: (
        f"import os\nd = os.open({str(d)!r}, os.O_RDONLY)\nos.write(os.open('pwned', os.O_WRONLY | os.O_CREAT, dir_fd=d), b'x')"
    ),
    "rename with dst_dir_fd": lambda d: (
        f"import os\nopen('x', 'w').write('x')\nos.rename('x', 'pwned', dst_dir_fd=os.open({str(d)!r}, os.O_RDONLY))"
    ),
    "lying str subclass": lambda d: f"{LIE}open(Lie({str(d / 'pwned')!r}), 'w').write('x')",
    "os.mkfifo": lambda d: f"import os\nos.mkfifo({str(d / 'pwned')!r})",
    "os.mknod": lambda d: f"import os\nos.mknod({str(d / 'pwned')!r})",
    "sqlite3.connect": lambda d: f"import sqlite3\nsqlite3.connect({str(d / 'pwned')!r}).execute('create table t (x)')",
    "patched posixpath.join": lambda d: (
        f"import os, posixpath\nposixpath.join = lambda *p: os.getcwd() + '/x'\nopen({str(d / 'pwned')!r}, 'w').write('x')"
    ),
    "gc closure rewrite": lambda d: f"{DEFEAT_BY_CELLS}open({str(d / 'pwned')!r}, 'w').write('x')",
    "deleting a file": lambda d: f"import os\nos.chdir({str(d)!r})\nos.remove('victim')\nopen('pwned', 'w')",
    "starting a program (posixsubprocess)": lambda d: LOAD_POSIXSUBPROCESS_BY_PATH
    + FORK_EXEC.replace("import _posixsubprocess, os", "").format(
        argv=["/bin/touch", str(d / "pwned")], exe="/bin/touch", setsid=False, wait=True
    ),
    "starting a program (os.system)": lambda d: f"{DEFEAT_BY_CODE}import os\nos.system('touch {d / 'pwned'}')",
    "starting a program (execv)": lambda d: f"{DEFEAT_BY_CODE}import os\nos.execv('/bin/touch', ['touch', {str(d / 'pwned')!r}])",
}


@pytest.mark.parametrize("attack", list(WRITES))
def test_nothing_outside_is_written_deleted_or_started(
    attack: str, sandbox: Callable[[str], SandboxResult], tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim").write_text("keep me")
    result = sandbox(WRITES[attack](outside))
    assert result.status != "error", result.stderr_tail
    assert sorted(p.name for p in outside.iterdir()) == ["victim"], (attack, result.stderr_tail[-300:])
    assert (outside / "victim").read_text() == "keep me"


HOOK_BLIND = {"os.mkfifo", "os.mknod"}
"""Python 3.11 raises no audit event for these: only the kernel stops them."""
HOOK_DEFEATED = {"hook rewritten through a traceback"}
"""The hook's own helpers, reached through a refused event's traceback: only the kernel stops this."""


def test_each_attack_works_where_nothing_stops_it(secret: tuple[Path, str], tmp_path: Path) -> None:
    """The same programs in a plain ``python -I -S -B``: each one reads the secret or does its harm, so
    the escape tests above fail if a wall stops holding (and not only because an attack is broken)."""
    path, value = secret
    (path.parent.parent.parent / "host-tmp-file").write_text(value)
    failed = []
    for kind, attacks in (("read", READS), ("write", WRITES)):
        for name, attack in attacks.items():
            cwd, outside = tmp_path / f"cwd-{kind}-{len(failed)}-{uuid.uuid4().hex[:6]}", tmp_path / "outside"
            shutil.rmtree(outside, ignore_errors=True)
            cwd.mkdir()
            outside.mkdir()
            (outside / "victim").write_text("keep me")
            program = attack(path) if kind == "read" else attack(outside)
            done = subprocess.run([sys.executable, "-I", "-S", "-B", "-c", program], cwd=cwd, capture_output=True,
                                  text=True, timeout=30, env={"PATH": "/usr/bin:/bin"})  # fmt: skip
            harmed = value in done.stdout if kind == "read" else sorted(p.name for p in outside.iterdir()) != ["victim"]
            if not harmed:
                failed.append((kind, name, done.stderr[-300:]))
    assert failed == []


def test_the_hook_alone_is_no_wall(secret: tuple[Path, str], sandbox_tmp: Path) -> None:  # noqa: F811
    """Plain Python gets past the hook (what the README says of ``--allow-unsandboxed``): if this starts
    failing, the hook got stronger and the README's threat model should say so."""
    path, value = secret
    program = READS["hook rewritten through a traceback"](path)
    result = run_sandboxed(program, timeout_s=10, isolation="none", allow_unsandboxed=True)
    assert value in result.stdout_tail, result.stderr_tail[-300:]


@pytest.mark.parametrize("attack", [f"read: {a}" for a in READS if a not in HOOK_DEFEATED]
                         + [f"write: {a}" for a in WRITES if a not in HOOK_BLIND])  # fmt: skip
def test_the_hook_alone_holds_where_python_sees_the_event(
    attack: str, secret: tuple[Path, str], tmp_path: Path, sandbox_tmp: Path  # noqa: F811
) -> None:
    """The second layer by itself (no filesystem wall, as under ``--allow-unsandboxed``)."""
    path, value = secret
    (tmp_path / "host-tmp-file").write_text(value)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim").write_text("keep me")
    kind, _, name = attack.partition(": ")
    program = READS[name](path) if kind == "read" else WRITES[name](outside)
    result = run_sandboxed(program, timeout_s=10, isolation="none", allow_unsandboxed=True)
    assert value not in result.stdout_tail + result.stderr_tail
    assert sorted(p.name for p in outside.iterdir()) == ["victim"], result.stderr_tail[-300:]


@pytest.fixture
def host_socket() -> Iterator[tuple[str, socket.socket]]:
    """A listening unix socket on the host (as an ssh-agent or docker socket would be)."""
    folder = tempfile.mkdtemp(prefix="mg-sock-", dir="/tmp")
    path = os.path.join(folder, "agent.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(8)
    server.setblocking(False)
    yield path, server
    server.close()
    shutil.rmtree(folder, ignore_errors=True)


def _was_reached(server: socket.socket) -> bool:
    try:
        conn, _ = server.accept()
    except BlockingIOError:
        return False
    conn.close()
    return True


def test_host_unix_sockets_are_unreachable(
    sandbox: Callable[[str], SandboxResult], host_socket: tuple[str, socket.socket]
) -> None:
    path, server = host_socket
    program = f"{DEFEAT_BY_CELLS}import socket\ns = socket.socket(socket.AF_UNIX)\ns.connect({path!r})\ns.send(b'hi')\n"
    result = sandbox(program)
    assert not _was_reached(server), result.isolation
    assert not result.passed


def test_without_seccomp_landlock_is_not_enough(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, host_socket: tuple[str, socket.socket], sandbox_tmp: Path  # noqa: F811
) -> None:
    """On an architecture with no syscall table (no seccomp, no ``pivot_root`` number), Landlock and a
    network namespace leave the host's unix sockets reachable: that is no kernel sandbox, and is refused."""
    wrapper = tmp_path / "child_elsewhere.py"
    wrapper.write_text(
        f"import sys\nsys.path.insert(0, {str(Path(harness.__file__).parent)!r})\nimport _sandbox_kernel\n"
        "_sandbox_kernel._machine = lambda: 'riscv64'\nimport _sandbox_child\ndel sys.path[0]\n_sandbox_child.main()\n"
    )
    monkeypatch.setattr(harness.sandbox, "_CHILD", wrapper)
    path, server = host_socket
    program = f"import socket\ns = socket.socket(socket.AF_UNIX)\ns.connect({path!r})\nprint('CONNECTED')\n"
    result = run_sandboxed(program, timeout_s=10, audit_hook=False, allow_unsandboxed=False)
    if not str(result.isolation.get("filesystem")).startswith("landlock"):
        pytest.skip(f"no Landlock here: {result.isolation}")
    assert result.isolation["syscalls"].startswith("none") and result.isolation["kernel_isolated"] is False
    assert result.status == "error" and "host unix sockets reachable" in result.stderr_tail
    assert not _was_reached(server)


def test_abstract_unix_sockets_are_unreachable(sandbox: Callable[[str], SandboxResult]) -> None:
    name = f"\0moegate-test-{uuid.uuid4().hex}"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(name)
    server.listen(8)
    server.setblocking(False)
    try:
        program = f"{DEFEAT_BY_CELLS}import socket\ns = socket.socket(socket.AF_UNIX)\ns.connect({name!r})\n"
        result = sandbox(program)
        assert not _was_reached(server), result.isolation
        assert not result.passed
    finally:
        server.close()


def test_disk_use_is_capped_in_the_mount_namespace(sandbox: Callable[[str], SandboxResult]) -> None:
    """Files under the per-file size limit, but more of them than the private /tmp holds."""
    program = (
        "import os\nwritten = 0\n"
        "try:\n"
        "    for i in range(6):\n"
        "        with open(f'block{i}', 'wb') as f:\n"
        "            for _ in range(15):\n"
        "                f.write(bytes(1 << 20))\n"
        "                written += 1\n"
        "finally:\n"
        "    print('MB', written)\n"
    )
    result = sandbox(program)
    if str(result.isolation.get("filesystem")).startswith("landlock"):
        pytest.skip(f"no private /tmp with {result.isolation.get('filesystem')}: only the per-file limit holds")
    assert int(result.stdout_tail.split()[-1]) < 70, result.stdout_tail


RAW_SYSCALLS = """
import ctypes, os, threading
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
sc, EPERM, ENOSYS = libc.syscall, 1, 38
calls = {  # x86_64 numbers (asm/unistd_64.h), written out here rather than taken from the filter's table
    "unshare a user namespace": (lambda: libc.unshare(0x10000000), EPERM),
    "mount a tmpfs": (lambda: libc.mount(b"none", b"/tmp", b"tmpfs", 0, None), EPERM),
    "a unix socket": (lambda: libc.socket(1, 1, 0), EPERM),
    "an inet socket": (lambda: libc.socket(2, 1, 0), EPERM),
    "socketpair": (lambda: libc.socketpair(1, 1, 0, ctypes.create_string_buffer(8)), EPERM),
    "fork": (lambda: libc.fork(), EPERM),
    "clone3": (lambda: sc(435, None, 0), ENOSYS),
    "execve": (lambda: sc(59, b"/bin/true", None, None), EPERM),
    "io_uring_setup": (lambda: sc(425, 8, ctypes.create_string_buffer(120)), EPERM),
    "ptrace(TRACEME)": (lambda: sc(101, 0, 0, 0, 0), EPERM),
    "process_vm_readv of itself": (lambda: sc(310, os.getpid(), None, 0, None, 0, 0), EPERM),
    "keyctl": (lambda: sc(250, 0, -3, 0), EPERM),
    "bpf": (lambda: sc(321, 0, None, 0), EPERM),
    "perf_event_open": (lambda: sc(298, None, 0, -1, -1, 0), EPERM),
    "name_to_handle_at": (lambda: sc(303, -100, None, None, None, 0), EPERM),
    "open_by_handle_at": (lambda: sc(304, -100, None, 0), EPERM),
    "setns": (lambda: sc(308, -1, 0), EPERM),
    "pidfd_open of itself": (lambda: sc(434, os.getpid(), 0), EPERM),
    "a signal to PID 1": (lambda: libc.kill(1, 0), EPERM),
    "tgkill of itself": (lambda: sc(234, os.getpid(), threading.get_native_id(), 0), EPERM),
}
for name, (call, wanted) in calls.items():
    got = call()
    if got != -1 or ctypes.get_errno() != wanted:
        print("NOT REFUSED:", name, got, os.strerror(ctypes.get_errno()))
print("DONE", len(calls))
"""


def test_raw_syscalls_past_the_hook_are_refused_by_the_kernel(sandbox: Callable[[str], SandboxResult]) -> None:
    """Through ctypes (which the hook refuses; without it, seccomp must answer each with its errno)."""
    if os.uname().machine != "x86_64":
        pytest.skip("the program's syscall numbers are x86_64's")
    result = sandbox(RAW_SYSCALLS)
    assert "NOT REFUSED" not in result.stdout_tail, (result.stdout_tail, result.isolation)
    if not result.isolation["audit_hook"]:
        assert "DONE 20" in result.stdout_tail, result.stderr_tail[-300:]
