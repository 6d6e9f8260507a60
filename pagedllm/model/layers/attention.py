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
        if self.backend == "triton":
            out = self.impl.paged_attention(q, k_cache, v_cache, batch.query_start_loc, batch.seq_lens,
                                            batch.block_tables, self.scale, batch.max_query_len,
                                            workspace=batch.attn_workspace, num_decodes=batch.num_decodes,
                                            prefill_query_start_loc=batch.prefill_query_start_loc)
        else:
            out = self.impl.paged_attention(q, k_cache, v_cache, batch.query_start_loc, batch.seq_lens,
                                            batch.block_tables, self.scale,
                                            query_start_loc_cpu=batch.query_start_loc_cpu,
                                            seq_lens_cpu=batch.seq_lens_cpu)
        return out.reshape(-1, self.num_heads * self.head_dim)
