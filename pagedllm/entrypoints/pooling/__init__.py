"""vLLM's ``vllm.entrypoints.pooling`` helpers that its example clients import (the serving code is in
entrypoints/openai/serving_pooling.py)."""
