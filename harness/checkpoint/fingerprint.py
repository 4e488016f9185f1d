"""Cheap, edit-sensitive fingerprints of checkpoints: the cache key's model half.

Hashing a 400B checkpoint in full takes longer than evaluating it, so we hash what determines outputs
(config, tokenizer files, generation config, every safetensors/GGUF header) plus a deterministic sample
of bytes from *every* tensor, read with pread and read-ahead off. Stacked expert tensors ``[E, ...]`` and small-row
tensors such as routers ``[E, H]`` are sampled per leading row, so editing one expert or masking one
router row changes the fingerprint; reloading the same files never does.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from harness.checkpoint._files import PICKLE_SUFFIXES, TOKENIZER_FILES, read_safetensors_header

FINGERPRINT_VERSION = 1
SLICE_BYTES = 64
"""Bytes per sampled slice."""
FULL_HASH_BYTES = 1 << 16
"""Tensors up to this size (biases, norms, small routers) are hashed completely."""
SAMPLES_PER_ROW = 8
SAMPLES_PER_TENSOR = 32
ROW_SAMPLED_MAX_ROWS = 1024
"""2-D tensors with at most this many rows (routers: one row per expert) are sampled row by row."""
META_FILES = ("config.json", "generation_config.json", *TOKENIZER_FILES)


def sample_spans(begin: int, end: int, shape: list[int]) -> Iterator[tuple[int, int]]:
    """Byte spans ``[a, b)`` to hash for a tensor stored at ``[begin, end)`` with ``shape``."""
    size = end - begin
    if size <= FULL_HASH_BYTES:
        yield begin, end
        return
    rows = int(shape[0]) if shape else 1
    per_row = len(shape) >= 3 or (len(shape) == 2 and rows <= ROW_SAMPLED_MAX_ROWS)
    if per_row and rows > 1 and size % rows == 0:
        row_bytes = size // rows
        for r in range(rows):
            yield from _strided(begin + r * row_bytes, begin + (r + 1) * row_bytes, SAMPLES_PER_ROW)
    else:
        yield from _strided(begin, end, SAMPLES_PER_TENSOR)


def _strided(begin: int, end: int, count: int) -> Iterator[tuple[int, int]]:
    span = end - begin
    if span <= SLICE_BYTES * count:
        yield begin, end
        return
    step = (span - SLICE_BYTES) / (count - 1)
    for j in range(count):
        a = begin + int(j * step)
        yield a, a + SLICE_BYTES


class _RandomReader:
    """``pread`` with read-ahead off: sampling a 400B checkpoint must not pull megabytes per slice."""

    def __init__(self, file: Path) -> None:
        self.file = file

    def __enter__(self) -> Callable[[int, int], bytes]:
        self.fd = os.open(self.file, os.O_RDONLY)
        if hasattr(os, "posix_fadvise"):
            os.posix_fadvise(self.fd, 0, 0, os.POSIX_FADV_RANDOM)
        return lambda a, b: os.pread(self.fd, b - a, a)

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)


def _hash_safetensors(digest: Any, file: Path) -> None:
    header, data_start = read_safetensors_header(file)
    digest.update(json.dumps(header, sort_keys=True).encode())
    names = sorted(k for k in header if k != "__metadata__")
    if not names:
        return
    with _RandomReader(file) as read:
        for name in names:
            info = header[name]
            begin, end = info["data_offsets"]
            digest.update(name.encode())
            for a, b in sample_spans(data_start + begin, data_start + end, info["shape"]):
                digest.update(read(a, b))


def _hash_gguf(digest: Any, file: Path) -> None:
    from gguf import GGUFReader

    reader = GGUFReader(str(file))
    with _RandomReader(file) as read:
        digest.update(read(0, int(reader.data_offset)))  # magic, metadata (tokenizer, config), tensor infos
        for tensor in sorted(reader.tensors, key=lambda t: t.name):
            begin = int(tensor.data_offset)
            end = begin + int(tensor.n_bytes)
            # GGUF lists dims fastest-first; the leading (expert) dim is the last one.
            shape = [int(d) for d in reversed(list(tensor.shape))]
            digest.update(tensor.name.encode())
            for a, b in sample_spans(begin, end, shape):
                digest.update(read(a, b))


def _hash_opaque(digest: Any, file: Path) -> None:
    """Pickle weights cannot be parsed without loading: hash size plus strided slices of the file."""
    size = file.stat().st_size
    digest.update(str(size).encode())
    if size == 0:
        return
    with _RandomReader(file) as read:
        for a, b in _strided(0, size, 4096):
            digest.update(read(a, b))


_MEMO: dict[tuple[Any, ...], str] = {}
"""Per-process memo keyed by path, every file's (size, mtime_ns, inode) and ``extra``: parsing a
GGUF's metadata takes seconds, and a pipeline fingerprints the same checkpoint many times."""


