"""Find the experts and routers of an MoE checkpoint by its on-disk tensor names (no model load).

Names are read through ``harness.checkpoint.names``: the per-expert layout (Qwen2/3-MoE, Mixtral,
OLMoE, DeepSeek) names expert tensors ``...layers.<L>.<block>.experts.<E>.<proj>.weight`` and the
router ``...layers.<L>.<block>.gate.weight`` (``router.weight`` in some families). Shared experts never match.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from safetensors import safe_open

from harness.checkpoint import classify, safetensors_files
from harness.checkpoint.names import ROUTER_ATTRS
from harness.errors import UserError


@dataclass
class MoeCheckpoint:
    """Where every routed expert's tensors and every router live in a safetensors checkpoint."""

    path: Path
    config: dict
    files: list[str]  # safetensors file names, in order
    key_file: dict[str, str]  # tensor name -> file name
    experts: dict[tuple[int, int], list[str]] = field(default_factory=dict)  # (layer, expert) -> tensor names
    routers: dict[int, tuple[str, str | None]] = field(default_factory=dict)  # layer -> (weight, bias or None)

    @property
    def layers(self) -> list[int]:
        return sorted(self.routers)

    @property
    def num_experts(self) -> int:
        return 1 + max(e for _, e in self.experts)

    def expert_weight_keys(self, layer: int, expert: int) -> list[str]:
        """The 2-D projection matrices of one expert (what quantization touches)."""
        return [k for k in self.experts[(layer, expert)] if k.endswith(".weight")]


def open_checkpoint(path: str | Path) -> MoeCheckpoint:
    """Scan a local model folder; UserError if it is not a safetensors MoE checkpoint."""
    path = Path(path).expanduser()
    if not path.is_dir():
        raise UserError(f"model folder {path} does not exist", "pass a local folder with config.json and *.safetensors")
    config_path = path / "config.json"
    if not config_path.is_file():
        raise UserError(f"{path} has no config.json", "pass a Hugging Face model folder")
    try:
        config = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{config_path} is not valid JSON: {exc}", "restore the model's config.json") from exc
    files = [file.name for file in safetensors_files(path)]
    if not files:
        raise UserError(f"{path} holds no .safetensors files", "pass a Hugging Face model folder saved as safetensors")
    key_file: dict[str, str] = {}
    for name in files:
        try:
            with safe_open(str(path / name), framework="pt") as handle:
                key_file.update(dict.fromkeys(handle.keys(), name))
        except Exception as exc:  # safetensors raises its own error types for corrupt headers
            raise UserError(f"{path / name} is not a readable safetensors file ({exc})", "re-save or re-download it") from exc
    ckpt = MoeCheckpoint(path=path, config=config, files=files, key_file=key_file)
    blocks: dict[int, str] = {}
    for key in key_file:
        name = classify(key)
        if name.role == "expert" and name.layer is not None and name.expert is not None and name.block:
            ckpt.experts.setdefault((name.layer, name.expert), []).append(key)
            blocks[name.layer] = name.block
        elif name.role == "fused_experts":
            raise UserError(
                f"{path} stores experts fused ({key})",
                "save it in the per-expert layout (transformers save_pretrained writes that) and retry",
            )
    for layer, block in blocks.items():
        for router in ROUTER_ATTRS:
            if f"{block}.{router}.weight" in key_file:
                bias = f"{block}.{router}.bias"
                ckpt.routers[layer] = (f"{block}.{router}.weight", bias if bias in key_file else None)
                break
        else:
            raise UserError(f"{path}: layer {layer} has experts but no router ({block}.gate.weight)",
                            "pass an unmodified MoE checkpoint")
    if not ckpt.experts:
        raise UserError(f"{path} has no MoE layers (no '...experts.<n>...' tensors)",
                        "pass a Mixture-of-Experts checkpoint such as the one `moegate testbed build` writes")
    for key in ckpt.experts.values():
        key.sort()
    return ckpt
