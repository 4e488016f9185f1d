"""Tiny random MoE checkpoints (hidden 32, 2 layers, 4 experts) with SmolLM2's real tokenizer.

Built with each family's transformers config class and ``save_pretrained`` (safetensors), so they
exercise the same loading, scoring and fingerprint paths as a real checkpoint in well under a second.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from harness.resources import cache_dir
from harness.smollm2 import smollm2_gguf

FAMILIES = ("mixtral", "qwen2_moe", "qwen3_moe", "olmoe")


def smollm2_tokenizer_dir() -> Path:
    """SmolLM2's tokenizer (from the GGUF) saved as a normal HF tokenizer folder, built once and cached."""
    target = cache_dir() / "test-assets" / "smollm2-tokenizer"
    if (target / "tokenizer_config.json").is_file():
        return target
    from transformers import AutoTokenizer

    gguf = smollm2_gguf()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    tmp = target.with_name(f"{target.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tokenizer.save_pretrained(tmp)
    try:
        tmp.rename(target)
    except OSError:  # another process won the race
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def tiny_config(family: str, vocab_size: int) -> Any:
    """A 2-layer, 4-expert config of ``family`` with hidden size 32."""
    import transformers

    common: dict[str, Any] = dict(
        vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        initializer_range=0.1, bos_token_id=1, eos_token_id=2, pad_token_id=2, tie_word_embeddings=False,
    )
    table: dict[str, tuple[str, dict[str, Any]]] = {
        "mixtral": ("MixtralConfig", dict(num_local_experts=4, num_experts_per_tok=2)),
        "qwen2_moe": ("Qwen2MoeConfig", dict(
            num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16,
            shared_expert_intermediate_size=32, decoder_sparse_step=1, mlp_only_layers=[])),
        "qwen3_moe": ("Qwen3MoeConfig", dict(
            num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16, head_dim=8,
            decoder_sparse_step=1, mlp_only_layers=[])),
        "olmoe": ("OlmoeConfig", dict(num_experts=4, num_experts_per_tok=2)),
    }
    class_name, specific = table[family]
    return getattr(transformers, class_name)(**common, **specific)


def build_tiny_moe(family: str, out: Path, seed: int = 0) -> Path:
    """Save a random tiny ``family`` MoE with the SmolLM2 tokenizer to ``out`` (safetensors, fp32)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2_tokenizer_dir())
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(family, len(tokenizer)))
    model.to(torch.float32)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def drift_experts(src: Path, out: Path, scale: float = 0.05, seed: int = 0) -> Path:
    """A copy of ``src`` whose routed experts' weights drifted by Gaussian noise (a bad merge)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(src).eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ".mlp.experts." in name:
                param.add_(scale * torch.randn(param.shape, generator=generator))
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(src).save_pretrained(out)
    return out
