"""Resolve a model spec (local HF directory, GGUF file, hub id) and check its files, without torch.

Everything a user can get wrong about a checkpoint is checked here *before* torch touches it, so a
bad path or a half-copied shard ends in one ``UserError`` line, not a traceback from deep inside
transformers. Pickle weights (``*.bin``, ``*.pt``) can run arbitrary code, so they load only when the
user opts in with ``trust_pickle``.
"""

from __future__ import annotations

import errno
import json
import mmap
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from harness.errors import UserError

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
    "vocab.json", "merges.txt", "added_tokens.json", "chat_template.jinja", "chat_template.json",
)
SAFETENSORS_DTYPE_BYTES = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
    "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1, "U16": 2, "U32": 4, "U64": 8, "F8_E8M0": 1, "F4": 1,
}


@dataclass(frozen=True)
class ModelSource:
    """Where a model comes from, after validation. ``path`` is the HF directory or the GGUF file."""

    spec: str
    kind: Literal["hf_dir", "gguf", "hub"]
    path: Path | None = None
    weight_format: Literal["safetensors", "pickle", "gguf", "hub"] = "safetensors"
    weight_files: tuple[Path, ...] = field(default=())

    @property
    def load_dir(self) -> str:
        """The first argument to ``from_pretrained``."""
        if self.kind == "hub":
            return self.spec
        assert self.path is not None
        return str(self.path.parent if self.kind == "gguf" else self.path)

    @property
    def gguf_file(self) -> str | None:
        return self.path.name if self.kind == "gguf" and self.path is not None else None


def _looks_like_hub_id(spec: str) -> bool:
    parts = spec.split("/")
    return (
        len(parts) == 2
        and all(parts)
        and not spec.startswith((".", "~", "/"))
        and not spec.endswith(".gguf")
        and os.sep == "/"
    )


def _broken_link(path: Path) -> str | None:
    """Why a path that ``exists()`` calls missing is not simply absent: a symbolic link loop or a dangling link."""
    try:
        os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "is a loop of symbolic links"
        if path.is_symlink():
            return f"is a symbolic link to {os.readlink(path)}, which does not exist"
    return None


def resolve_model(spec: str | os.PathLike[str], *, trust_pickle: bool = False, gguf_file: str | None = None) -> ModelSource:
    """Validate a model spec and say where its weights are; raises ``UserError`` on anything wrong."""
    spec = str(spec)
    path = Path(spec).expanduser()
    if not path.exists():
        broken = _broken_link(path)
        if broken:
            raise UserError(f"model path {spec} {broken}", "point it at a real model directory or .gguf file")
        if _looks_like_hub_id(spec):
            if os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("TRANSFORMERS_OFFLINE") == "1":
                raise UserError(
                    f"model '{spec}' is not a local path and the Hugging Face hub is offline (HF_HUB_OFFLINE=1)",
                    "pass a local model directory or GGUF file, or unset HF_HUB_OFFLINE",
                )
            return ModelSource(spec=spec, kind="hub", weight_format="hub")
        raise UserError(f"model path {spec} does not exist", "pass a local Hugging Face model directory or a .gguf file")
    if path.is_file():
        if path.suffix != ".gguf":
            raise UserError(
                f"model path {spec} is a file but not a .gguf file",
                "pass the directory holding config.json and the weights, or a .gguf file",
            )
        check_gguf(path)
        return ModelSource(spec=spec, kind="gguf", path=path, weight_format="gguf", weight_files=(path,))
    if gguf_file is not None:
        return resolve_model(path / gguf_file)
    config_path = path / "config.json"
    if not config_path.is_file():
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            return resolve_model(ggufs[0])
        hint = f"it holds {len(ggufs)} .gguf files: pass one of them" if ggufs else "pass a Hugging Face model directory"
        raise UserError(f"model directory {spec} has no config.json", hint)
    read_config(path)  # validates JSON and architecture
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise UserError(
            f"model directory {spec} has no tokenizer files (tokenizer.json, tokenizer_config.json...)",
            "copy the tokenizer files of the original checkpoint next to config.json",
        )
    safetensors = safetensors_files(path)
    if safetensors:
        for file in safetensors:
            check_safetensors(file)
        return ModelSource(spec=spec, kind="hf_dir", path=path, weight_format="safetensors", weight_files=safetensors)
    pickles = tuple(sorted(p for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES and p.is_file()))
    if pickles:
        if not trust_pickle:
            raise UserError(
                f"model directory {spec} holds only pickle weights ({pickles[0].name}), which can run arbitrary code when loaded",
                "convert it to safetensors, or pass --trust-pickle only if you trust the source",
            )
        return ModelSource(spec=spec, kind="hf_dir", path=path, weight_format="pickle", weight_files=pickles)
    raise UserError(f"model directory {spec} has no weights (*.safetensors)", "copy the weight files next to config.json")


def safetensors_files(path: Path) -> tuple[Path, ...]:
    index = path / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise UserError(f"{index} is not a valid safetensors index ({exc})", "restore the file from the original checkpoint") from None
        files = tuple(path / name for name in sorted(set(weight_map.values())))
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise UserError(f"{path} is missing shard {missing[0]} named in its index ({len(missing)} missing)", "copy the missing shards")
        return files
    return tuple(sorted(path.glob("*.safetensors")))


