"""vLLM's ``vllm.engine.async_llm_engine.AsyncLLMEngine`` import path (pagedllm's is engine/async_engine.py)."""
from pagedllm.engine.async_engine import AsyncLLMEngine

__all__ = ["AsyncLLMEngine"]
