"""Fingerprints of checkpoints: the request cache's model half, changed by any byte of any weight.

A fingerprint covers every file of the model folder that can change outputs (config, tokenizer and
generation files, remote code, every weight byte) and none that cannot (READMEs, moegate's own records
such as ``pruning.json``). A sampled hash (headers plus a few kilobytes per tensor, per leading row of
stacked experts and routers) used to be the key and missed edits between its samples; it is now only
the pre-check that tells a cached full digest (``_digests``) is still the file's.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from harness.checkpoint._digests import file_digest, tensor_digests
from harness.checkpoint._files import read_safetensors_header

FINGERPRINT_VERSION = 2
SLICE_BYTES = 64
"""Bytes per sampled slice."""
FULL_HASH_BYTES = 1 << 16
"""Tensors up to this size (biases, norms, small routers) are hashed completely."""
SAMPLES_PER_ROW = 8
SAMPLES_PER_TENSOR = 32
ROW_SAMPLED_MAX_ROWS = 1024
"""2-D tensors with at most this many rows (routers: one row per expert) are sampled row by row."""
SMALL_FILE_BYTES = 1 << 20
"""Files up to this size are hashed directly; larger ones through the digest cache."""
NOT_MODEL_FILES = frozenset({"pruning.json", "merging.json", "quantization.json", "perturbation.json", "testbed.json"})
"""moegate's records of how a checkpoint was made: they describe the weights and change no output."""


def model_files(path: Path) -> list[Path]:
    """The top-level files of a model folder that can change its outputs (dotfiles, docs, records excluded)."""
    out = []
    for file in sorted(p for p in path.iterdir() if p.is_file()):
        name = file.name
        if name.startswith(".") or name in NOT_MODEL_FILES or name.lower().endswith(".md"):
            continue
        if name.upper().startswith(("LICENSE", "NOTICE")):
            continue
        out.append(file)
    return out


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


def _hash_opaque(digest: Any, file: Path) -> None:
    """Size plus strided slices of a file of any format (GGUF, pickle)."""
    size = file.stat().st_size
    digest.update(str(size).encode())
    if size == 0:
        return
    with _RandomReader(file) as read:
        for a, b in _strided(0, size, 4096):
            digest.update(read(a, b))


_MEMO: dict[tuple[Any, ...], str] = {}
"""Per-process memo keyed by path, every file's (size, mtime_ns, ctime_ns, inode) and ``extra``: a
pipeline fingerprints the same checkpoint many times, and each time would re-stat its digest cache."""


def _stat_signature(path: Path) -> tuple[Any, ...]:
    files = [path] if path.is_file() else sorted(p for p in path.iterdir() if p.is_file())
    return tuple((p.name, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino) for p in files for st in [p.stat()])


def sampled_digest(file: Path) -> str:
    """The cheap pre-check: headers plus sampled bytes (per leading row of routers and stacked experts)."""
    digest = hashlib.sha256()
    if file.suffix == ".safetensors":
        _hash_safetensors(digest, file)
    else:
        _hash_opaque(digest, file)
    return digest.hexdigest()


def fingerprint_checkpoint(path: str | Path, extra: dict[str, Any] | None = None) -> str:
    """sha256 hex of a checkpoint directory or GGUF file, every weight byte included, plus ``extra``.

    The first call on a file reads it whole (cached on disk afterwards, and shared with the audit's scan).
    """
    path = Path(path)
    memo_key = (str(path.resolve()), _stat_signature(path))
    if memo_key not in _MEMO:
        _MEMO[memo_key] = content_digest(path)
    digest = hashlib.sha256(_MEMO[memo_key].encode())
    digest.update(b"\0extra\0" + json.dumps(extra or {}, sort_keys=True, default=str).encode())
    return digest.hexdigest()


def content_digest(path: str | Path) -> str:
    """The model half of the fingerprint without backend settings: equal digests mean identical models."""
    path = Path(path)
    digest = hashlib.sha256(f"moegate-fingerprint-v{FINGERPRINT_VERSION}".encode())
    if path.is_file():
        digest.update(b"gguf\0" + file_digest(path, sampled_digest).encode())
        return digest.hexdigest()
    for file in model_files(path):
        if file.suffix == ".safetensors":
            header, _ = read_safetensors_header(file)
            digest.update(f"\0safetensors:{file.name}\0".encode() + json.dumps(header, sort_keys=True).encode())
            for name, value in sorted(tensor_digests(file, sampled_digest).items()):
                digest.update(f"\0{name}\0{value}".encode())
        elif file.stat().st_size <= SMALL_FILE_BYTES:
            digest.update(f"\0file:{file.name}\0".encode() + file.read_bytes())
        else:
            digest.update(f"\0large:{file.name}\0".encode() + file_digest(file, sampled_digest).encode())
    return digest.hexdigest()


def fingerprint_module(model: Any, tokenizer: Any, extra: dict[str, Any] | None = None) -> str:
    """The same for a model held in memory (built or edited in-process): config, vocab, every tensor byte."""
    import torch

    digest = hashlib.sha256(f"moegate-fingerprint-module-v{FINGERPRINT_VERSION}".encode())
    digest.update(model.config.to_json_string(use_diff=False).encode())
    if tokenizer is not None:
        vocab = sorted(tokenizer.get_vocab().items())
        digest.update(json.dumps(vocab).encode())
        digest.update(str(getattr(tokenizer, "chat_template", None)).encode())
        digest.update(json.dumps(tokenizer.special_tokens_map, sort_keys=True, default=str).encode())
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        flat = tensor.detach().contiguous().reshape(-1).view(torch.uint8)  # one tensor at a time on the host
        digest.update(flat.cpu().numpy().tobytes())
    digest.update(b"\0extra\0" + json.dumps(extra or {}, sort_keys=True, default=str).encode())
    return digest.hexdigest()
