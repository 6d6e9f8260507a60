"""vLLM's ``vllm.engine.arg_utils`` (where its examples and tutorials import the engine arguments from): the
arguments live in pagedllm.config."""
from pagedllm.config import AsyncEngineArgs, EngineArgs

__all__ = ["AsyncEngineArgs", "EngineArgs"]
