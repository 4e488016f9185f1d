"""Digests of every byte of a weight file, cached on disk by file identity, with a sampled pre-check.

Why full bytes: the request cache is keyed by the model's fingerprint, and a fingerprint that samples
bytes misses a row edit between its samples, so a damaged candidate would be served the baseline's own
cached answers without one model call. Reading every byte of a 400B checkpoint takes minutes, so each
file's digests are cached by (path, size, mtime, ctime, inode) like the audit's scans, and the audit's
scan, which reads the same bytes anyway, hands its per-tensor digests over (``remember_tensor_digests``)
so that a gate reads each weight file once. A cached entry is trusted only if the file's sampled hash
(a few kilobytes, recomputed on every use) still matches the one stored beside it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from harness.atomic import atomic_write_text
from harness.checkpoint._files import read_safetensors_header
from harness.errors import UserError
from harness.resources import cache_dir

DIGEST_CACHE_VERSION = 1
READ_BYTES = 32 << 20
"""Bytes per read: bounded memory whatever the file size."""
RACY_SECONDS = 2
"""As git's "racy clean" rule: a file changed this recently is never cached (a second write in the same
clock tick could keep its timestamps)."""


def blake2b_span(fd: int, begin: int, end: int) -> str:
    """blake2b-128 of bytes ``[begin, end)`` of the open file ``fd`` (the audit scan's tensor hash)."""
    digest = hashlib.blake2b(digest_size=16)
    at = begin
    while at < end:
        chunk = os.pread(fd, min(READ_BYTES, end - at), at)
        if not chunk:
            raise UserError(f"a weight file ended early at byte {at} (expected {end})", "copy the checkpoint again")
        digest.update(chunk)
        at += len(chunk)
    return digest.hexdigest()


def _entry_path(file: Path, st: os.stat_result, kind: str) -> Path:
    key = f"{DIGEST_CACHE_VERSION}\0{kind}\0{file.resolve()}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ctime_ns}\0{st.st_ino}"
    return cache_dir() / "digests" / f"{hashlib.sha256(key.encode()).hexdigest()}.json"


def _cached(file: Path, kind: str, sampled: Callable[[Path], str], compute: Callable[[Path], Any]) -> Any:
    st = file.stat()
    check = sampled(file)
    try:
        entry: Path | None = _entry_path(file, st, kind)
        assert entry is not None
        if entry.is_file():
            stored = json.loads(entry.read_text(encoding="utf-8"))
            if stored.get("sampled") == check:
                return stored["digests"]
    except (OSError, ValueError, KeyError, AttributeError, AssertionError):
        entry = None
    value = compute(file)
    if entry is not None:
        _store(entry, st, check, value)
    return value


def _store(entry: Path, st: os.stat_result, check: str, value: Any) -> None:
    if time.time_ns() - max(st.st_mtime_ns, st.st_ctime_ns) <= RACY_SECONDS * 1e9:
        return
    with contextlib.suppress(UserError, OSError):  # a convenience: a full disk there costs only the rereading
        atomic_write_text(entry, json.dumps({"sampled": check, "digests": value}))


def _tensor_digests_uncached(file: Path) -> dict[str, str]:
    header, start = read_safetensors_header(file)
    out: dict[str, str] = {}
    fd = os.open(file, os.O_RDONLY)
    try:
        if hasattr(os, "posix_fadvise"):
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
        for name in sorted(k for k in header if k != "__metadata__"):
            begin, end = (int(x) for x in header[name]["data_offsets"])
            out[name] = blake2b_span(fd, start + begin, start + end)
    finally:
        os.close(fd)
    return out


def tensor_digests(file: Path, sampled: Callable[[Path], str]) -> dict[str, str]:
    """{tensor name: blake2b-128 of its bytes} of a safetensors file; ``sampled`` is the pre-check hash."""
    return dict(_cached(Path(file), "safetensors", sampled, _tensor_digests_uncached))


def remember_tensor_digests(file: Path, st: os.stat_result, digests: Mapping[str, str], sampled: Callable[[Path], str]) -> None:
    """Cache digests that another full read of ``file`` (taken when it had stat ``st``) already computed."""
    with contextlib.suppress(OSError):
        if file.stat().st_mtime_ns != st.st_mtime_ns or file.stat().st_size != st.st_size:
            return  # rewritten while it was read: those digests describe no version of the file
        _store(_entry_path(Path(file), st, "safetensors"), st, sampled(Path(file)), dict(digests))


def _file_digest_uncached(file: Path) -> str:
    fd = os.open(file, os.O_RDONLY)
    try:
        if hasattr(os, "posix_fadvise"):
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
        return blake2b_span(fd, 0, os.fstat(fd).st_size)
    finally:
        os.close(fd)


def file_digest(file: Path, sampled: Callable[[Path], str]) -> str:
    """blake2b-128 of every byte of ``file`` (GGUF, pickle or any other large file)."""
    return str(_cached(Path(file), "file", sampled, _file_digest_uncached))
