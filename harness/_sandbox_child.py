"""Inside the sandbox: isolate, limit, then run one program. Stdlib only; started as ``python -I -S``.

This file is executed as a script by :func:`harness.sandbox.run_sandboxed`, never imported by moegate.
Steps, in order (each kernel step is best effort and reported on fd 3 as one JSON line):

1. ``unshare(CLONE_NEWUSER | CLONE_NEWNET | CLONE_NEWPID)``: no network interface but a downed
   loopback, and a PID namespace whose init is the program, so that when it exits the kernel kills
   every process it left behind (even ones that called ``setsid``).
2. Resource limits: address space, CPU seconds, file size, no core files, a cap on processes.
3. Fork; the child (PID 1 of the new namespace) dies with this launcher (``PR_SET_PDEATHSIG``),
   installs a Python audit hook that refuses sockets, subprocesses, ``ctypes`` and file access outside
   its own directory, then runs the program. The launcher exits with the child's status.

argv: one path, a JSON file with ``program``, ``workdir``, ``readable``, ``denied``, ``report``,
``memory_mb``, ``cpu_s``, ``max_procs``.
"""

import ctypes
import json
import os
import resource
import signal
import sys
import traceback

CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000
CLONE_NEWPID = 0x20000000
PR_SET_PDEATHSIG = 1


def _own_process_count():
    uid = os.getuid()
    count = 0
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.stat("/proc/" + entry).st_uid == uid:
                    count += 1
            except OSError:
                pass
    return count


def _unshare(libc, report):
    for flags, name in (
        (CLONE_NEWUSER | CLONE_NEWNET | CLONE_NEWPID, "user+net+pid"),
        (CLONE_NEWNET | CLONE_NEWPID, "net+pid"),
    ):
        if libc.unshare(flags) == 0:
            report["namespaces"] = name
            return True
    report["namespaces"] = f"none (errno {ctypes.get_errno()})"
    return False


def _limits(memory_mb, cpu_s, max_procs, report):
    mem = memory_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s + 1))
    resource.setrlimit(resource.RLIMIT_FSIZE, (16 * 1024 * 1024, 16 * 1024 * 1024))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))
    # RLIMIT_NPROC counts every process of this uid (not only ours), so the cap sits above what exists.
    # The kernel never applies it to uid 0 (root keeps its exemption even inside a user namespace).
    nproc = _own_process_count() + max_procs
    resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))
    report["limits"] = {"as_mb": memory_mb, "cpu_s": cpu_s, "nproc": nproc, "fsize_mb": 16}


def _install_audit_hook(allowed_dir, readable_dirs, denied_dirs):
    allowed = os.path.realpath(allowed_dir)
    readable = [os.path.realpath(d) for d in readable_dirs if d] + [allowed]
    denied = [os.path.realpath(d) for d in denied_dirs if d]
    blocked_prefixes = (
        "socket.",
        "subprocess.",
        "os.exec",
        "os.posix_spawn",
        "os.spawn",
        "os.fork",
        "os.forkpty",
        "os.system",
        "os.kill",
        "os.killpg",
        "ctypes.",
        "pty.",
        "signal.pthread_kill",
        "sys.addaudithook",
        "os.putenv",
        "os.unsetenv",
        "os.chroot",
        "shutil.",
    )
    path_events = {
        "os.mkdir",
        "os.rename",
        "os.remove",
        "os.rmdir",
        "os.symlink",
        "os.link",
        "os.chmod",
        "os.chown",
        "os.truncate",
        "os.utime",
        "os.chflags",
        "os.lchflags",
        "os.setxattr",
        "os.removexattr",
    }

    def inside(path, root):
        return path == root or path.startswith(root.rstrip("/") + "/")

    def resolve(path):
        if isinstance(path, int):
            return None
        if isinstance(path, bytes):
            path = os.fsdecode(path)
        return os.path.realpath(os.path.join(allowed, str(path)))

    def hook(event, args):
        if event.startswith(blocked_prefixes) or (
            event == "import" and args and args[0] in ("ctypes", "_ctypes", "_posixsubprocess")
        ):
            raise PermissionError(f"sandbox: {event} is not allowed")
        if event == "open":
            path = resolve(args[0])
            if path is None:
                return
            mode = args[1] if len(args) > 1 and isinstance(args[1], str) else "r"
            flags = args[2] if len(args) > 2 and isinstance(args[2], int) else 0
            writing = any(c in mode for c in "wax+") or flags & (
                os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
            )
            if writing and not inside(path, allowed):
                raise PermissionError(f"sandbox: writing {path} is not allowed")
            if any(inside(path, d) for d in denied) and not any(inside(path, r) for r in readable):
                raise PermissionError(f"sandbox: reading {path} is not allowed")
        elif event in path_events:
            for arg in args[:2]:
                path = resolve(arg) if isinstance(arg, (str, bytes, os.PathLike)) else None
                if path is not None and not inside(path, allowed):
                    raise PermissionError(f"sandbox: {event} on {path} is not allowed")

    sys.addaudithook(hook)


def _run_program(config):
    with open(config["program"], encoding="utf-8") as handle:
        source = handle.read()
    try:
        code = compile(source, "program.py", "exec")
    except (SyntaxError, ValueError):
        traceback.print_exc(limit=0)
        return 1
    os.chdir(config["workdir"])
    if config.get("audit_hook", True):
        _install_audit_hook(config["workdir"], config["readable"], config["denied"])
    namespace = {"__name__": "__main__", "__builtins__": __builtins__}
    try:
        exec(code, namespace)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:  # noqa: BLE001 - whatever the program raises is its failure, reported on stderr
        traceback.print_exc()
        return 1
    return 0


def main():
    with open(sys.argv[1], encoding="utf-8") as handle:
        config = json.load(handle)
    libc = ctypes.CDLL(None, use_errno=True)
    report = {}
    _unshare(libc, report)
    _limits(int(config["memory_mb"]), int(config["cpu_s"]), int(config["max_procs"]), report)
    with open(config["report"], "w", encoding="utf-8") as handle:
        handle.write(json.dumps(report))
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() not in (parent, 0):  # 0: the parent lives outside our new PID namespace
            os._exit(125)
        sys.stdout.flush()
        status = 1
        try:
            status = _run_program(config)
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(status if isinstance(status, int) and 0 <= status < 256 else 1)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        sys.stderr.write(f"sandbox: program killed by signal {sig}\n")
        os._exit(128 + sig)
    os._exit(os.WEXITSTATUS(status))


if __name__ == "__main__":
    main()
