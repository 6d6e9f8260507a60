"""The worker's swap space (``swap_space`` GiB of CPU memory): KV blocks of preempted requests, copied out of the
device's KV cache and back as the scheduler's ``SchedulerOutput.blocks_to_swap_out`` / ``blocks_to_swap_in`` say.

One CPU block holds every layer's K and V of one device block (``[num_swap_blocks, num_layers, 2, block_size,
num_kv_heads, head_dim]``; ``1`` for K alone where the value is the key, ``stored_kv``), so a block moves in one
contiguous copy. On CUDA the CPU tensor is pinned and the copies are ``non_blocking`` on the current stream: they
are ordered after the forward pass in flight (which may still write a swapped-out block) and before this step's
forward (which may overwrite it, or read a swapped-in one), and the host never waits. On the CPU device the same
code copies between two CPU tensors.
"""
from __future__ import annotations

import torch

from pagedllm.worker.sleep_mode import tensor_bytes


def kv_cache_view(t: torch.Tensor) -> torch.Tensor:
    """One layer's ``[2, num_blocks, block_size, num_kv_heads, head_dim]`` cache from its allocation: ``[2, ...]``
    itself, or ``[1, ...]`` (K only) expanded, so ``cache[1]`` is ``cache[0]``'s memory: every backend reads and
    writes V as before (the same values, written twice) and the Triton kernels get equal K and V pointers.
    ``stored_kv`` is its inverse."""
    return t if t.shape[0] == 2 else t.expand(2, *t.shape[1:])


def stored_kv(cache: torch.Tensor) -> torch.Tensor:
    """What one layer's ``[2, num_blocks, block_size, num_kv_heads, head_dim]`` cache stores: itself, or ``[1, ...]``
    its K alone where V is the same memory (``kv_cache_view`` of a K-only allocation, for models whose
    value is the key: DeepSeek's MLA latent). Every write of whole blocks goes here: writing the expanded view would
    write each element twice (torch refuses: "more than one element of the written-to tensor refers to a single
    memory location"), and counting its bytes would count them twice."""
    return cache[0][None] if cache.stride(0) == 0 else cache


def kv_cache_bytes(kv_caches: list[torch.Tensor]) -> int:
    """The bytes the KV cache tensors hold (a K-only layer once)."""
    return tensor_bytes(stored_kv(c) for c in kv_caches)


def _raw(t: torch.Tensor) -> torch.Tensor:
    """A view index_select / index_copy_ accept for every cache dtype (float8 has no such kernels on every device)."""
    return t.view(torch.uint8) if t.element_size() == 1 and t.is_floating_point() else t


class SwapSpace:
    def __init__(self, num_swap_blocks: int, kv_caches: list[torch.Tensor]):
        layer = stored_kv(kv_caches[0])           # [2 or 1, num_blocks, block_size, num_kv_heads, head_dim]
        shape = (num_swap_blocks, len(kv_caches), layer.shape[0], *layer.shape[2:])
        pin = layer.device.type == "cuda"
        self.blocks = torch.zeros(shape, dtype=layer.dtype, pin_memory=pin)
        self.kv_caches = [stored_kv(c) for c in kv_caches]
        self.device = layer.device

    def swap_out(self, copies: list[tuple[int, int]]) -> None:
        """Device block -> CPU block, for each (device id, CPU id)."""
        ids = torch.tensor([g for g, _ in copies], dtype=torch.long).to(self.device, non_blocking=True)
        # [n, num_layers, 2 (1: K only), block_size, heads, head_dim]: each block's layers side by side, contiguous.
        staged = torch.stack([_raw(c).index_select(1, ids) for c in self.kv_caches], dim=1).transpose(0, 2)
        staged = staged.contiguous()
        blocks = _raw(self.blocks)
        for i, (_, cpu_id) in enumerate(copies):
            blocks[cpu_id].copy_(staged[i], non_blocking=True)

    def swap_in(self, copies: list[tuple[int, int]]) -> None:
        """CPU block -> device block, for each (CPU id, device id)."""
        blocks = _raw(self.blocks)
        staged = torch.empty((len(copies), *blocks.shape[1:]), dtype=blocks.dtype, device=self.device)
        for i, (cpu_id, _) in enumerate(copies):
            staged[i].copy_(blocks[cpu_id], non_blocking=True)
        ids = torch.tensor([g for _, g in copies], dtype=torch.long).to(self.device, non_blocking=True)
        for layer, cache in enumerate(self.kv_caches):
            _raw(cache).index_copy_(1, ids, staged[:, layer].transpose(0, 1))
