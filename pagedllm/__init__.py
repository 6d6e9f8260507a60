"""pagedllm: a vLLM-compatible LLM inference and serving engine in pure Python (PyTorch + Triton)."""
__version__ = "0.1.0"

from pagedllm import envs as _envs
from pagedllm.logger import configure_logging as _configure_logging

if _envs.PAGEDLLM_CONFIGURE_LOGGING:
    _configure_logging()
from pagedllm.config import EngineArgs
from pagedllm.entrypoints.llm import LLM
from pagedllm.outputs import BeamSearchOutput, BeamSearchSequence, CompletionOutput, Logprob, RequestOutput
from pagedllm.sampling_params import BeamSearchParams, RequestOutputKind, SamplingParams

__all__ = ["LLM", "SamplingParams", "BeamSearchParams", "RequestOutput", "CompletionOutput", "Logprob",
           "EngineArgs", "BeamSearchOutput", "BeamSearchSequence", "RequestOutputKind", "__version__"]
