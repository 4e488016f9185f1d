"""Inside the sandbox: wall in, limit, then run one program. Stdlib only; started as ``python -I -S -B``.

This file is executed as a script by :func:`harness.sandbox.run_sandboxed`, never imported by moegate.
Steps, in order:

1. Read the config (then delete it), the program and its success token; open the report and verdict files.
2. Walls (``_sandbox_kernel.py``): new namespaces and, for ``isolation`` "best" or "mount-namespace",
   a pivot into a minimal read-only root with a private ``/tmp``. Resource limits.
3. Fork; the child (PID 1 of the new PID namespace) dies with this launcher, drops its capabilities,
   restricts itself with Landlock when the mount namespace did not happen (``isolation`` "best" or
   "landlock"), installs the seccomp filter, writes the report of what held, and refuses to go on when
   nothing kernel-enforced holds the filesystem and the network, unless the user allowed that.
4. The audit hook (``_sandbox_hook.py``), then the program. Only if the program ran to its end does the
   child write the token to the verdict file; every early exit (``SystemExit`` with any code,
   ``os._exit``, a signal, a crash) leaves it empty, which the parent scores as a failure.
"""

import json
import os
import resource
import signal
import sys
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _sandbox_hook  # siblings, loaded before the walls hide this folder
import _sandbox_kernel as kernel

del sys.path[0]
PR_SET_PDEATHSIG = 1
REFUSED_EXIT = 125


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


def _limits(config, nproc, report):
    mem = int(config["memory_mb"]) * 1024 * 1024
    cpu = int(config["cpu_s"])
    resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    resource.setrlimit(resource.RLIMIT_FSIZE, (16 * 1024 * 1024, 16 * 1024 * 1024))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))
    # RLIMIT_NPROC counts every process of this uid (not only ours), so the cap sits above what exists.
    # The kernel never applies it to uid 0; the seccomp filter refuses new processes for everyone.
    resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))
    report["limits"] = {"as_mb": config["memory_mb"], "cpu_s": cpu, "nproc": nproc, "fsize_mb": 16}


def _walls(config, report):
    """Namespaces and the minimal root; returns (filesystem wall so far, work dir the program sees)."""
    mode = config["isolation"]
    want_mount = mode in ("best", "mount-namespace")
    try:
        report["namespaces"] = kernel.enter_namespaces(want_user=want_mount)
    except OSError as exc:
        report["namespaces"] = f"none ({exc})"
    if not want_mount:
        return "none", config["workdir"]
    if not report["namespaces"].startswith("user+mnt"):
        report["mount_namespace_error"] = "no user namespace: " + report["namespaces"]
        return "none", config["workdir"]
    try:
        kernel.pivot_to_minimal_root(config["new_root"], *config["_readable"], int(config["tmp_mb"]))
    except OSError as exc:
        report["mount_namespace_error"] = str(exc)
        os.chdir(config["workdir"])
        return "none", config["workdir"]
    return "mount-namespace", "/tmp"


def _restrict_child(config, filesystem, workdir, report):
    """In the program's process: capabilities, Landlock, seccomp; fills in and returns the report."""
    try:
        kernel.drop_capabilities()
        report["capabilities"] = "none"
    except OSError as exc:
        report["capabilities"] = f"kept ({exc})"
    if filesystem == "none" and config["isolation"] in ("best", "landlock"):
        folders, files, _ = config["_readable"]
        try:
            filesystem = f"landlock-abi{kernel.restrict_with_landlock(folders, files, workdir)}"
        except OSError as exc:
            report["landlock_error"] = str(exc)
    try:
        report["syscalls"] = kernel.forbid_syscalls()
    except OSError as exc:
        report["syscalls"] = f"none ({exc})"
    seccomp = report["syscalls"].startswith("seccomp")
    net_namespace = "net" in report["namespaces"].split(" ")[0].split("+")
    report["filesystem"] = filesystem
    report["network"] = "namespace" if net_namespace else "seccomp" if seccomp else "open"
    report["audit_hook"] = bool(config["audit_hook"])
    # A network namespace isolates IP and abstract sockets, Landlock no connect() to a host's filesystem
    # socket (an ssh-agent's, docker's): only the mount namespace (they do not exist) or seccomp (no socket).
    if filesystem != "mount-namespace" and not seccomp:
        report["unix_sockets_error"] = f"host unix sockets reachable (no mount namespace, {report['syscalls']})"
    report["kernel_isolated"] = filesystem != "none" and report["network"] != "open" and "unix_sockets_error" not in report
    parts = [filesystem] + ["net-namespace"] * net_namespace + ["seccomp"] * seccomp
    parts += ["audit-hook"] * report["audit_hook"]
    report["summary"] = "+".join(parts) if report["kernel_isolated"] else "UNSANDBOXED:" + "+".join(parts)
    if not report["kernel_isolated"] and not config["allow_unsandboxed"]:
        why = [report[k] for k in ("mount_namespace_error", "landlock_error", "unix_sockets_error") if k in report]
        report["refused"] = f"no kernel isolation here (filesystem: {filesystem}{''.join('; ' + w for w in why)}; network: {report['network']})"
    return report


