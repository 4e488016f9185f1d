"""The sandbox's second layer: a Python audit hook (stdlib only; loaded by ``_sandbox_child.py``).

A hook in the attacker's own interpreter cannot be a wall (native code, or a way around CPython's
audit events, gets past it); the kernel is the wall (``_sandbox_kernel.py``). The hook makes the
common tools fail early and with a clear message, and is all there is when the user opts out of the
kernel sandbox. Patching what it uses does not change it: every rule and helper is captured when it is
installed (no module global or builtin is looked up afterwards), and the common ways to reach and
rewrite a function (``gc`` walks, ``__code__`` and ``__defaults__`` assignment, tracing) are refused.
Plain Python still gets past it: a refused event's traceback holds the hook's frames, their locals its
helper closures, and a closure cell can be rewritten (``test_the_hook_alone_is_no_wall``).
"""

import os
import sys

BLOCKED_PREFIXES = (
    "socket.", "subprocess.", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "os.forkpty", "os.system",
    "os.kill", "os.killpg", "os.chroot", "os.putenv", "os.unsetenv", "ctypes.", "pty.", "signal.pthread_kill",
    "shutil.", "sys.addaudithook", "sys.settrace", "sys.setprofile", "sys._current_frames", "gc.get_objects",
    "gc.get_referrers", "gc.get_referents", "code.__new__", "webbrowser.", "winreg.",
)
BLOCKED_MODULES = ("ctypes", "_ctypes", "_posixsubprocess")
REWRITES = frozenset({"__code__", "__defaults__", "__kwdefaults__", "__globals__", "__closure__"})
# event -> (positions of paths that must lie inside the work dir, positions of dir_fd arguments)
WRITES = {
    "os.mkdir": ((0,), (2,)), "os.rename": ((0, 1), (2, 3)), "os.remove": ((0,), (1,)),
    "os.rmdir": ((0,), (1,)), "os.symlink": ((0, 1), (2,)), "os.link": ((0, 1), (2, 3)),
    "os.chmod": ((0,), (2,)), "os.chown": ((0,), (3,)), "os.truncate": ((0,), ()), "os.utime": ((0,), (3,)),
    "os.chflags": ((0,), ()), "os.lchflags": ((0,), ()), "os.setxattr": ((0,), ()),
    "os.removexattr": ((0,), ()), "sqlite3.connect": ((0,), ()),
}
READS = {"os.listdir": (0,), "os.scandir": (0,), "os.listxattr": (0,), "os.getxattr": (0,)}
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


def install(workdir, readable):
    """Refuse writes outside ``workdir``, reads outside it and ``readable``, and the escape tools."""
    sys.addaudithook(_make_hook(os.path.realpath(workdir), tuple(os.path.realpath(p) for p in readable)))


def _make_hook(workdir, readable):
    # Bound now, before the program runs: the hook below never looks up a global or a builtin again.
    type_, len_, issubclass_, str_, bytes_, int_ = type, len, issubclass, str, bytes, int
    os_error, refused = OSError, PermissionError
    str_copy, decode, bytes_copy = str.__str__, bytes.decode, bytes.__add__
    getcwd, lstat, readlink, fspath = os.getcwd, os.lstat, os.readlink, os.fspath
    blocked, blocked_modules, rewrites, writes, reads = (
        BLOCKED_PREFIXES, BLOCKED_MODULES, REWRITES, dict(WRITES), dict(READS)
    )
    write_flags, writable, allowed_reads = WRITE_FLAGS, (workdir, "/dev/null"), (workdir, *readable)

    def text_of(path):
        """The path the C call will use (a ``str`` subclass's ``__str__`` is not asked); None for fds."""
        kind = type_(path)
        if kind is int_ or path is None:
            return None
        if not issubclass_(kind, (str_, bytes_)):
            path = fspath(path)
            kind = type_(path)
        if issubclass_(kind, bytes_):
            return decode(bytes_copy(b"", path), "utf-8", "surrogateescape")
        return str_copy(path)

    def resolve(text):
        """Absolute, normalized, symlinks followed (with the captured C functions, not ``posixpath``);
        relative paths start at the current directory (the program may have changed it)."""
        if not text.startswith("/"):
            text = getcwd() + "/" + text
        todo, done, hops = text.split("/")[::-1], [], 0
        while todo:
            part = todo.pop()
            if part in ("", "."):
                continue
            if part == "..":
                done = done[:-1]
                continue
            here = "/" + "/".join([*done, part])
            try:
                is_link = lstat(here).st_mode & 0o170000 == 0o120000
            except os_error:
                is_link = False
            if not is_link:
                done = [*done, part]
                continue
            hops += 1
            if hops > 40:
                raise refused(f"sandbox: too many symlinks in {text}")
            target = readlink(here)
            if target.startswith("/"):
                done = []
            todo = todo + target.split("/")[::-1]
        return "/" + "/".join(done)

    def inside(path, roots):
        for root in roots:  # noqa: SIM110 - no builtin (any) is looked up after install: the program may replace it
            if path == root or path.startswith(root + "/"):
                return True
        return False

    def check(path, roots, event, directory_ok=True):
        text = text_of(path)
        if text is None or text in (":memory:", ""):
            return
        where = resolve(text)
        if not inside(where, roots):
            raise refused(f"sandbox: {event} {text} is not allowed")
        if not directory_ok:  # a directory fd would let a relative dir_fd= path escape this check
            try:
                is_dir = lstat(where).st_mode & 0o170000 == 0o040000
            except os_error:
                is_dir = False
            if is_dir:
                raise refused(f"sandbox: opening the directory {text} is not allowed")

    def hook(event, args):
        if event.startswith(blocked):
            raise refused(f"sandbox: {event} is not allowed")
        if event == "import" and args:
            name = text_of(args[0]) or ""
            file = text_of(args[1]) if len_(args) > 1 and args[1] is not None else ""
            if name.rpartition(".")[2] in blocked_modules or file.rpartition("/")[2].startswith(blocked_modules):
                raise refused(f"sandbox: importing {name} is not allowed")
        elif event == "object.__setattr__" and len_(args) > 1 and args[1] in rewrites:
            raise refused(f"sandbox: setting {args[1]} is not allowed")
        elif event == "open":
            mode = args[1] if len_(args) > 1 and type_(args[1]) is str_ else ""
            flags = args[2] if len_(args) > 2 and type_(args[2]) is int_ else 0
            writing = "w" in mode or "a" in mode or "x" in mode or "+" in mode or flags & write_flags
            # a read-only open is how a directory fd is had; a writing one yields a file (O_TMPFILE) or fails
            where = writable if writing else allowed_reads
            check(args[0], where, "writing" if writing else "reading", directory_ok=writing)
        elif event in writes:
            paths, dir_fds = writes[event]
            for i in dir_fds:
                if len_(args) > i and args[i] is not None and args[i] != -1:
                    raise refused(f"sandbox: {event} with dir_fd is not allowed")
            for i in paths:
                if len_(args) > i:
                    check(args[i], (workdir,), event)
        elif event in reads:
            for i in reads[event]:
                check(args[i] if len_(args) > i and args[i] is not None else ".", allowed_reads, event)

    return hook
