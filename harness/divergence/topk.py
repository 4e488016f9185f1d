"""Per-position top-k next-token tables and their compact binary form (pure numpy).

A ``TopKTable`` is what the fourth request kind returns for one text or continuation: for every scored
position, the actual next token and its log-prob, the model's own top-k ids and log-probs (descending),
and the probability mass left outside them. A candidate scored against a baseline also carries its
log-probs at the baseline's top-k ids (``probe_*``), so the KL needs no full-vocabulary rows in Python.

The binary form (``encode_topk``/``decode_topk``) is what the request cache and the baseline store keep:
ids as uint16 when the vocabulary fits (else uint32), log-probs and masses as float32: 10 + 6k bytes per
position, 0.40% of llama.cpp's full-logit base file at k = 64 on a 49,152-token vocabulary
(``benchmarks/kld_estimate.py``). float16 log-probs would make it 0.27% and, measured there, move the
mean-KL estimate by 0.1 points; but their 2^-11 relative precision moves a bucket mass by up to
~2^-11 · Σ p·|log p| (1e-4 to 1e-3 on flat heads), far above float32's 1e-6, which would turn the
estimates' exact lower bound into a loose one. Decoding
gives back the same table, dtypes included, so a cached result equals the computed one.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterator
from dataclasses import dataclass, fields, replace

import numpy as np

DEFAULT_TOP_K = 64
"""The baseline's stored top-k width. Measured on the test bed (``benchmarks/kld_estimate.py``, 8 WikiText-2
windows of 512, a high-entropy model whose top-64 holds 81% of the mass): the extrapolated estimate is
within 2.5% of the exact mean KL and 2.2% of its p99 on both the tiered-quantized and the 25%-pruned
candidate at k = 64, against 5.2% / 2.8% at k = 32 and 1.4% / 1.7% at k = 128, which costs twice the
bytes (0.79% of llama.cpp's base file, against 0.40%)."""

TOPK_FORMAT_VERSION = 1
_MAGIC = b"MGTK"
_HEADER = struct.Struct("<4sHHIIIHH")  # magic, version, flags, vocab, positions, windows, k, m
_WIDE_IDS = 1
_HAS_PROBE = 2


def id_dtype(vocab: int) -> np.dtype:
    """The smallest unsigned dtype that holds every id of a ``vocab``-token vocabulary (0, unknown: 32 bits)."""
    return np.dtype(np.uint16) if 0 < vocab <= 1 << 16 else np.dtype(np.uint32)


def rest_mass(logprobs: np.ndarray) -> np.ndarray:
    """1 − Σ exp(logprobs) per row, in float64, clipped at 0 (rounding can push the sum over 1)."""
    return np.clip(1.0 - np.exp(np.asarray(logprobs, np.float64)).sum(axis=-1), 0.0, None)


class TokenIds:
    """A read-only [positions, m] array of token ids, compared, hashed and cache-keyed by its content."""

    __slots__ = ("array", "digest")

    def __init__(self, array: np.ndarray) -> None:
        values = np.ascontiguousarray(array, dtype=np.uint32)
        if values.ndim != 2:
            raise ValueError(f"token ids must be [positions, m], got shape {values.shape}")
        values.setflags(write=False)
        self.array = values
        shape = ",".join(str(n) for n in values.shape)
        self.digest = hashlib.sha256(shape.encode() + b"\0" + values.tobytes()).hexdigest()

    def cache_identity(self) -> dict[str, object]:
        """What a request key holds instead of the ids themselves."""
        return {"token_ids_sha256": self.digest, "shape": list(self.array.shape)}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TokenIds) and other.digest == self.digest

    def __hash__(self) -> int:
        return hash(self.digest)

    def __repr__(self) -> str:
        return f"TokenIds(shape={self.array.shape}, sha256={self.digest[:12]}…)"