def _stat_signature(path: Path) -> tuple[Any, ...]:
    files = [path] if path.is_file() else sorted(p for p in path.iterdir() if p.is_file())
    return tuple((p.name, st.st_size, st.st_mtime_ns, st.st_ino) for p in files for st in [p.stat()])


def fingerprint_checkpoint(path: str | Path, extra: dict[str, Any] | None = None) -> str:
    """sha256 hex of a checkpoint directory or GGUF file plus ``extra`` (dtype, backend settings).

    Reads headers and a few kilobytes per tensor, never whole files.
    """
    path = Path(path)
    memo_key = (str(path.resolve()), _stat_signature(path))
    if memo_key not in _MEMO:
        _MEMO[memo_key] = _content_digest(path)
    digest = hashlib.sha256(_MEMO[memo_key].encode())
    digest.update(b"\0extra\0" + json.dumps(extra or {}, sort_keys=True, default=str).encode())
    return digest.hexdigest()


def _content_digest(path: Path) -> str:
    digest = hashlib.sha256(f"moegate-fingerprint-v{FINGERPRINT_VERSION}".encode())
    if path.is_file():
        digest.update(b"gguf\0")
        _hash_gguf(digest, path)
    else:
        for name in META_FILES:
            meta = path / name
            if meta.is_file():
                digest.update(f"\0file:{name}\0".encode() + meta.read_bytes())
        weights = sorted(path.glob("*.safetensors"))
        for file in weights:
            digest.update(f"\0safetensors:{file.name}\0".encode())
            _hash_safetensors(digest, file)
        if not weights:
            for file in sorted(p for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES and p.is_file()):
                digest.update(f"\0pickle:{file.name}\0".encode())
                _hash_opaque(digest, file)
    return digest.hexdigest()


def fingerprint_module(model: Any, tokenizer: Any, extra: dict[str, Any] | None = None) -> str:
    """The same idea for a model held in memory (built or edited in-process): config, vocab, sampled tensors."""
    import torch

    digest = hashlib.sha256(f"moegate-fingerprint-module-v{FINGERPRINT_VERSION}".encode())
    digest.update(model.config.to_json_string(use_diff=False).encode())
    if tokenizer is not None:
        vocab = sorted(tokenizer.get_vocab().items())
        digest.update(json.dumps(vocab).encode())
        digest.update(str(getattr(tokenizer, "chat_template", None)).encode())
        digest.update(json.dumps(tokenizer.special_tokens_map, sort_keys=True, default=str).encode())
    for name, tensor in sorted(model.state_dict().items()):
        # Sample on the tensor's own device and move only the sampled bytes (GPU-resident models).
        flat = tensor.detach().contiguous().reshape(-1).view(torch.uint8)
        spans = list(sample_spans(0, flat.numel(), list(tensor.shape)))
        index = torch.cat([torch.arange(a, b, device=flat.device) for a, b in spans]) if spans else None
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        if index is not None:
            digest.update(flat[index].cpu().numpy().tobytes())
    digest.update(b"\0extra\0" + json.dumps(extra or {}, sort_keys=True, default=str).encode())
    return digest.hexdigest()
