"""Attention: the per-step ForwardBatch, the AttentionBackend interface and its implementations, and the registry
that selects one by name. Sits between model/ (which calls it) and kernels/ (which it calls)."""
from pagedllm.attention.backends.base import AttentionBackend, CommonAttentionMetadata
from pagedllm.attention.forward_batch import ForwardBatch
from pagedllm.attention.registry import (attention_backend_names, create_attention_backend, default_backend_name,
                                         register_attention_backend, resolve_attention_backend)

__all__ = ["AttentionBackend", "CommonAttentionMetadata", "ForwardBatch", "attention_backend_names",
           "create_attention_backend", "default_backend_name", "register_attention_backend",
           "resolve_attention_backend"]
