"""vLLM's ``vllm.v1`` import paths, which its examples use (``from vllm.v1.engine.async_llm import AsyncLLM``):
pagedllm has one engine, the V1 design, so these name the same classes as ``pagedllm.engine``."""
