"""Write files and directories so that a crash or a full disk never leaves half of one behind."""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from harness.errors import UserError

MARKER_PREFIX = ".moegate-"
"""A folder moegate created holds ``.moegate-<kind>`` (``store``, ``run``, ``testbed``, ``compressed``)."""

Recognise = Callable[[Path], bool]
"""Says whether a folder without a marker was still written by moegate (an older version wrote no marker)."""


def marker(kind: str) -> str:
    return f"{MARKER_PREFIX}{kind}"


def _resolved(path: Path) -> Path:
    try:
        return Path(path).expanduser().resolve()
    except (OSError, RuntimeError):  # a symlink loop: compare it as written
        return Path(os.path.abspath(Path(path).expanduser()))


def check_replaceable(target: Path, kind: str, *, protect: Iterable[Path | str] = (), recognise: Recognise | None = None) -> None:
    """Refuse ``target`` unless moegate may replace it: absent, empty, or a ``kind`` folder moegate wrote.

    Never a folder that is or holds one of ``protect`` (the gate file, the models, the baseline store).
    """
    target = Path(target)
    where = _resolved(target)
    for path in protect:
        held = _resolved(Path(path))
        if held == where or where in held.parents:
            raise UserError(f"{target} {'is' if held == where else 'holds'} {path}, which moegate must not replace",
                            "write moegate's output to a folder of its own")
    # One lstat, not exists() then is_dir(): another writer may swap the folder between two looks, and
    # a vanished target is no error here (atomic_dir checks again under the lock).
    try:
        mode = os.lstat(target).st_mode
    except FileNotFoundError:
        return
    if stat.S_ISLNK(mode):
        raise UserError(f"{target} is a symbolic link (to {os.readlink(target)}); moegate does not replace links",
                        "name the folder itself, or a new path")
    if not stat.S_ISDIR(mode):
        raise UserError(f"{target} exists and is not a folder", "choose another path (moegate writes a folder there)")
    try:
        if not any(target.iterdir()) or (target / marker(kind)).is_file():
            return
    except FileNotFoundError:  # another writer is swapping it this instant; atomic_dir checks again under the lock
        return
    if recognise is not None and recognise(target):
        return
    others = sorted(m.name for m in target.glob(f"{MARKER_PREFIX}*"))
    what = f"a moegate {others[0][len(MARKER_PREFIX):]} folder" if others else "a folder moegate did not create"
    raise UserError(f"{target} is not empty and is {what} (no {marker(kind)} in it)",
                    "choose a new or empty folder: moegate replaces only folders it wrote")


def claim_dir(target: Path, kind: str, *, protect: Iterable[Path | str] = (), recognise: Recognise | None = None) -> Path:
    """Create (or reuse) the ``kind`` folder ``target`` moegate writes files into, marking it as moegate's."""
    target = Path(target)
    check_replaceable(target, kind, protect=protect, recognise=recognise)
    target.mkdir(parents=True, exist_ok=True)
    if not (target / marker(kind)).is_file():
        atomic_write_text(target / marker(kind), f"moegate {kind}\n")
    return target


@contextlib.contextmanager
def _parent_lock(folder: Path) -> Iterator[None]:
    """Serialise swaps in one folder across processes (a lock on the folder itself: no lock file left behind)."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_dir(target: Path, *, kind: str, protect: Iterable[Path | str] = (), recognise: Recognise | None = None) -> Iterator[Path]:
    """Yield a temp dir beside ``target``; on success it is marked ``kind`` and renamed to ``target``.

    The only way moegate replaces a folder: ``target`` must pass ``check_replaceable`` (checked before
    and again at the swap, which is locked so that concurrent writers of one target each win whole).
    """
    target = Path(target)
    protect = tuple(protect)
    if target.parent.is_dir():  # under the lock: a concurrent swap never shows a half-swapped target
        with _parent_lock(target.parent):
            check_replaceable(target, kind, protect=protect, recognise=recognise)
    else:
        check_replaceable(target, kind, protect=protect, recognise=recognise)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    tmp.chmod(0o777 & ~_current_umask())
    try:
        yield tmp
        (tmp / marker(kind)).write_text(f"moegate {kind}\n", encoding="utf-8")
        with _parent_lock(target.parent):
            check_replaceable(target, kind, protect=protect, recognise=recognise)
            _swap(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _swap(tmp: Path, target: Path) -> None:
    if not target.exists():
        tmp.rename(target)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
    target.rename(old / target.name)
    try:
        tmp.rename(target)
    except BaseException:
        (old / target.name).rename(target)
        raise
    finally:
        shutil.rmtree(old, ignore_errors=True)


def save_safetensors(tensors: dict, path: Path, metadata: dict[str, str] | None = None) -> None:
    """safetensors' own writer, then the usual file mode (it creates files 0600, unreadable to a team's CI user)."""
    from safetensors.torch import save_file

    save_file(tensors, str(path), metadata=metadata)
    Path(path).chmod(0o666 & ~_current_umask())


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temp file and a rename; never leaves a partial file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), 0o666 & ~_current_umask())
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        raise UserError(f"could not write {path}: {exc.strerror or exc}", "free disk space or choose another output directory") from exc
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))
