"""The kernel's walls around a sandboxed program (stdlib and ctypes only; loaded by ``_sandbox_child.py``).

Never imported by moegate itself. Each function either sets up its wall or raises ``OSError`` saying
why it could not, so the child can report exactly what held:

- :func:`enter_namespaces`: new user, mount, PID, network, IPC and UTS namespaces (no privilege
  needed where unprivileged user namespaces are allowed; as root, always).
- :func:`pivot_to_minimal_root`: inside the mount namespace, a read-only tmpfs root holding only
  read-only binds of the standard library and the shared libraries the interpreter maps, a few
  device nodes, and a private size-capped writable ``/tmp``; the host tree is detached.
- :func:`restrict_with_landlock`: where the mount namespace is impossible, Landlock (Linux >= 5.13)
  limits file access to reading those same paths and writing the run's own directory.
- :func:`forbid_syscalls`: a seccomp filter refusing exec, new processes (threads are allowed),
  sockets, io_uring, ptrace, mounts and namespaces, signals, keyrings, bpf and perf.
- :func:`drop_capabilities`: whatever the user namespace granted is given up before the program runs.
"""

import ctypes
import os
import struct
import sys

CLONE_NEWTIME = 0x00000080
CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
CLONE_THREAD = 0x00010000

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
MNT_DETACH = 2
PR_SET_NO_NEW_PRIVS = 38
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2
DEVICES = ("/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom")

# Syscall numbers: x86_64 from asm/unistd_64.h, aarch64 from asm-generic/unistd.h (numbers >= 424 are shared).
_GENERIC_NEW = {
    "pidfd_send_signal": 424, "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427,
    "open_tree": 428, "move_mount": 429, "fsopen": 430, "fsconfig": 431, "fsmount": 432, "fspick": 433,
    "pidfd_open": 434, "clone3": 435, "pidfd_getfd": 438, "mount_setattr": 442,
}
_SYSCALLS = {
    "x86_64": {
        "arch": 0xC000003E, "socket": 41, "socketpair": 53, "clone": 56, "fork": 57, "vfork": 58,
        "execve": 59, "kill": 62, "ptrace": 101, "rt_sigqueueinfo": 129, "pivot_root": 155, "chroot": 161,
        "mount": 165, "umount2": 166, "tkill": 200, "tgkill": 234, "add_key": 248, "request_key": 249,
        "keyctl": 250, "unshare": 272, "rt_tgsigqueueinfo": 297, "perf_event_open": 298, "setns": 308,
        "process_vm_readv": 310, "process_vm_writev": 311, "bpf": 321, "execveat": 322, "userfaultfd": 323,
        "name_to_handle_at": 303, "open_by_handle_at": 304, **_GENERIC_NEW,
    },
    "aarch64": {
        "arch": 0xC00000B7, "socket": 198, "socketpair": 199, "clone": 220, "execve": 221, "kill": 129,
        "ptrace": 117, "rt_sigqueueinfo": 138, "pivot_root": 41, "chroot": 51, "mount": 40, "umount2": 39,
        "tkill": 130, "tgkill": 131, "add_key": 217, "request_key": 218, "keyctl": 219, "unshare": 97,
        "rt_tgsigqueueinfo": 240, "perf_event_open": 241, "setns": 268, "process_vm_readv": 270,
        "process_vm_writev": 271, "bpf": 280, "execveat": 281, "userfaultfd": 282, "name_to_handle_at": 264,
        "open_by_handle_at": 265, **_GENERIC_NEW,
    },
}
_REFUSED = (
    "execve", "execveat", "fork", "vfork", "socket", "socketpair", "io_uring_setup", "io_uring_enter",
    "io_uring_register", "ptrace", "process_vm_readv", "process_vm_writev", "mount", "umount2", "pivot_root",
    "chroot", "unshare", "setns", "open_tree", "move_mount", "fsopen", "fsconfig", "fsmount", "fspick",
    "mount_setattr", "bpf", "perf_event_open", "userfaultfd", "keyctl", "add_key", "request_key", "kill",
    "tkill", "tgkill", "rt_sigqueueinfo", "rt_tgsigqueueinfo", "pidfd_send_signal", "pidfd_open", "pidfd_getfd",
    "name_to_handle_at", "open_by_handle_at",
)
"""Refused with EPERM; ``clone`` is refused unless it makes a thread in the same namespaces, ``clone3``
answers ENOSYS so that the C library falls back to ``clone`` (whose flags a filter can read)."""
NAMESPACE_FLAGS = (
    CLONE_NEWTIME | CLONE_NEWNS | CLONE_NEWCGROUP | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNET
)
"""A thread may not take new namespaces."""

LIBC = ctypes.CDLL(None, use_errno=True)
LIBC.syscall.restype = ctypes.c_long
LIBC.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
LIBC.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
LIBC.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]


def _fail(what):
    err = ctypes.get_errno()
    raise OSError(err, f"{what}: {os.strerror(err)}")


def _machine():
    return os.uname().machine.lower()


