"""``vllm.v1.engine``: see pagedllm/v1/__init__.py."""
