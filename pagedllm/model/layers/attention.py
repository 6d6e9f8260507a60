"""The attention layer: rotates Q/K (if given a rotary embedding), stores the new K/V in the paged cache, then
attends through the chosen backend. With the Triton backend the rotation and the cache write are one kernel."""
from __future__ import annotations

import torch
from torch import nn

from pagedllm.model.layers.rotary import RotaryEmbedding
from pagedllm.worker.forward_batch import ForwardBatch


class Attention(nn.Module):
    def __init__(self, num_heads: int, head_dim: int, scale: float, num_kv_heads: int, layer_idx: int,
                 backend: str = "torch"):
        super().__init__()
        self.num_heads, self.head_dim, self.num_kv_heads = num_heads, head_dim, num_kv_heads
        self.scale, self.layer_idx = scale, layer_idx
        if backend == "triton":
            from pagedllm.kernels import triton_attention as impl
        else:
            from pagedllm.kernels import torch_attention as impl
        self.backend, self.impl = backend, impl

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, batch: ForwardBatch,
                rotary: RotaryEmbedding | None = None, positions: torch.Tensor | None = None) -> torch.Tensor:
        """q: [T, Hq*D], k/v: [T, Hkv*D] -> [T, Hq*D]. ``rotary``: rotate q and k by ``positions`` first."""
        q = q.view(-1, self.num_heads, self.head_dim)
        k = k.view(-1, self.num_kv_heads, self.head_dim)
        v = v.view(-1, self.num_kv_heads, self.head_dim)
        cache = batch.kv_caches[self.layer_idx]
        k_cache, v_cache = cache[0], cache[1]
        if rotary is not None and self.backend == "triton":
            from pagedllm.kernels.triton_rotary import rotary_store_kv
            rotary_store_kv(positions, q, k, v, rotary.cos, rotary.sin, k_cache, v_cache, batch.slot_mapping)
        else:
            if rotary is not None:
                q, k = rotary(positions, q, k)
            self.impl.store_kv(k, v, k_cache, v_cache, batch.slot_mapping)
        if batch.attn_breaker is not None:
            # Piecewise CUDA-graph capture (worker/cuda_graphs.py): the attention itself runs between the graphs.
            out = batch.attn_breaker.attention(self, q)
        else:
            out = self.attend(q, batch)
        return out.reshape(-1, self.num_heads * self.head_dim)

    def attend(self, q: torch.Tensor, batch: ForwardBatch, out: torch.Tensor | None = None) -> torch.Tensor:
        """The attention of ``q`` ``[T, Hq, D]`` (rotated; the new K/V already in the cache) over the paged
        context of each request of ``batch``; into ``out`` when given."""
        cache = batch.kv_caches[self.layer_idx]
        if self.backend == "triton":
            return self.impl.paged_attention(q, cache[0], cache[1], batch.query_start_loc, batch.seq_lens,
                                             batch.block_tables, self.scale, batch.max_query_len,
                                             workspace=batch.attn_workspace, out=out, num_decodes=batch.num_decodes,
                                             prefill_query_start_loc=batch.prefill_query_start_loc)
        result = self.impl.paged_attention(q, cache[0], cache[1], batch.query_start_loc, batch.seq_lens,
                                           batch.block_tables, self.scale,
                                           query_start_loc_cpu=batch.query_start_loc_cpu,
                                           seq_lens_cpu=batch.seq_lens_cpu)
        return result if out is None else out.copy_(result)
