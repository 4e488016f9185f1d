"""The checkpoint layer: everything moegate knows about model files, for backends, inspect, compress,
info and the profiler alike.

- resolving a spec and checking its files without torch (headers, shards, tokenizer, pickle refusal),
- loading it into transformers (``load_model_and_tokenizer``),
- fingerprints (``fingerprint``: the request cache's model half),
- the MoE layout from a config (``layout``) and the one table of expert/router names (``names``).
"""

from harness.checkpoint._files import (
    PICKLE_SUFFIXES,
    SAFETENSORS_DTYPE_BYTES,
    TOKENIZER_FILES,
    ModelSource,
    check_gguf,
    check_safetensors,
    read_config,
    read_safetensors_header,
    resolve_model,
    safetensors_files,
)
from harness.checkpoint._load import DEVICES, DTYPES, load_model_and_tokenizer, resolve_device, resolve_dtype
from harness.checkpoint.layout import MoeLayout, moe_layout_from_config
from harness.checkpoint.names import TensorName, classify, is_routed_expert, layer_index

__all__ = [
    "DEVICES",
    "DTYPES",
    "PICKLE_SUFFIXES",
    "SAFETENSORS_DTYPE_BYTES",
    "TOKENIZER_FILES",
    "ModelSource",
    "MoeLayout",
    "TensorName",
    "check_gguf",
    "check_safetensors",
    "classify",
    "is_routed_expert",
    "layer_index",
    "load_model_and_tokenizer",
    "moe_layout_from_config",
    "read_config",
    "read_safetensors_header",
    "resolve_device",
    "resolve_dtype",
    "resolve_model",
    "safetensors_files",
]
