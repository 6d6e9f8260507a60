"""``vllm.v1.engine.llm_engine.LLMEngine``: pagedllm's LLMEngine."""
from pagedllm.engine.engine import LLMEngine

__all__ = ["LLMEngine"]