def readable_paths():
    """What a program may read: the standard library on ``sys.path``, the shared libraries this
    interpreter has mapped (with their folder, where the C library's siblings live, unless that folder
    holds the standard library: then the file alone), the loader's cache and a few device nodes.

    Returns (folders, files, hidden): ``hidden`` are site-packages folders inside the standard library,
    covered by an empty mount in the mount namespace (Landlock cannot carve them out)."""
    stdlib = sorted({os.path.realpath(p) for p in sys.path if p and os.path.isdir(p)})
    folders = set(stdlib)
    files = {os.path.realpath(p) for p in sys.path if p and os.path.isfile(p)}  # a zipped standard library
    with open("/proc/self/maps", encoding="utf-8") as handle:
        for line in handle:
            parts = line.split(None, 5)
            path = os.path.realpath(parts[5].strip()) if len(parts) == 6 and parts[5].startswith("/") else ""
            if ".so" in os.path.basename(path) and os.path.isfile(path):
                folder = os.path.dirname(path)
                if any(p.startswith(folder + "/") for p in stdlib):
                    files.add(path)
                else:
                    folders.add(folder)
    kept = []
    for folder in sorted(folders):
        if not any(folder == k or folder.startswith(k + "/") for k in kept):
            kept.append(folder)
    files = sorted(f for f in files if not any(f.startswith(k + "/") for k in kept))
    files += [p for p in ("/etc/ld.so.cache", *DEVICES) if os.path.exists(p)]
    hidden = [os.path.join(p, d) for p in stdlib for d in ("site-packages", "dist-packages")]
    return kept, files, [h for h in hidden if os.path.isdir(h)]


def enter_namespaces(want_user):
    """Unshare; returns the namespaces entered. The user namespace (needed for the mount namespace
    without privileges) maps our own uid and gid onto themselves."""
    uid, gid = os.getuid(), os.getgid()
    tries = [(CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS,
              "user+mnt+pid+net+ipc+uts")] if want_user else []
    tries.append((CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS, "pid+net+ipc+uts"))
    errors = []
    for flags, name in tries:
        if LIBC.unshare(flags) == 0:
            if flags & CLONE_NEWUSER:
                _write("/proc/self/setgroups", "deny")
                _write("/proc/self/uid_map", f"{uid} {uid} 1")
                _write("/proc/self/gid_map", f"{gid} {gid} 1")
            return name
        errors.append(os.strerror(ctypes.get_errno()))
    raise OSError(f"unshare refused ({'; '.join(errors)})")


def _write(path, text):
    with open(path, "w", encoding="ascii") as handle:
        handle.write(text)


def _mount(source, target, fstype, flags, data=None):
    args = [None if v is None else os.fsencode(v) for v in (source, target, fstype)]
    if LIBC.mount(args[0], args[1], args[2], flags, None if data is None else data.encode()) != 0:
        _fail(f"mount {target}")


