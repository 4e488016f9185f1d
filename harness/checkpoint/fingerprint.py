"""Fingerprints of checkpoints: the request cache's model half, changed by any byte of any weight.

A fingerprint covers every file of the model folder that can change outputs (config, tokenizer and
generation files, remote code, every weight byte) and none that cannot (READMEs, moegate's own records
such as ``pruning.json``). A sampled hash (headers plus a few kilobytes per tensor) used to be the key
and missed edits between its samples; sampling is now only the pre-check that tells a cached full
digest (``_digests``) is still the file's.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from harness.checkpoint._digests import file_digest, tensor_digests
from harness.checkpoint._files import read_safetensors_header

FINGERPRINT_VERSION = 2
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


_MEMO: dict[tuple[Any, ...], str] = {}
"""Per-process memo of ``content_digest``, keyed by path and every file's (size, mtime_ns, ctime_ns, inode):
a gate digests the same checkpoints several times (audit check, fingerprint, baseline record), and each
time would re-read the small files and redo the pre-checks."""


def _stat_signature(path: Path) -> tuple[Any, ...]:
    files = [path] if path.is_file() else sorted(p for p in path.iterdir() if p.is_file())
    return tuple((p.name, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino) for p in files for st in [p.stat()])


def fingerprint_checkpoint(path: str | Path, extra: dict[str, Any] | None = None) -> str:
    """sha256 hex of a checkpoint directory or GGUF file, every weight byte included, plus ``extra``.

    The first call on a file reads it whole (cached on disk afterwards, and shared with the audit's scan).
    """
    digest = hashlib.sha256(content_digest(path).encode())
    digest.update(b"\0extra\0" + json.dumps(extra or {}, sort_keys=True, default=str).encode())
    return digest.hexdigest()


def content_digest(path: str | Path) -> str:
    """The model half of the fingerprint without backend settings: equal digests mean identical models."""
    path = Path(path)
    memo_key = (str(path.resolve()), _stat_signature(path))
    if memo_key not in _MEMO:
        _MEMO[memo_key] = _content_digest(path)
    return _MEMO[memo_key]


def _content_digest(path: Path) -> str:
    digest = hashlib.sha256(f"moegate-fingerprint-v{FINGERPRINT_VERSION}".encode())
    if path.is_file():
        digest.update(b"gguf\0" + file_digest(path).encode())
        return digest.hexdigest()
    for file in model_files(path):
        if file.suffix == ".safetensors":
            header, _ = read_safetensors_header(file)
            digest.update(f"\0safetensors:{file.name}\0".encode() + json.dumps(header, sort_keys=True).encode())
            for name, value in sorted(tensor_digests(file).items()):
                digest.update(f"\0{name}\0{value}".encode())
        elif file.stat().st_size <= SMALL_FILE_BYTES:
            digest.update(f"\0file:{file.name}\0".encode() + file.read_bytes())
        else:
            digest.update(f"\0large:{file.name}\0".encode() + file_digest(file).encode())
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
