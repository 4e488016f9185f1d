"""Write a modified copy of a checkpoint: edited tensors replaced, everything else byte-for-byte."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors import safe_open

from harness.atomic import atomic_dir, save_safetensors
from harness.compress._checkpoint import MoeCheckpoint
from harness.errors import UserError

Edit = Callable[[torch.Tensor], torch.Tensor]


@contextmanager
def output_dir(ckpt: MoeCheckpoint, out: str | Path) -> Iterator[Path]:
    """A temp folder renamed to ``out`` on success; refuses to overwrite the source checkpoint."""
    out = Path(out).expanduser()
    if out.resolve() == ckpt.path.resolve():
        raise UserError(f"--out {out} is the source model folder", "write the compressed model to a new folder")
    if out.exists() and any(out.iterdir()):
        raise UserError(f"--out {out} exists and is not empty", "choose a new output folder or remove it")
    with atomic_dir(out, kind="compressed", protect=(ckpt.path,)) as tmp:
        yield tmp


def write_edited(ckpt: MoeCheckpoint, tmp: Path, edits: dict[str, Edit]) -> None:
    """Copy every file of the checkpoint into ``tmp``, applying ``edits`` (tensor name -> function).

    Each safetensors file is rewritten with safetensors' own writer and its original metadata; tensors
    without an edit are passed through untouched, so their bytes stay identical.
    """
    unknown = sorted(set(edits) - set(ckpt.key_file))
    if unknown:
        raise ValueError(f"edits for tensors not in the checkpoint: {unknown[:3]}")
    for item in sorted(ckpt.path.iterdir()):
        if item.name in ckpt.files or item.name.startswith("."):
            continue
        if item.is_file():
            shutil.copy2(item, tmp / item.name)
    for name in ckpt.files:
        tensors: dict[str, torch.Tensor] = {}
        with safe_open(str(ckpt.path / name), framework="pt") as handle:
            metadata = handle.metadata()
            for key in handle.keys():  # noqa: SIM118 - safe_open handles are not iterable
                tensor = handle.get_tensor(key)
                if key in edits:
                    new = edits[key](tensor)
                    if new.shape != tensor.shape or new.dtype != tensor.dtype:
                        raise ValueError(f"edit of {key} changed {tuple(tensor.shape)}/{tensor.dtype} "
                                         f"to {tuple(new.shape)}/{new.dtype}")
                    tensor = new
                tensors[key] = tensor.contiguous()
        save_safetensors(tensors, tmp / name, metadata=metadata)