@dataclass(frozen=True, eq=False)
class TopKTable:
    """Teacher-forced next-token top-k of one model over one text or continuation."""

    vocab: int
    """Size of the model's output distribution (logits width); 0 when unknown (a served model does not tell)."""
    window_sizes: tuple[int, ...]
    """Scored positions per window, in order (a continuation is one window); they sum to ``positions``."""
    targets: np.ndarray
    """[N] the actual next token at each position."""
    target_logprobs: np.ndarray
    """[N] its log-probability (natural log)."""
    top_ids: np.ndarray
    """[N, k] the model's k most likely next tokens, most likely first."""
    top_logprobs: np.ndarray
    """[N, k] their log-probabilities."""
    rest_mass: np.ndarray
    """[N] probability outside ``top_ids`` (1 − Σ top-k, float64 sum of the float32 log-probs)."""
    probe_ids: np.ndarray | None = None
    """[N, m] ids asked for by the request (a baseline's top-k), when it asked."""
    probe_logprobs: np.ndarray | None = None
    """[N, m] this model's log-probs at ``probe_ids``."""
    probe_rest_mass: np.ndarray | None = None
    """[N] this model's probability outside ``probe_ids``."""

    def __post_init__(self) -> None:
        ids = id_dtype(self.vocab)
        set_ = object.__setattr__
        set_(self, "window_sizes", tuple(int(n) for n in self.window_sizes))
        n = sum(self.window_sizes)
        wanted = {
            "targets": (ids, (n,)), "target_logprobs": (np.float32, (n,)), "top_ids": (ids, (n, -1)),
            "top_logprobs": (np.float32, (n, -1)), "rest_mass": (np.float32, (n,)),
            "probe_ids": (ids, (n, -1)), "probe_logprobs": (np.float32, (n, -1)), "probe_rest_mass": (np.float32, (n,)),
        }
        probes = [self.probe_ids is None, self.probe_logprobs is None, self.probe_rest_mass is None]
        if len(set(probes)) != 1:
            raise ValueError("probe_ids, probe_logprobs and probe_rest_mass come together or not at all")
        for name, (dtype, shape) in wanted.items():
            value = getattr(self, name)
            if value is None:
                continue
            array = np.array(value, dtype=dtype, order="C")  # a copy: the caller's array stays writable
            if array.ndim != len(shape) or array.shape[0] != n:
                raise ValueError(f"{name} has shape {array.shape}, expected ({n}{', k' if len(shape) == 2 else ''}) for {n} positions")
            array.setflags(write=False)
            set_(self, name, array)
        if self.top_logprobs.shape != self.top_ids.shape:
            raise ValueError(f"top_ids {self.top_ids.shape} and top_logprobs {self.top_logprobs.shape} differ in shape")
        if self.probe_ids is not None and self.probe_logprobs is not None and self.probe_ids.shape != self.probe_logprobs.shape:
            raise ValueError(f"probe_ids {self.probe_ids.shape} and probe_logprobs {self.probe_logprobs.shape} differ in shape")

    @property
    def positions(self) -> int:
        return int(self.targets.shape[0])

    @property
    def k(self) -> int:
        return int(self.top_ids.shape[1])

    def window_slices(self) -> Iterator[slice]:
        start = 0
        for size in self.window_sizes:
            yield slice(start, start + size)
            start += size

    def select_windows(self, start: int, stop: int) -> TopKTable:
        """The table of windows ``start`` … ``stop - 1`` only (probe rows included)."""
        sizes = self.window_sizes[start:stop]
        first = sum(self.window_sizes[:start])
        rows = slice(first, first + sum(sizes))
        changes: dict[str, object] = {"window_sizes": sizes}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, np.ndarray):
                changes[f.name] = value[rows]
        return replace(self, **changes)  # type: ignore[arg-type]

    def truncate(self, k: int) -> TopKTable:
        """The same table at a smaller k: the dropped entries' mass moves into the rest (probes too)."""
        if not 1 <= k <= self.k:
            raise ValueError(f"cannot truncate a top-{self.k} table to k={k}")
        changes: dict[str, np.ndarray] = {
            "top_ids": self.top_ids[:, :k], "top_logprobs": self.top_logprobs[:, :k],
            "rest_mass": rest_mass(self.top_logprobs[:, :k]),
        }
        if self.probe_ids is not None and self.probe_logprobs is not None:
            m = min(k, self.probe_ids.shape[1])
            changes |= {"probe_ids": self.probe_ids[:, :m], "probe_logprobs": self.probe_logprobs[:, :m],
                        "probe_rest_mass": rest_mass(self.probe_logprobs[:, :m])}
        return replace(self, **changes)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TopKTable):
            return NotImplemented
        for f in fields(self):
            a, b = getattr(self, f.name), getattr(other, f.name)
            if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
                if a is None or b is None or a.dtype != b.dtype or not np.array_equal(a, b, equal_nan=a.dtype.kind == "f"):
                    return False
            elif a != b:
                return False
        return True

    __hash__ = None  # type: ignore[assignment]


