"""vLLM's ``vllm.v1.sample`` import paths, for code written against them."""