def _bind_read_only(source, target, extra_flags):
    if os.path.isdir(source):
        os.makedirs(target, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with open(target, "w"):
            pass
    _mount(source, target, None, MS_BIND)
    # A bind remount must repeat the flags the kernel locked on the source mount (nosuid, nodev, noexec).
    kept = os.statvfs(target).f_flag & (MS_NOSUID | MS_NODEV | MS_NOEXEC)
    _mount(None, target, None, MS_REMOUNT | MS_BIND | MS_RDONLY | kept | extra_flags)


def pivot_to_minimal_root(new_root, folders, files, hidden, tmp_mb):
    """Make ``new_root`` (an empty folder) this mount namespace's whole filesystem; cwd becomes /tmp."""
    number = _SYSCALLS.get(_machine(), {}).get("pivot_root")
    if number is None:
        raise OSError(f"pivot_root: no syscall number known for {_machine()}")
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    _mount("tmpfs", new_root, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,nr_inodes=4096,mode=755")
    for folder in folders:
        _bind_read_only(folder, new_root + folder, MS_NOSUID | MS_NODEV)
    for path in files:
        _bind_read_only(path, new_root + path, MS_NOSUID if path in DEVICES else MS_NOSUID | MS_NODEV)
    for folder in hidden:
        _mount("tmpfs", new_root + folder, "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, "size=4k")
    for name in ("lib", "lib32", "lib64", "libx32"):  # merged-/usr systems reach libraries through these
        if os.path.islink("/" + name) and not os.path.lexists(new_root + "/" + name):
            os.symlink(os.readlink("/" + name), new_root + "/" + name)
    os.mkdir(new_root + "/tmp")
    _mount("tmpfs", new_root + "/tmp", "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC,
           f"size={tmp_mb}m,nr_inodes=4096,mode=700")
    _mount(None, new_root, None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)
    os.chdir(new_root)
    if LIBC.syscall(number, b".", b".") != 0:  # the old root ends up stacked on "." ...
        _fail("pivot_root")
    if LIBC.umount2(b".", MNT_DETACH) != 0:  # ... and is detached from the tree here
        _fail("umount old root")
    os.chdir("/tmp")


def landlock_abi():
    abi = LIBC.syscall(444, None, ctypes.c_size_t(0), ctypes.c_uint32(1))  # LANDLOCK_CREATE_RULESET_VERSION
    if abi < 1:
        _fail("landlock")
    return abi


def restrict_with_landlock(folders, files, writable):
    """Only reading ``folders``/``files`` and full use of ``writable`` (no exec anywhere); from ABI 4 no
    TCP bind/connect, from ABI 6 no abstract unix sockets or signals outside the sandbox. Returns the ABI."""
    abi = landlock_abi()
    fs_rights = (1 << 13) - 1  # ABI 1: execute .. make_sym
    for version, right in ((2, 1 << 13), (3, 1 << 14), (5, 1 << 15)):  # refer, truncate, ioctl_dev
        if abi >= version:
            fs_rights |= right
    attr = struct.pack("=QQQ", fs_rights, 3 if abi >= 4 else 0, 3 if abi >= 6 else 0)
    attr = attr[: 8 if abi < 4 else 16 if abi < 6 else 24]
    ruleset = LIBC.syscall(444, ctypes.c_char_p(attr), ctypes.c_size_t(len(attr)), ctypes.c_uint32(0))
    if ruleset < 0:
        _fail("landlock_create_ruleset")
    read_file, write_file, read_dir, execute = 1 << 2, 1 << 1, 1 << 3, 1
    rules = [(f, read_file | read_dir) for f in folders]
    rules += [(f, read_file | (write_file if f.startswith("/dev/") else 0)) for f in files]
    rules.append((writable, fs_rights & ~execute))
    try:
        for path, rights in rules:
            fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            try:
                rule = struct.pack("=Qi", rights, fd)
                if LIBC.syscall(445, ctypes.c_int(ruleset), ctypes.c_int(1), ctypes.c_char_p(rule), ctypes.c_uint32(0)):
                    _fail(f"landlock_add_rule {path}")
            finally:
                os.close(fd)
        if LIBC.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            _fail("no_new_privs")
        if LIBC.syscall(446, ctypes.c_int(ruleset), ctypes.c_uint32(0)) != 0:
            _fail("landlock_restrict_self")
    finally:
        os.close(ruleset)
    return abi


def _seccomp_program(numbers):
    """Classic BPF: kill on a foreign architecture, EPERM for the refused calls (and x32 on x86_64)."""
    ld, jeq, jset, jge, ret = 0x20, 0x15, 0x45, 0x35, 0x06
    allow, errno, kill = 0x7FFF0000, 0x00050000, 0x80000000
    body = [(ld, 0, 0, 4), (jeq, 0, "kill", numbers["arch"]), (ld, 0, 0, 0)]  # arch, then syscall number
    if _machine() == "x86_64":
        body.append((jge, "eperm", 0, 0x40000000))  # x32 numbers
    body += [(jeq, "eperm", 0, numbers[name]) for name in _REFUSED if name in numbers]
    body += [(jeq, "enosys", 0, numbers["clone3"]), (jeq, "clone", 0, numbers["clone"]), (ret, 0, 0, allow)]
    body += ["clone", (ld, 0, 0, 16), (jset, 0, "eperm", CLONE_THREAD)]  # args[0]: the flags (low 32 bits)
    body += [(jset, "eperm", 0, NAMESPACE_FLAGS), (ret, 0, 0, allow)]
    body += ["eperm", (ret, 0, 0, errno | 1), "enosys", (ret, 0, 0, errno | 38), "kill", (ret, 0, 0, kill)]
    labels, count = {}, 0
    for entry in body:
        if isinstance(entry, str):
            labels[entry] = count
        else:
            count += 1
    code, at = [], 0
    for entry in body:
        if isinstance(entry, str):
            continue
        op, jt, jf, k = entry
        jt, jf = (labels[j] - at - 1 if isinstance(j, str) else j for j in (jt, jf))
        code.append(struct.pack("=HBBI", op, jt, jf, k))
        at += 1
    return b"".join(code), count


def forbid_syscalls():
    """Install the seccomp filter on this thread and its future threads; returns a short description."""
    numbers = _SYSCALLS.get(_machine())
    if numbers is None:
        raise OSError(f"seccomp: no syscall table for {_machine()}")
    program, count = _seccomp_program(numbers)
    buffer = ctypes.create_string_buffer(program, len(program))
    fprog = struct.pack("=HxxxxxxQ", count, ctypes.addressof(buffer))
    if LIBC.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        _fail("no_new_privs")
    fprog_buffer = ctypes.create_string_buffer(fprog, len(fprog))
    if LIBC.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(fprog_buffer), 0, 0) != 0:
        _fail("seccomp")
    return "seccomp: no exec, no new processes, no sockets, no io_uring/ptrace/mount/namespaces/signals"


def drop_capabilities():
    header = ctypes.create_string_buffer(struct.pack("=Ii", 0x20080522, 0), 8)  # _LINUX_CAPABILITY_VERSION_3
    data = ctypes.create_string_buffer(24)
    if LIBC.capset(header, data) != 0:
        _fail("capset")