def concat_tables(tables: list[TopKTable]) -> TopKTable:
    """One table holding ``tables`` one after another, each table's windows kept (same vocab, k and probe)."""
    if not tables:
        raise ValueError("no tables to concatenate")
    first = tables[0]
    for table in tables[1:]:
        if table.vocab != first.vocab or table.k != first.k or (table.probe_ids is None) != (first.probe_ids is None):
            raise ValueError(f"cannot concatenate tables of vocab {table.vocab}/k {table.k} and vocab {first.vocab}/k {first.k}")
    values: dict[str, object] = {"vocab": first.vocab,
                                 "window_sizes": tuple(n for t in tables for n in t.window_sizes)}
    for f in fields(first):
        if isinstance(getattr(first, f.name), np.ndarray):
            values[f.name] = np.concatenate([getattr(t, f.name) for t in tables])
    return TopKTable(**values)  # type: ignore[arg-type]


def encode_topk(table: TopKTable) -> bytes:
    """The versioned binary form: a fixed header, the window sizes, then each array's raw bytes."""
    probe = table.probe_ids is not None
    wide = id_dtype(table.vocab) == np.uint32
    m = table.probe_ids.shape[1] if table.probe_ids is not None else 0
    flags = (_WIDE_IDS if wide else 0) | (_HAS_PROBE if probe else 0)
    parts = [
        _HEADER.pack(_MAGIC, TOPK_FORMAT_VERSION, flags, table.vocab, table.positions, len(table.window_sizes), table.k, m),
        np.asarray(table.window_sizes, dtype="<u4").tobytes(),
    ]
    arrays = [table.targets, table.target_logprobs, table.top_ids, table.top_logprobs, table.rest_mass]
    if probe:
        arrays += [table.probe_ids, table.probe_logprobs, table.probe_rest_mass]
    parts += [a.astype(a.dtype.newbyteorder("<"), copy=False).tobytes() for a in arrays if a is not None]
    return b"".join(parts)


def decode_topk(data: bytes) -> TopKTable:
    """Inverse of ``encode_topk``; a wrong magic, version or length raises ``ValueError`` naming it."""
    if len(data) < _HEADER.size:
        raise ValueError(f"top-k data is {len(data)} bytes, shorter than its {_HEADER.size}-byte header")
    magic, version, flags, vocab, n, windows, k, m = _HEADER.unpack_from(data)
    if magic != _MAGIC:
        raise ValueError(f"not a moegate top-k table (magic {magic!r})")
    if version != TOPK_FORMAT_VERSION:
        raise ValueError(f"top-k format version {version}; this moegate reads version {TOPK_FORMAT_VERSION}")
    ids = np.dtype("<u4") if flags & _WIDE_IDS else np.dtype("<u2")
    f32 = np.dtype("<f4")
    layout: list[tuple[str, np.dtype, tuple[int, ...]]] = [
        ("window_sizes", np.dtype("<u4"), (windows,)), ("targets", ids, (n,)), ("target_logprobs", f32, (n,)),
        ("top_ids", ids, (n, k)), ("top_logprobs", f32, (n, k)), ("rest_mass", f32, (n,)),
    ]
    if flags & _HAS_PROBE:
        layout += [("probe_ids", ids, (n, m)), ("probe_logprobs", f32, (n, m)), ("probe_rest_mass", f32, (n,))]
    expected = _HEADER.size + sum(dtype.itemsize * int(np.prod(shape)) for _, dtype, shape in layout)
    if len(data) != expected:
        raise ValueError(f"top-k data is {len(data)} bytes, its header describes {expected}")
    offset, values = _HEADER.size, {}
    for name, dtype, shape in layout:
        count = int(np.prod(shape))
        values[name] = np.frombuffer(data, dtype=dtype, count=count, offset=offset).reshape(shape)
        offset += dtype.itemsize * count
    sizes = tuple(int(s) for s in values.pop("window_sizes"))
    if sum(sizes) != n:
        raise ValueError(f"top-k window sizes sum to {sum(sizes)}, the header says {n} positions")
    return TopKTable(vocab=vocab, window_sizes=sizes, **values)
