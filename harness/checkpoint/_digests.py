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
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from harness.checkpoint._filecache import entry_for, read_entry, write_entry
from harness.checkpoint._files import read_safetensors_header
from harness.errors import UserError

DIGEST_CACHE_VERSION = "digests-1"
READ_BYTES = 32 << 20
"""Bytes per read: bounded memory whatever the file size."""
SLICE_BYTES = 64
"""Bytes per slice of the pre-check."""
PRECHECK_SLICES = 4096


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


@contextlib.contextmanager
def _opened(file: Path, advice: int) -> Iterator[int]:
    fd = os.open(file, os.O_RDONLY)
    try:
        if hasattr(os, "posix_fadvise"):
            os.posix_fadvise(fd, 0, 0, advice)
        yield fd
    finally:
        os.close(fd)


def _strided(begin: int, end: int, count: int) -> list[tuple[int, int]]:
    span = end - begin
    if span <= SLICE_BYTES * count:
        return [(begin, end)] if span > 0 else []
    step = (span - SLICE_BYTES) / (count - 1)
    return [(begin + int(j * step), begin + int(j * step) + SLICE_BYTES) for j in range(count)]


def sampled_digest(file: Path) -> str:
    """The cheap pre-check of a cached full digest: size, a safetensors header whole, and strided slices.

    It only has to notice a file that changed while keeping its identity (size, times, inode), which
    no ordinary write does; a few thousand reads, whatever the file's size.
    """
    digest = hashlib.sha256()
    size = file.stat().st_size
    digest.update(str(size).encode())
    with _opened(file, getattr(os, "POSIX_FADV_RANDOM", 0)) as fd:  # no read-ahead: a slice must not pull megabytes
        if file.suffix == ".safetensors":
            header, _ = read_safetensors_header(file)
            digest.update(json.dumps(header, sort_keys=True).encode())
        for a, b in _strided(0, size, PRECHECK_SLICES):
            digest.update(os.pread(fd, b - a, a))
    return digest.hexdigest()


def _cached(file: Path, kind: str, compute: Callable[[Path], Any]) -> Any:
    st = file.stat()
    entry = entry_for(file, st, "digests", f"{DIGEST_CACHE_VERSION}\0{kind}")
    check = sampled_digest(file)
    stored = read_entry(entry)
    if isinstance(stored, dict) and stored.get("sampled") == check and "digests" in stored:
        return stored["digests"]
    value = compute(file)
    write_entry(entry, st, {"sampled": check, "digests": value})
    return value


def _tensor_digests_uncached(file: Path) -> dict[str, str]:
    header, start = read_safetensors_header(file)
    out: dict[str, str] = {}
    with _opened(file, getattr(os, "POSIX_FADV_SEQUENTIAL", 0)) as fd:
        for name in sorted(k for k in header if k != "__metadata__"):
            begin, end = (int(x) for x in header[name]["data_offsets"])
            out[name] = blake2b_span(fd, start + begin, start + end)
    return out


def tensor_digests(file: Path) -> dict[str, str]:
    """{tensor name: blake2b-128 of its bytes} of a safetensors file."""
    return dict(_cached(Path(file), "safetensors", _tensor_digests_uncached))


def remember_tensor_digests(file: Path, st: os.stat_result, digests: Mapping[str, str]) -> None:
    """Cache digests that another full read of ``file`` (taken when it had stat ``st``) already computed."""
    try:
        now = Path(file).stat()
    except OSError:
        return
    if (now.st_mtime_ns, now.st_size) != (st.st_mtime_ns, st.st_size):
        return  # rewritten while it was read: those digests describe no version of the file
    entry = entry_for(Path(file), st, "digests", f"{DIGEST_CACHE_VERSION}\0safetensors")
    write_entry(entry, st, {"sampled": sampled_digest(Path(file)), "digests": dict(digests)})


def _file_digest_uncached(file: Path) -> str:
    with _opened(file, getattr(os, "POSIX_FADV_SEQUENTIAL", 0)) as fd:
        return blake2b_span(fd, 0, os.fstat(fd).st_size)


def file_digest(file: Path) -> str:
    """blake2b-128 of every byte of ``file`` (GGUF, pickle or any other large file)."""
    return str(_cached(Path(file), "file", _file_digest_uncached))
