"""``vllm.v1.engine.async_llm.AsyncLLM``: pagedllm's AsyncLLMEngine (in vLLM V1, AsyncLLMEngine is an alias of
AsyncLLM; the two names are one class here too)."""
from pagedllm.engine.async_engine import AsyncLLMEngine

AsyncLLM = AsyncLLMEngine

__all__ = ["AsyncLLM"]
