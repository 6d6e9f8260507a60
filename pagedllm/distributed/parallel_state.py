"""This process's place in the tensor-parallel group.

One group per process (a worker is one rank). With a world size of 1 (the default, and every single-process engine)
the collectives return their input untouched and nothing of torch.distributed is initialised, so the single-process
path costs one integer comparison per parallel layer.
"""
from __future__ import annotations

import datetime

import torch

_tp_rank = 0
_tp_size = 1


def init_tensor_parallel(rank: int, world_size: int, init_method: str, backend: str = "gloo",
                         timeout_s: float = 600.0) -> None:
    """Join the group of ``world_size`` ranks that meet at ``init_method`` (``tcp://host:port``)."""
    global _tp_rank, _tp_size
    if world_size > 1:
        import torch.distributed as dist
        dist.init_process_group(backend, init_method=init_method, rank=rank, world_size=world_size,
                                timeout=datetime.timedelta(seconds=timeout_s))
    _tp_rank, _tp_size = rank, world_size


def destroy_tensor_parallel() -> None:
    global _tp_rank, _tp_size
    if _tp_size > 1:
        import torch.distributed as dist
        if dist.is_initialized():
            dist.destroy_process_group()
    _tp_rank, _tp_size = 0, 1


def get_tp_rank() -> int:
    return _tp_rank


def get_tp_size() -> int:
    return _tp_size


def tp_all_reduce(x: torch.Tensor) -> torch.Tensor:
    """Sum ``x`` over the ranks, in place; every rank ends with the same values."""
    if _tp_size == 1:
        return x
    import torch.distributed as dist
    dist.all_reduce(x)
    return x


def tp_all_gather(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Every rank's ``x`` concatenated along ``dim`` in rank order (the same tensor on every rank)."""
    if _tp_size == 1:
        return x
    import torch.distributed as dist
    parts = [torch.empty_like(x) for _ in range(_tp_size)]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=dim)


def kv_head_range(num_kv_heads: int, rank: int, world_size: int) -> tuple[int, int]:
    """(first KV head, number of KV heads) that ``rank`` holds. With fewer KV heads than ranks each head is
    replicated on ``world_size // num_kv_heads`` consecutive ranks (vLLM's rule), so every rank holds one."""
    if num_kv_heads >= world_size:
        if num_kv_heads % world_size:
            raise ValueError(f"Total number of key-value heads ({num_kv_heads}) must be divisible by tensor parallel "
                             f"size ({world_size}).")
        per_rank = num_kv_heads // world_size
        return rank * per_rank, per_rank
    if world_size % num_kv_heads:
        raise ValueError(f"Tensor parallel size ({world_size}) must be divisible by the total number of key-value "
                         f"heads ({num_kv_heads}) when it is larger.")
    return rank // (world_size // num_kv_heads), 1