def _run_program(source, token, verdict_fd):
    """Exit status 0 and the token on ``verdict_fd`` only when the program ran to its last line."""
    import linecache

    write = os.write
    try:
        code = compile(source, "program.py", "exec")
    except (SyntaxError, ValueError):
        traceback.print_exc(limit=0)
        return 1
    linecache.cache["program.py"] = (len(source), None, source.splitlines(True), "program.py")
    namespace = {"__name__": "__main__", "__builtins__": __builtins__}
    try:
        exec(code, namespace)
    except SystemExit as exc:
        sys.stderr.write(f"sandbox: the program exited early (SystemExit({exc.code!r})): a failure\n")
        return exc.code if type(exc.code) is int and 0 < exc.code < 256 else 1
    except BaseException:  # noqa: BLE001 - whatever the program raises is its failure, reported on stderr
        traceback.print_exc()
        return 1
    write(verdict_fd, token.encode())
    return 0


def _flush():
    for stream in (sys.stdout, sys.stderr):
        try:  # noqa: SIM105 - contextlib would cost every run an import
            stream.flush()
        except BaseException:  # noqa: BLE001 - the program may have closed or replaced its streams
            pass


def _child(config, source, token, report_fd, verdict_fd, filesystem, workdir, report):
    report = _restrict_child(config, filesystem, workdir, report)
    os.write(report_fd, json.dumps(report).encode())
    os.close(report_fd)
    if "refused" in report:
        sys.stderr.write(f"sandbox: refused to run the program: {report['refused']}\n")
        return REFUSED_EXIT
    os.environ["HOME"] = os.environ["TMPDIR"] = workdir
    os.chdir(workdir)
    if config["audit_hook"]:
        folders, files, _ = config["_readable"]
        _sandbox_hook.install(workdir, folders + files)
    return _run_program(source, token, verdict_fd)


def main():
    with open(sys.argv[1], encoding="utf-8") as handle:
        config = json.load(handle)
    os.unlink(sys.argv[1])
    sys.argv[:] = ["program.py"]
    with open(config["program"], encoding="utf-8") as handle:
        source = handle.read()
    token = config.pop("token")
    report_fd = os.open(config["report"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    verdict_fd = os.open(config["verdict"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    config["_readable"] = kernel.readable_paths()
    nproc = _own_process_count() + int(config["max_procs"])  # /proc is gone after the pivot
    report = {"requested": config["isolation"]}
    filesystem, workdir = _walls(config, report)
    _limits(config, nproc, report)
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:
        kernel.LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() not in (parent, 0):  # 0: the parent lives outside our new PID namespace
            os._exit(REFUSED_EXIT)
        status = 1
        try:
            status = _child(config, source, token, report_fd, verdict_fd, filesystem, workdir, report)
        finally:
            _flush()
            os._exit(status if type(status) is int and 0 <= status < 256 else 1)
    os.close(report_fd)
    os.close(verdict_fd)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        sys.stderr.write(f"sandbox: program killed by signal {sig}\n")
        os._exit(128 + sig)
    os._exit(os.WEXITSTATUS(status))


if __name__ == "__main__":
    main()