def read_config(path: Path) -> dict[str, Any]:
    """``config.json`` of an HF directory, checked to name an architecture transformers knows."""
    config_path = path / "config.json"
    try:
        config = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{config_path} is not valid JSON ({exc})", "restore config.json from the original checkpoint") from None
    if not isinstance(config, dict):
        raise UserError(f"{config_path} is not a JSON object", "restore config.json from the original checkpoint")
    from transformers import CONFIG_MAPPING

    model_type = config.get("model_type")
    if not model_type or model_type not in CONFIG_MAPPING:
        import transformers

        raise UserError(
            f"{config_path} names an unknown architecture (model_type={model_type!r}) for transformers {transformers.__version__}",
            "upgrade transformers, or fix model_type in config.json",
        )
    return config


MAX_HEADER_BYTES = 100_000_000
"""The safetensors library's own cap on a header (it refuses larger ones before reading)."""


def read_safetensors_header(file: Path) -> tuple[dict[str, Any], int]:
    """The JSON header of a safetensors file and the byte offset where tensor data starts."""
    size = file.stat().st_size
    with file.open("rb") as handle:
        raw = handle.read(8)
        if len(raw) < 8:
            raise UserError(f"{file} is truncated ({size} bytes, no safetensors header)", "re-download or re-copy the file")
        (length,) = struct.unpack("<Q", raw)
        if length > MAX_HEADER_BYTES:
            raise UserError(f"{file} claims a safetensors header of {length} bytes (more than the {MAX_HEADER_BYTES // 10**6} MB "
                            "the safetensors library accepts)", "the file is corrupt or not safetensors: re-download or re-copy it")
        if 8 + length > size:
            raise UserError(f"{file} is truncated (header says {length} bytes, file has {size})", "re-download or re-copy the file")
        try:
            header = json.loads(handle.read(length))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise UserError(f"{file} has a corrupt safetensors header", "re-download or re-copy the file") from None
    if not isinstance(header, dict):
        raise UserError(f"{file} has a corrupt safetensors header", "re-download or re-copy the file")
    return header, 8 + length


def check_safetensors(file: Path) -> dict[str, Any]:
    """Check that the header parses and the data size matches the header's offsets (truncation, corruption)."""
    header, start = read_safetensors_header(file)
    data_size = file.stat().st_size - start
    end_max = 0
    spans: list[tuple[int, int]] = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            begin, end = info["data_offsets"]
            count = 1
            for dim in info["shape"]:
                count *= int(dim)
            width = SAFETENSORS_DTYPE_BYTES.get(info["dtype"])
            valid = all(type(x) is int and x >= 0 for x in (begin, end, *info["shape"])) and begin <= end
        except (KeyError, TypeError, ValueError):
            valid = False
        if not valid:
            raise UserError(f"{file} has a corrupt entry for tensor {name} in its header", "re-download or re-copy the file") from None
        spans.append((begin, end))
        if width is not None and info["dtype"] != "F4" and end - begin != count * width:
            raise UserError(f"{file}: tensor {name} has {end - begin} bytes for shape {info['shape']}", "re-download or re-copy the file")
        end_max = max(end_max, end)
    position = 0
    for begin, end in sorted(spans):  # the format packs tensors back to back: overlaps and holes are corruption
        if begin != position:
            raise UserError(f"{file} has overlapping or non-contiguous tensor data in its header", "re-download or re-copy the file")
        position = end
    if end_max != data_size:
        what = "truncated" if data_size < end_max else "corrupt (trailing bytes)"
        raise UserError(
            f"{file} is {what}: header needs {end_max} data bytes, file has {data_size}",
            "re-download or re-copy the file",
        )
    return header


_GGUF_SCALARS = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
"""GGUF value type -> size in bytes (8 is a string, 9 an array)."""


def check_gguf(file: Path) -> None:
    """The magic ``GGUF``, a version the readers know, and metadata and tensor infos that fit in the file."""
    with file.open("rb") as handle:
        magic = handle.read(4)
        if magic != b"GGUF":
            raise UserError(f"{file} is not a GGUF file (bad magic)", "pass a valid .gguf file or a Hugging Face directory")
        if file.stat().st_size < 28:
            raise UserError(f"{file} is truncated ({file.stat().st_size} bytes: no GGUF header)", "re-download or re-copy the file")
        with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
            try:
                _walk_gguf(data)
            except (struct.error, ValueError) as exc:
                raise UserError(f"{file} is a truncated or corrupt GGUF file ({exc})", "re-download or re-copy the file") from None


def _walk_gguf(data: mmap.mmap) -> None:
    version, n_tensors, n_kv = struct.unpack_from("<IQQ", data, 4)
    if version not in (2, 3):
        raise ValueError(f"GGUF version {version}; readers know 2 and 3")
    at = 24

    def string(at: int) -> int:
        (length,) = struct.unpack_from("<Q", data, at)
        if at + 8 + length > len(data):
            raise ValueError("a string runs past the end of the file")
        return at + 8 + length

    def value(kind: int, at: int) -> int:
        if kind in _GGUF_SCALARS:
            struct.unpack_from(f"<{_GGUF_SCALARS[kind]}s", data, at)
            return at + _GGUF_SCALARS[kind]
        if kind == 8:
            return string(at)
        if kind == 9:
            item, count = struct.unpack_from("<IQ", data, at)
            at += 12
            if item in _GGUF_SCALARS:
                return value(0, at + _GGUF_SCALARS[item] * count - 1) if count else at
            for _ in range(count):
                at = value(item, at)
            return at
        raise ValueError(f"unknown metadata value type {kind}")

    for _ in range(n_kv):
        at = string(at)
        (kind,) = struct.unpack_from("<I", data, at)
        at = value(kind, at + 4)
    for _ in range(n_tensors):
        at = string(at)
        (dims,) = struct.unpack_from("<I", data, at)
        if dims > 8:
            raise ValueError(f"a tensor with {dims} dimensions")
        struct.unpack_from(f"<{dims}QIQ", data, at + 4)
        at += 4 + 8 * dims + 12
