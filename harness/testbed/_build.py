"""Build the SmolLM2 MoE test bed: calibrate on C4, fit every layer in sequence, write Qwen2-MoE files."""

from __future__ import annotations

import gzip
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import torch

from harness.atomic import save_safetensors
from harness.testbed._fit import MoeLayerWeights, fit_layer, moe_forward
from harness.testbed._settings import TestbedSettings

CALIB_FILE = "c4_validation_sample_2k.jsonl.gz"
_TORCH_THREADS = 2  # fixed so BLAS partitions work identically on every rerun (same bytes)


def load_dense(gguf: Path):
    """The dense SmolLM2 model and tokenizer, dequantized to float32 from the GGUF.

    ``local_files_only`` is explicit because transformers saves it into tokenizer_config.json: left to
    the environment (HF_HUB_OFFLINE), the written test bed's bytes and fingerprint would depend on it.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32, local_files_only=True
    )
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name, local_files_only=True)
    return model.eval(), tokenizer


def calibration_ids(tokenizer, calib_path: Path, n_seqs: int, seq_len: int) -> torch.Tensor:
    """[n_seqs, seq_len] token ids: C4 documents in file order, joined by blank lines, cut into windows."""
    needed = n_seqs * seq_len
    ids: list[int] = []
    with gzip.open(calib_path, "rt", encoding="utf-8") as handle:
        for line in handle:
            text = json.loads(line).get("text", "")
            if text.strip():
                ids.extend(tokenizer(text + "\n\n", add_special_tokens=False)["input_ids"])
            if len(ids) >= needed:
                break
    if len(ids) < needed:
        raise ValueError(f"{calib_path} has only {len(ids)} tokens, {needed} needed")
    return torch.tensor(ids[:needed], dtype=torch.long).view(n_seqs, seq_len)


def fit_moe_layers(
    dense, ids: torch.Tensor, settings: TestbedSettings, progress: Callable[[str], None] | None = None
) -> list[MoeLayerWeights]:
    """Fit the layers in order, feeding each the hidden states of the already converted layers before it."""
    base = dense.model
    hidden = base.embed_tokens(ids)
    positions = torch.arange(ids.shape[1]).unsqueeze(0)
    rope = base.rotary_emb(hidden, positions)
    inter = dense.config.intermediate_size
    n_shared = settings.shared_neurons(inter)
    fitted: list[MoeLayerWeights] = []
    for index, layer in enumerate(base.layers):
        attn, _ = layer.self_attn(hidden_states=layer.input_layernorm(hidden), position_embeddings=rope, attention_mask=None)
        hidden = hidden + attn
        x = layer.post_attention_layernorm(hidden).reshape(-1, hidden.shape[-1])
        mlp = layer.mlp
        weights = fit_layer(
            x,
            mlp.gate_proj.weight,
            mlp.up_proj.weight,
            mlp.down_proj.weight,
            n_shared=n_shared,
            n_experts=settings.experts,
            top_k=settings.top_k,
            seed=settings.seed + index,
            logit_std=settings.logit_std,
            ridge=settings.ridge,
            skew=settings.skew,
        )
        fitted.append(weights)
        hidden = hidden + moe_forward(x, weights, settings.top_k).view_as(hidden)
        if progress:
            progress(f"fitting layer {index + 1}/{len(base.layers)}")
    return fitted


def moe_state_dict(dense, fitted: list[MoeLayerWeights]) -> dict[str, torch.Tensor]:
    """Tensors under the per-expert Qwen2-MoE names that transformers, vLLM and mlx-lm all read."""
    sd = dense.state_dict()
    out: dict[str, torch.Tensor] = {
        "model.embed_tokens.weight": sd["model.embed_tokens.weight"],
        "model.norm.weight": sd["model.norm.weight"],
        # mlx-lm's qwen2_moe always has an lm_head, so the tied head is written out untied.
        "lm_head.weight": sd["model.embed_tokens.weight"].clone(),
    }
    for i, w in enumerate(fitted):
        p = f"model.layers.{i}"
        for name in ("input_layernorm", "post_attention_layernorm"):
            out[f"{p}.{name}.weight"] = sd[f"{p}.{name}.weight"]
        for proj in ("q_proj", "k_proj", "v_proj"):
            weight = sd[f"{p}.self_attn.{proj}.weight"]
            out[f"{p}.self_attn.{proj}.weight"] = weight
            out[f"{p}.self_attn.{proj}.bias"] = torch.zeros(weight.shape[0])  # Qwen2 attention has biases
        out[f"{p}.self_attn.o_proj.weight"] = sd[f"{p}.self_attn.o_proj.weight"]
        out[f"{p}.mlp.gate.weight"] = w.router
        for e in range(w.router.shape[0]):
            out[f"{p}.mlp.experts.{e}.gate_proj.weight"] = w.experts_gate[e]
            out[f"{p}.mlp.experts.{e}.up_proj.weight"] = w.experts_up[e]
            out[f"{p}.mlp.experts.{e}.down_proj.weight"] = w.experts_down[e]
        out[f"{p}.mlp.shared_expert.gate_proj.weight"] = w.shared_gate
        out[f"{p}.mlp.shared_expert.up_proj.weight"] = w.shared_up
        out[f"{p}.mlp.shared_expert.down_proj.weight"] = w.shared_down
        out[f"{p}.mlp.shared_expert_gate.weight"] = w.shared_expert_gate
    return {k: v.detach().to(torch.float32).contiguous().clone() for k, v in out.items()}


def moe_config(dense_config, settings: TestbedSettings) -> dict:
    """config.json for Qwen2MoeForCausalLM, with a top-level ``rope_theta`` for mlx-lm."""
    inter = dense_config.intermediate_size
    n_shared = settings.shared_neurons(inter)
    rope_theta = float(dense_config.rope_parameters["rope_theta"])
    return {
        "architectures": ["Qwen2MoeForCausalLM"],
        "model_type": "qwen2_moe",
        "vocab_size": dense_config.vocab_size,
        "hidden_size": dense_config.hidden_size,
        "intermediate_size": inter,
        "moe_intermediate_size": (inter - n_shared) // settings.experts,
        "shared_expert_intermediate_size": n_shared,
        "num_hidden_layers": dense_config.num_hidden_layers,
        "num_attention_heads": dense_config.num_attention_heads,
        "num_key_value_heads": dense_config.num_key_value_heads,
        "num_experts": settings.experts,
        "num_experts_per_tok": settings.top_k,
        "norm_topk_prob": False,
        "decoder_sparse_step": 1,
        "mlp_only_layers": [],
        "hidden_act": "silu",
        "rms_norm_eps": float(dense_config.rms_norm_eps),
        "max_position_embeddings": dense_config.max_position_embeddings,
        "rope_theta": rope_theta,
        "rope_parameters": {"rope_theta": rope_theta, "rope_type": "default"},
        "qkv_bias": True,
        "use_sliding_window": False,
        "sliding_window": None,
        "max_window_layers": dense_config.num_hidden_layers,
        "tie_word_embeddings": False,
        "attention_dropout": 0.0,
        "initializer_range": 0.02,
        "output_router_logits": False,
        "router_aux_loss_coef": 0.001,
        "use_cache": True,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 2,
        "dtype": "float32",
    }


def write_testbed(dense, tokenizer, fitted: list[MoeLayerWeights], settings: TestbedSettings, out: Path, info: dict) -> None:
    """Write weights, config, generation config, tokenizer and the build record into ``out``."""
    save_safetensors(moe_state_dict(dense, fitted), out / "model.safetensors", metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(moe_config(dense.config, settings), indent=2, sort_keys=True) + "\n")
    generation = {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2, "do_sample": False}
    (out / "generation_config.json").write_text(json.dumps(generation, indent=2, sort_keys=True) + "\n")
    tokenizer.save_pretrained(str(out))
    (out / "testbed.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")


def build(out: Path, settings: TestbedSettings, gguf: Path, calib: Path, progress: Callable[[str], None] | None = None) -> dict:
    """Build the test bed into the (empty) directory ``out``; returns the build record."""
    start = time.perf_counter()
    threads = torch.get_num_threads()
    torch.set_num_threads(_TORCH_THREADS)
    torch.manual_seed(settings.seed)
    try:
        with torch.inference_mode():
            dense, tokenizer = load_dense(gguf)
            ids = calibration_ids(tokenizer, calib, settings.calib_seqs, settings.seq_len)
            fitted = fit_moe_layers(dense, ids, settings, progress)
            info = {"settings": settings.as_dict(), "calibration": calib.name, "source": gguf.name, "torch": torch.__version__,
                    "kernels": {k: os.environ.get(k, "native") for k in ("ATEN_CPU_CAPABILITY", "MKL_CBWR", "MKL_DYNAMIC")}}
            write_testbed(dense, tokenizer, fitted, settings, out, info)
    finally:
        torch.set_num_threads(threads)
    info["build_seconds"] = round(time.perf_counter() - start, 1)
    return info
