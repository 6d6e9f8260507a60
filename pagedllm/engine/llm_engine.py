"""vLLM's ``vllm.engine.llm_engine.LLMEngine`` import path (pagedllm's engine is engine/engine.py)."""
from pagedllm.engine.engine import LLMEngine

__all__ = ["LLMEngine"]
