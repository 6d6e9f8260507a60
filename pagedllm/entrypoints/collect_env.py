"""``pagedllm collect-env``: the facts a bug report needs (vLLM's ``vllm collect-env``): versions of pagedllm and of
the libraries it runs on, the OS, the CPU and GPUs, and the environment variables that change its behaviour (values of
the ones that look like secrets are hidden)."""
from __future__ import annotations

import importlib.metadata
import os
import platform
import sys

from pagedllm import envs

_PACKAGES = ("torch", "triton", "transformers", "tokenizers", "xgrammar", "fastapi", "uvicorn", "openai", "numpy",
             "gguf", "sentence-transformers", "ray")


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def collect() -> list[tuple[str, str]]:
    import pagedllm
    rows = [("pagedllm", pagedllm.__version__), ("Python", sys.version.split()[0]),
            ("OS", platform.platform()), ("CPU", _cpu_model()),
            ("CPU cores usable", str(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                                     else os.cpu_count()))]
    rows += [(name, _version(name)) for name in _PACKAGES]
    try:
        import torch
        rows.append(("torch CUDA build", str(torch.version.cuda)))
        if torch.cuda.is_available():
            for i in range(torch.cuda.device_count()):
                rows.append((f"GPU {i}", torch.cuda.get_device_name(i)))
        else:
            rows.append(("GPUs", "none visible to torch"))
    except Exception as e:      # noqa: BLE001 - a broken torch install is itself worth reporting
        rows.append(("torch", f"import failed: {type(e).__name__}: {e}"))
    rows += list(envs.reported_env().items())
    return rows


def run_collect_env(_args=None) -> int:
    rows = collect()
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    return 0
