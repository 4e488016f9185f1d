"""Streamed value comparison of two versions of a tensor: is the change a precision cast, and how big is it?

A cast to bf16, fp16 or fp8 and back (or storing the lower dtype) is a routine deployment step: every value
then equals the baseline's value rounded to that precision. ``Diff`` checks exactly that, chunk by chunk
(``_scan.CHUNK_BYTES / 64`` elements per side at a time), and measures the change (max/mean abs
error, ||delta|| / ||W||) while it reads.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from harness.checkpoint import read_safetensors_header
from harness.inspect import _scan

PRECISIONS: dict[str, tuple[int, int, float]] = {
    "bf16": (7, -126, (2 - 2**-7) * 2.0**127),
    "fp16": (10, -14, 65504.0),
    "fp8-e4m3": (3, -6, 448.0),
    "fp8-e5m2": (2, -14, 57344.0),
    "fp32": (23, -126, float(np.finfo(np.float32).max)),
}
"""Precision -> (mantissa bits, smallest normal exponent, largest finite value)."""
LOW_DTYPES = {"BF16": "bf16", "F16": "fp16", "F8_E4M3": "fp8-e4m3", "F8_E5M2": "fp8-e5m2", "F32": "fp32"}
FLOAT_DTYPES = {"F64", *LOW_DTYPES}


def _fp8_table(mantissa: int, bias: int, e4m3: bool) -> np.ndarray:
    """All 256 values of an fp8 format (``e4m3``: the fn variant, no infinities, 0x7F/0xFF NaN)."""
    out = np.empty(256, dtype=np.float64)
    for code in range(256):
        sign = -1.0 if code & 0x80 else 1.0
        exp, man = (code >> mantissa) & ((1 << (7 - mantissa)) - 1), code & ((1 << mantissa) - 1)
        top = (1 << (7 - mantissa)) - 1
        if e4m3 and exp == top and man == (1 << mantissa) - 1:
            out[code] = math.nan
        elif not e4m3 and exp == top:
            out[code] = sign * math.inf if man == 0 else math.nan
        elif exp == 0:
            out[code] = sign * man * 2.0 ** (1 - bias - mantissa)
        else:
            out[code] = sign * (1 + man / (1 << mantissa)) * 2.0 ** (exp - bias)
    return out


_FP8 = {"F8_E4M3": _fp8_table(3, 7, True), "F8_E5M2": _fp8_table(2, 15, False)}


def round_to(values: np.ndarray, precision: str) -> np.ndarray:
    """``values`` rounded to nearest-even in ``precision`` (overflow -> inf), as float64."""
    mantissa, emin, largest = PRECISIONS[precision]
    out = np.array(values, dtype=np.float64)
    pick = np.isfinite(out) & (out != 0)
    x = out[pick]
    _, exp = np.frexp(x)
    quantum = np.ldexp(1.0, np.maximum(exp - 1, emin) - mantissa)
    rounded = np.round(x / quantum) * quantum
    rounded[np.abs(rounded) > largest] = np.copysign(math.inf, x[np.abs(rounded) > largest])
    out[pick] = rounded
    return out


def _rounds_to(a: np.ndarray, b: np.ndarray, precision: str) -> bool:
    """Every ``b`` is ``a`` rounded to ``precision``, and no finite ``a`` overflowed."""
    r = round_to(a, precision)
    return bool((((r == b) | (np.isnan(r) & np.isnan(b))) & ~(np.isfinite(a) & ~np.isfinite(r))).all())


class Reader:
    """Open safetensors files by path, their headers read once; element ranges of a tensor as float64."""

    def __init__(self) -> None:
        self._open: dict[Path, tuple[int, dict[str, Any], int]] = {}

    def __enter__(self) -> Reader:
        return self

    def __exit__(self, *_exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        for fd, _, _ in self._open.values():
            os.close(fd)
        self._open.clear()

    def info(self, file: Path, name: str) -> dict[str, Any]:
        if file not in self._open:
            header, start = read_safetensors_header(file)
            self._open[file] = (os.open(file, os.O_RDONLY), header, start)
        return dict(self._open[file][1][name])

    def values(self, file: Path, name: str, lo: int, hi: int) -> np.ndarray:
        """Elements ``lo:hi`` of the flattened tensor, decoded (ints as their values, unknown dtypes as bytes)."""
        info = self.info(file, name)
        fd, _, start = self._open[file]
        dtype = str(info["dtype"])
        storage = _scan._NATIVE.get(dtype) or _scan._BITS.get(dtype) or np.uint8
        width = np.dtype(storage).itemsize
        begin = int(info["data_offsets"][0])
        raw: np.ndarray = np.frombuffer(os.pread(fd, (hi - lo) * width, start + begin + lo * width), dtype=storage)
        if dtype in _FP8:
            return np.asarray(_FP8[dtype][raw], dtype=np.float64)
        decoded = _scan.decode(raw, dtype)
        return np.asarray(raw if decoded is None else decoded, dtype=np.float64)


def elements(info: dict[str, Any]) -> int:
    n = 1
    for d in info["shape"]:
        n *= int(d)
    return n


@dataclass
class Diff:
    """Running comparison of baseline values ``a`` with candidate values ``b`` over one or more spans."""

    candidates: list[str]
    """Precisions every value seen so far is consistent with (a cast to any of them explains the change)."""
    count: int = 0
    differ: int = 0
    new_nonfinite: int = 0
    """Values finite in the baseline and NaN/inf in the candidate (an overflow, garbage)."""
    max_abs: float = 0.0
    sum_abs: float = 0.0
    ss_delta: float = 0.0
    ss_base: float = 0.0
    out_of_f16: bool = True
    """Every differing baseline value lies outside float16's normal range (bf16 written through float16?)."""
    errors: dict[str, tuple[float, float]] = field(default_factory=dict)

    @classmethod
    def start(cls, new_dtype: str) -> Diff:
        own = LOW_DTYPES.get(new_dtype)
        order = [own] if own and own != "fp32" else []
        return cls(candidates=order + [p for p in PRECISIONS if p not in order])

    def update(self, a: np.ndarray, b: np.ndarray) -> None:
        same = (a == b) | (np.isnan(a) & np.isnan(b))
        finite_a = np.isfinite(a)
        self.count += a.size
        self.differ += int((~same).sum())
        self.new_nonfinite += int((finite_a & ~np.isfinite(b)).sum())
        both = finite_a & np.isfinite(b)
        gap = np.abs(a[both] - b[both])
        if gap.size:
            self.max_abs = max(self.max_abs, float(gap.max()))
            self.sum_abs += float(gap.sum())
            self.ss_delta += float(np.dot(gap, gap))
        self.ss_base += float(np.dot(a[finite_a], a[finite_a]))
        changed = np.abs(a[~same & finite_a])
        if changed.size and not ((changed > 65504.0) | (changed < 6.104e-05)).all():
            self.out_of_f16 = False
        for span in (slice(0, 4096), slice(None)):  # a sample rules most precisions out cheaply
            for p in list(self.candidates):
                if not _rounds_to(a[span], b[span], p):
                    self.candidates.remove(p)

    @property
    def precision(self) -> str | None:
        """The precision whose rounding explains every value (None: no cast explains the change)."""
        return self.candidates[0] if self.candidates and not self.new_nonfinite else None

    @property
    def mean_abs(self) -> float:
        return self.sum_abs / self.count if self.count else 0.0

    @property
    def relative(self) -> float:
        """||b - a|| / ||a|| over the finite values (inf when the baseline is all zero and b is not)."""
        if self.ss_base == 0:
            return 0.0 if self.ss_delta == 0 else math.inf
        return math.sqrt(self.ss_delta / self.ss_base)


def compare(reader: Reader, diff: Diff, old: tuple[Path, str, int], new: tuple[Path, str, int], n: int) -> Diff:
    """Feed ``diff`` with ``n`` elements of the baseline tensor from ``old`` = (file, name, first element)
    against the candidate's from ``new``, in bounded chunks."""
    step = max(1, _scan.CHUNK_BYTES // 64)  # float64 working copies, several per side
    for k in range(0, n, step):
        m = min(step, n - k)
        a = reader.values(old[0], old[1], old[2] + k, old[2] + k + m)
        b = reader.values(new[0], new[1], new[2] + k, new[2] + k + m)
        diff.update(a, b)
    return diff
