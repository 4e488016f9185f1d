"""``moegate info MODEL``: architecture and MoE layout from config and weight headers, no model load.

Parameter counts come from safetensors headers (or GGUF tensor infos), so ``info`` on a 400B
checkpoint takes a second and no memory.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import click

from harness.checkpoint import (
    ModelSource,
    is_routed_expert,
    moe_layout_from_config,
    read_config,
    read_safetensors_header,
    resolve_model,
)
from harness.cli._model_arg import testbed_keyword
from harness.errors import UserError


def _weights_summary(source: ModelSource) -> dict[str, Any]:
    params = expert_params = 0
    dtypes: Counter[str] = Counter()
    tensors = 0
    if source.weight_format == "safetensors":
        for file in source.weight_files:
            header, _ = read_safetensors_header(file)
            for name, info in header.items():
                if name == "__metadata__":
                    continue
                count = 1
                for dim in info["shape"]:
                    count *= int(dim)
                params += count
                tensors += 1
                dtypes[info["dtype"]] += count
                if is_routed_expert(name):
                    expert_params += count
    elif source.weight_format == "gguf":
        from gguf import GGUFReader

        for tensor in GGUFReader(str(source.path)).tensors:
            count = int(tensor.n_elements)
            params += count
            tensors += 1
            dtypes[tensor.tensor_type.name] += count
            if is_routed_expert(tensor.name):
                expert_params += count
    else:
        return {"parameters": None, "routed_expert_parameters": None, "tensors": None, "weight_dtypes": {}}
    return {
        "parameters": params,
        "routed_expert_parameters": expert_params,
        "tensors": tensors,
        "weight_dtypes": dict(dtypes.most_common()),
    }


def _config_of(source: ModelSource) -> dict[str, Any]:
    if source.kind == "hf_dir" and source.path is not None:
        return read_config(source.path)
    from transformers import AutoConfig

    kwargs = {"gguf_file": source.gguf_file} if source.gguf_file else {}
    try:
        return AutoConfig.from_pretrained(source.load_dir, **kwargs).to_dict()
    except (OSError, ValueError, KeyError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UserError(f"could not read the config of {source.spec}: {first}", "check the model path or hub id") from None


def layout_warnings(config: dict[str, Any], routed_expert_parameters: int | None) -> list[str]:
    """Expert counts and top-k in config.json that no router can have (the layout shown would be wrong)."""
    from harness.checkpoint.layout import EXPERT_KEYS, TOP_K_KEYS

    inner = config.get("text_config") if isinstance(config.get("text_config"), dict) else {}
    merged = {**inner, **{k: v for k, v in config.items() if v is not None}}
    experts = next(((k, merged[k]) for k in EXPERT_KEYS if isinstance(merged.get(k), int)), None)
    top_k = next(((k, merged[k]) for k in TOP_K_KEYS if isinstance(merged.get(k), int)), None)
    warnings = []
    if experts is not None and experts[1] < 1:
        tail = " yet the weights hold routed experts" if routed_expert_parameters else ""
        warnings.append(f"config.json says {experts[0]} = {experts[1]}{tail}: the layout shown is not a working MoE")
    if top_k is not None and top_k[1] < 1:
        warnings.append(f"config.json says {top_k[0]} = {top_k[1]}: a router must pick at least one expert")
    if experts is not None and top_k is not None and experts[1] >= 1 and top_k[1] > experts[1]:
        warnings.append(f"config.json says {top_k[0]} = {top_k[1]}, more than its {experts[1]} routed experts ({experts[0]})")
    return warnings


def checkpoint_info(model: str, *, trust_pickle: bool = False) -> dict[str, Any]:
    """Everything ``moegate info`` prints, as plain data (JSON-ready)."""
    source = resolve_model(model, trust_pickle=trust_pickle)
    config = _config_of(source)
    layout = moe_layout_from_config(config)
    files = list(source.weight_files)
    if source.kind == "hf_dir" and source.path is not None:
        files = [p for p in source.path.rglob("*") if p.is_file()]
    weights = _weights_summary(source)
    return {
        "model": model,
        "source": source.kind,
        "weight_format": source.weight_format,
        "model_type": config.get("model_type"),
        "architecture": (config.get("architectures") or [config.get("model_type")])[0],
        "num_layers": config.get("num_hidden_layers"),
        "hidden_size": config.get("hidden_size"),
        "vocab_size": config.get("vocab_size"),
        "max_position_embeddings": config.get("max_position_embeddings"),
        "config_dtype": str(config.get("dtype") or config.get("torch_dtype") or "") or None,
        **weights,
        "size_on_disk_bytes": sum(p.stat().st_size for p in files) if files else None,
        "moe": layout.to_dict() if layout is not None else None,
        "warnings": layout_warnings(config, weights["routed_expert_parameters"]),
    }


def _human_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    size = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if size < 1024 or unit == "TB":
            return f"{size:.1f} {unit}" if unit != "B" else f"{int(size)} B"
        size /= 1024
    return f"{n} B"


def _human_count(n: int | None) -> str:
    if n is None:
        return "-"
    for scale, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= scale:
            return f"{n / scale:.2f}{suffix} ({n:,})"
    return str(n)


def _layers_text(layers: list[int], num_layers: int) -> str:
    if layers == list(range(num_layers)):
        return f"all {num_layers}"
    runs: list[str] = []
    start = prev = None
    for i in [*layers, None]:
        if start is not None and (i is None or i != prev + 1):
            runs.append(str(start) if start == prev else f"{start}-{prev}")
            start = None
        if i is not None and start is None:
            start = i
        prev = i
    return f"{len(layers)} of {num_layers}: {', '.join(runs)}"


def _print_table(info: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"moegate info · {info['model']}", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value")
    table.add_row("architecture", f"{info['architecture']} (model_type {info['model_type']})")
    table.add_row("weights", f"{info['weight_format']} · {info['tensors'] or '-'} tensors · "
                  + (", ".join(info["weight_dtypes"]) or info["config_dtype"] or "-"))
    table.add_row("parameters", _human_count(info["parameters"]))
    table.add_row("size on disk", _human_bytes(info["size_on_disk_bytes"]))
    table.add_row("layers · hidden · vocab", f"{info['num_layers']} · {info['hidden_size']} · {info['vocab_size']}")
    moe = info["moe"]
    if moe is None:
        table.add_row("MoE", "none (dense model)")
    else:
        table.add_row("MoE layers", _layers_text(moe["moe_layers"], moe["num_layers"]))
        table.add_row("routed experts / layer", str(moe["routed_experts"]))
        table.add_row("top-k", f"{moe['top_k']} ({moe['router_kind']}, renormalised: {moe['norm_topk_prob']})")
        shared = "none" if not moe["shared_experts"] else f"{moe['shared_experts']} (intermediate {moe['shared_intermediate_size']})"
        table.add_row("shared experts", shared)
        table.add_row("expert intermediate size", str(moe["expert_intermediate_size"]))
        table.add_row("routed expert parameters", _human_count(info["routed_expert_parameters"]))
    Console().print(table)


@click.command("info")
@click.argument("model", callback=testbed_keyword)
@click.option("--json", "as_json", is_flag=True, help="Print JSON (for machines) instead of a table.")
@click.option("--trust-pickle", is_flag=True, help="Allow pickle weights (*.bin); only for sources you trust.")
@click.option("--backend", "backend", default="transformers", show_default=True,
              help="Backend kind the model is meant for (info reads local files either way).")
def info(model: str, as_json: bool, trust_pickle: bool, backend: str) -> None:
    """Architecture, MoE layout, parameter count and size of MODEL (a directory, .gguf file or hub id)."""
    from harness.backends import BACKENDS

    BACKENDS.get(backend)  # unknown kinds fail with a did-you-mean
    if "://" in model:
        raise UserError(f"moegate info reads checkpoints, not servers ({model})", "pass a local directory or .gguf file")
    data = checkpoint_info(model, trust_pickle=trust_pickle)
    for line in data["warnings"]:
        click.echo(f"moegate: warning: {line}", err=True)
    if as_json:
        click.echo(json.dumps(data, indent=2))
    else:
        _print_table(data)


__all__ = ["checkpoint_info", "info"]
