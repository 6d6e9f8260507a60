"""Which of our kernels the engine uses: set once per process from the engine's configuration.

The kernels read ``settings.current`` at call time (a module attribute, so ``configure`` takes effect everywhere);
they never read the environment. ``ModelRunner`` calls ``configure_kernels(config)`` before it builds the model, in
the process that runs it. The settings are per process: two engines in one process with different switches share
the last one's.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pagedllm.config import EngineConfig


@dataclass(frozen=True)
class KernelSettings:
    pdl: bool = True           # programmatic dependent launch of the decode-path Triton kernels (kernels/pdl.py)
    triton_gemv: bool = True   # Triton skinny GEMM for batch-1 GPU linears (kernels/triton_gemv.py)
    cpu_onednn: bool = True    # CPU linears through oneDNN with prepacked weights (kernels/cpu_onednn.py)


# Everything on until an engine says otherwise (kernel tests and benchmarks that build no engine).
current = KernelSettings()


def configure(settings: KernelSettings) -> None:
    global current
    current = settings


def configure_kernels(config: "EngineConfig") -> None:
    """Apply an engine configuration's kernel switches to this process."""
    configure(KernelSettings(pdl=config.pdl, triton_gemv=config.triton_gemv, cpu_onednn=config.cpu_onednn))
