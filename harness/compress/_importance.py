"""Per-expert importance from a calibration pass (through the profiler), or seeded random scores."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from harness.compress._checkpoint import MoeCheckpoint
from harness.errors import UserError
from harness.resources import file_sha256

CRITERIA: tuple[str, ...] = ("frequency", "soft", "ean", "reap", "random")


def check_criterion(criterion: str) -> None:
    if criterion not in CRITERIA:
        raise UserError(f"unknown criterion {criterion!r}", f"use one of {', '.join(CRITERIA)}")


def check_calib(calib: str | Path | None, *, required: bool) -> Path | None:
    """The calibration file, validated early so no work is wasted on a bad path."""
    if calib is None:
        if required:
            raise UserError("no calibration file given", "pass --calib FILE (.txt or .jsonl[.gz] with a text field)")
        return None
    from harness.prompts_io import read_prompts

    read_prompts(calib)  # raises UserError for a missing, empty or malformed file
    return Path(calib).expanduser()


def calib_info(calib: Path | None) -> dict:
    return {"calib_file": str(calib), "calib_sha256": file_sha256(calib)} if calib else {"calib_file": None}


def importance(
    ckpt: MoeCheckpoint, criterion: str, calib: Path | None, *, max_tokens: int = 512, seed: int = 0
) -> np.ndarray:
    """Scores [n_moe_layers (ckpt.layers order), n_experts]; higher = more important."""
    check_criterion(criterion)
    shape = (len(ckpt.layers), ckpt.num_experts)
    if criterion == "random":
        return np.random.default_rng(seed).random(shape)
    if calib is None:
        raise UserError(f"criterion {criterion!r} needs calibration text", "pass --calib FILE")
    from harness.checkpoint import load_model_and_tokenizer, resolve_model
    from harness.profiler import profile_model
    from harness.prompts_io import read_prompts

    prompts = read_prompts(calib)
    model, tokenizer, _ = load_model_and_tokenizer(resolve_model(ckpt.path), dtype="float32", device="cpu")
    profile = profile_model(
        model, tokenizer, [p.text for p in prompts], max_tokens=max_tokens, expert_norms=criterion in ("ean", "reap")
    )
    scores = profile.importance(criterion)  # type: ignore[arg-type]
    by_layer = dict(zip(profile.layer_indices(), scores, strict=True))
    missing = [layer for layer in ckpt.layers if layer not in by_layer]
    if missing or scores.shape[1] != shape[1]:
        raise ValueError(f"profile covers layers {sorted(by_layer)} x {scores.shape[1]} experts, "
                         f"checkpoint has {ckpt.layers} x {shape[1]}")
    return np.stack([by_layer[layer] for layer in ckpt.layers])
