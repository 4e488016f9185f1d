"""Per-tensor scans of safetensors files straight from disk: no model, no torch, bounded memory.

Each tensor is read with ``os.pread`` in chunks of whole leading rows (at most ``CHUNK_BYTES`` at a
time), hashed, and decoded with numpy (bfloat16 and float8 from their bit patterns, since numpy has
no such dtypes). Routers and stacked ``[E, ...]`` expert tensors also get per-row facts: which rows
are all zero (a zeroed expert) and which are masked (every value <= ``MASK_THRESHOLD``).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, Field

from harness.checkpoint import classify, read_safetensors_header
from harness.checkpoint._digests import remember_tensor_digests
from harness.checkpoint._filecache import entry_for, read_entry, write_entry

CHUNK_BYTES = 32 << 20
MASK_THRESHOLD = -1e4
"""A router logit at or below this can never win a top-k against real logits: the row is masked."""

_NATIVE = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64, "I32": np.int32,
           "I16": np.int16, "I8": np.int8, "U8": np.uint8, "U16": np.uint16, "U32": np.uint32,
           "U64": np.uint64, "BOOL": np.bool_}
_BITS = {"BF16": np.uint16, "F8_E4M3": np.uint8, "F8_E5M2": np.uint8, "F8_E8M0": np.uint8, "F4": np.uint8}


class TensorStat(BaseModel):
    """What one tensor holds, from its header and one streamed pass over its bytes."""

    name: str
    file: str
    dtype: str
    shape: list[int]
    nbytes: int
    blake2b: str
    """Hash of the raw bytes: equal hashes mean bit-identical tensors."""
    nan: int = 0
    inf: int = 0
    all_zero: bool = False
    role: str = "other"
    """``expert`` (per-expert), ``fused_experts`` (stacked [E, ...]), ``router`` or ``other``."""
    layer: int | None = None
    expert: int | None = None
    zero_rows: list[int] = Field(default_factory=list)
    """Leading-dim rows that are all zero (fused experts, routers)."""
    masked_rows: list[int] = Field(default_factory=list)
    """Leading-dim rows whose values are all <= MASK_THRESHOLD (routers)."""
    unmasked_inf: int = 0
    """Infinities outside fully masked router rows (a ``-inf`` mask is not damage)."""
    row_digests: list[str] = Field(default_factory=list)
    """Hash of each leading-dim row (fused experts, routers): equal rows under another index are renumbered experts."""


def decode(raw: np.ndarray, dtype: str) -> np.ndarray | None:
    """Values as a float array (``None`` for dtypes without NaN/Inf semantics worth decoding)."""
    if dtype == "BF16":
        return (raw.astype(np.uint32) << 16).view(np.float32)
    if dtype in ("F64", "F32", "F16"):
        return raw
    return None


def _special_counts(raw: np.ndarray, dtype: str, values: np.ndarray | None) -> tuple[int, int]:
    """(NaN count, Inf count) of one chunk."""
    if values is not None:
        return int(np.isnan(values).sum()), int(np.isinf(values).sum())
    if dtype == "F8_E4M3":
        return int(((raw & 0x7F) == 0x7F).sum()), 0
    if dtype == "F8_E5M2":
        special = (raw & 0x7C) == 0x7C
        return int((special & ((raw & 0x03) != 0)).sum()), int((special & ((raw & 0x03) == 0)).sum())
    if dtype == "F8_E8M0":
        return int((raw == 0xFF).sum()), 0
    return 0, 0


def _zero_mask(raw: np.ndarray, dtype: str) -> np.ndarray:
    """Elementwise "is zero" (negative zero included for float bit patterns)."""
    if dtype == "BF16":
        return (raw & 0x7FFF) == 0
    if dtype in ("F8_E4M3", "F8_E5M2"):
        return (raw & 0x7F) == 0
    return raw == 0


def _chunks(rows: int, row_bytes: int) -> Iterator[tuple[int, int]]:
    per = max(1, CHUNK_BYTES // max(row_bytes, 1))
    for r0 in range(0, rows, per):
        yield r0, min(rows, r0 + per)


def scan_tensor(fd: int, offset: int, name: str, info: dict[str, Any], file: str) -> TensorStat:
    """Stream one tensor from the open file ``fd`` whose data section starts at byte ``offset``.

    ``os.pread`` per chunk (not mmap) keeps the resident set at one chunk, whatever the file size.
    """
    dtype, shape = str(info["dtype"]), [int(d) for d in info["shape"]]
    begin, end = (int(x) for x in info["data_offsets"])
    found = classify(name)
    role, layer, expert = found.role, found.layer, found.expert
    size = end - begin
    storage = _NATIVE.get(dtype) or _BITS.get(dtype) or np.uint8
    width = np.dtype(storage).itemsize
    rows = shape[0] if len(shape) >= 1 else 1
    per_row = role in ("router", "fused_experts") and rows > 0 and size % max(rows, 1) == 0
    if not per_row or size % max(rows, 1) or (size // max(rows, 1)) % width or dtype == "F4":
        per_row = False
    if per_row:
        row_bytes = size // rows if rows else 0
    else:  # element by element, so a chunk never exceeds CHUNK_BYTES
        row_bytes = width if size % width == 0 and dtype != "F4" else 1
        rows = size // row_bytes
    digest = hashlib.blake2b(digest_size=16)
    nan = inf = unmasked_inf = 0
    any_nonzero = False
    zero_rows: list[int] = []
    masked_rows: list[int] = []
    row_digests: list[str] = []
    for r0, r1 in _chunks(rows, row_bytes):
        chunk = os.pread(fd, (r1 - r0) * row_bytes, offset + begin + r0 * row_bytes)
        digest.update(chunk)
        if per_row:
            row_digests += [hashlib.blake2b(memoryview(chunk)[j:j + row_bytes], digest_size=8).hexdigest()
                            for j in range(0, len(chunk), row_bytes)]
        raw = np.frombuffer(chunk, dtype=storage if size % width == 0 else np.uint8)
        values = decode(raw, dtype)
        n, i = _special_counts(raw, dtype if size % width == 0 else "U8", values)
        nan, inf = nan + n, inf + i
        zeros = _zero_mask(raw, dtype)
        any_nonzero = any_nonzero or not bool(zeros.all())
        if per_row and raw.size:
            k = r1 - r0
            zero_rows += [r0 + j for j in np.flatnonzero(zeros.reshape(k, -1).all(axis=1)).tolist()]
            if values is not None:
                grid = values.reshape(k, -1)
                masked = (grid <= MASK_THRESHOLD).all(axis=1)
                masked_rows += [r0 + j for j in np.flatnonzero(masked).tolist()]
                unmasked_inf += int(np.isinf(grid[~masked]).sum())
        del raw, values, zeros, chunk
    if not per_row or decode(np.zeros(0, dtype=storage), dtype) is None:
        unmasked_inf = inf
    return TensorStat(
        name=name, file=file, dtype=dtype, shape=shape, nbytes=size, blake2b=digest.hexdigest(),
        nan=nan, inf=inf, all_zero=size > 0 and not any_nonzero, role=role, layer=layer, expert=expert,
        zero_rows=zero_rows if role == "fused_experts" else [], masked_rows=masked_rows if role == "router" else [],
        unmasked_inf=unmasked_inf, row_digests=row_digests,
    )


def scan_file(file: Path) -> list[TensorStat]:
    """Every tensor of one safetensors file (header already checked by ``check_safetensors``)."""
    header, start = read_safetensors_header(file)
    stats: list[TensorStat] = []
    with file.open("rb") as handle:
        for name, info in sorted(header.items(), key=lambda kv: kv[0]):
            if name == "__metadata__":
                continue
            stats.append(scan_tensor(handle.fileno(), start, name, info, file.name))
    return stats


SCAN_CACHE_VERSION = 2
"""Bump when ``TensorStat`` or the scan changes, so older cached scans are not reused."""


def scan_file_cached(file: Path) -> list[TensorStat]:
    """``scan_file`` behind the on-disk cache keyed by file identity (``harness.checkpoint._filecache``).

    Why: a gate audits the candidate against the *same* baseline checkpoint on every run; reading the
    baseline's weights again each time doubled the audit.
    """
    st = file.stat()
    entry = entry_for(file, st, "scans", f"scan-{SCAN_CACHE_VERSION}")
    stored = read_entry(entry)
    if isinstance(stored, list):
        try:
            return [TensorStat.model_validate(item) for item in stored]
        except ValueError:
            pass
    stats = scan_file(file)
    # The scan read every byte: its tensor hashes are the fingerprint's too (one read of the file per gate).
    remember_tensor_digests(file, st, {s.name: s.blake2b for s in stats})
    write_entry(entry, st, [s.model_dump(mode="json") for s in stats])
    return stats
