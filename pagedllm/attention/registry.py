"""Attention backends by name: what ``attention_backend=<name>`` selects.

Entries are ``"module:Class"`` strings, imported only when a backend is built, so importing this module (or
validating a name) does not import Triton. A new backend is one file with an ``AttentionBackend`` subclass plus
one ``register_attention_backend`` call (or one line in ``_BACKENDS`` for a built-in one).
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass

import torch

from pagedllm.attention.backends.base import AttentionBackend


@dataclass(frozen=True)
class _Entry:
    target: str              # "package.module:ClassName"
    needs_cuda: bool


_BACKENDS: dict[str, _Entry] = {
    "torch": _Entry("pagedllm.attention.backends.torch_backend:TorchAttentionBackend", needs_cuda=False),
    "triton": _Entry("pagedllm.attention.backends.triton_backend:TritonAttentionBackend", needs_cuda=True),
}


def register_attention_backend(name: str, target: str, needs_cuda: bool = False) -> None:
    """Make ``attention_backend=name`` build the ``AttentionBackend`` subclass ``target`` (``"module:Class"``,
    imported when an engine first uses it). ``needs_cuda``: reject the name on other devices. Re-registering a
    name replaces it."""
    if ":" not in target:
        raise ValueError(f"attention backend target must be 'module:Class', got {target!r}.")
    _BACKENDS[name] = _Entry(target, needs_cuda)


def attention_backend_names() -> list[str]:
    return list(_BACKENDS)


def default_backend_name(device: torch.device | str) -> str:
    """Triton kernels on CUDA, the PyTorch reference elsewhere."""
    return "triton" if torch.device(device).type == "cuda" else "torch"


def resolve_attention_backend(name: str | None, device: torch.device | str) -> str:
    """The backend name an engine on ``device`` uses for the user's ``attention_backend`` (None: the default);
    ValueError for an unknown name or one the device cannot run."""
    if name is None:
        return default_backend_name(device)
    if name not in _BACKENDS:
        choices = ", ".join(repr(n) for n in _BACKENDS)
        raise ValueError(f"attention_backend must be one of {choices}, got {name!r}.")
    if _BACKENDS[name].needs_cuda and torch.device(device).type != "cuda":
        raise ValueError(f"attention_backend={name!r} needs a CUDA device.")
    return name


def attention_backend_class(name: str) -> type[AttentionBackend]:
    if name not in _BACKENDS:
        resolve_attention_backend(name, "cpu")          # raises the unknown-name error
    module_name, class_name = _BACKENDS[name].target.split(":", 1)
    cls = getattr(importlib.import_module(module_name), class_name)
    if not (isinstance(cls, type) and issubclass(cls, AttentionBackend)):
        raise TypeError(f"attention backend {name!r} ({_BACKENDS[name].target}) is not an AttentionBackend.")
    return cls


def create_attention_backend(name: str | None, *, num_heads: int, num_kv_heads: int, head_dim: int,
                             block_size: int, max_num_seqs: int, max_num_batched_tokens: int, dtype: torch.dtype,
                             device: torch.device) -> AttentionBackend:
    """Validate ``name`` for ``device`` and build that backend for a model of the given attention shape."""
    name = resolve_attention_backend(name, device)
    return attention_backend_class(name)(
        num_heads=num_heads, num_kv_heads=num_kv_heads, head_dim=head_dim, block_size=block_size,
        max_num_seqs=max_num_seqs, max_num_batched_tokens=max_num_batched_tokens, dtype=dtype, device=device)
