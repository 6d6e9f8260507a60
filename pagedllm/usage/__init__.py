"""vLLM's ``vllm.usage`` import path: ``from vllm.usage.usage_lib import UsageContext``."""
