"""``vllm.v1.metrics``: see pagedllm/v1/__init__.py."""
