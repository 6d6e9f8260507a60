"""The attention layer: hands Q/K/V to the step's attention backend (``ForwardBatch.attn_backend``), which rotates
Q/K (if given a rotary embedding) and stores the new K/V in the paged cache, then attends."""
from __future__ import annotations

import torch
from torch import nn

from pagedllm.attention.forward_batch import ForwardBatch
from pagedllm.model.layers.rotary import RotaryEmbedding


class Attention(nn.Module):
    def __init__(self, num_heads: int, head_dim: int, scale: float, num_kv_heads: int, layer_idx: int,
                 soft_cap: float = 0.0, sliding_window: int = 0, sinks: torch.Tensor | None = None):
        """``soft_cap``: Gemma 2's attention logit soft-capping, ``cap * tanh(scores / cap)`` on the scaled scores
        (0: none); ``sliding_window``: each token attends to itself and the ``sliding_window - 1`` keys before it
        (0: the whole context). Only backends with ``supports_logits_soft_cap`` / ``supports_sliding_window`` run
        them (the model runner checks). ``sinks``: gpt-oss's attention sinks, this rank's ``[num_heads]`` learned
        logits (the owner's parameter, loaded in place), for backends with ``supports_attention_sinks``."""
        super().__init__()
        self.num_heads, self.head_dim, self.num_kv_heads = num_heads, head_dim, num_kv_heads
        self.scale, self.layer_idx = scale, layer_idx
        self.soft_cap, self.sliding_window = soft_cap, sliding_window
        # Passed only when set: a backend without them keeps its interface.
        self._extras = {k: v for k, v in (("soft_cap", soft_cap), ("window", sliding_window)) if v}
        if sinks is not None:
            self._extras["sinks"] = sinks

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, batch: ForwardBatch,
                rotary: RotaryEmbedding | None = None, positions: torch.Tensor | None = None) -> torch.Tensor:
        """q: [T, Hq*D] (or [T, Hq, D]), k/v: [T, Hkv*D] (k also [T, Hkv, D]) -> [T, Hq*D]. ``rotary``: rotate q and k
        by ``positions`` first."""
        # (models that view q / k per head already pass them 3-D: no second view op)
        q = q if q.dim() == 3 else q.view(-1, self.num_heads, self.head_dim)
        k = k if k.dim() == 3 else k.view(-1, self.num_kv_heads, self.head_dim)
        v = v.view(-1, self.num_kv_heads, self.head_dim)
        kv_cache = batch.kv_caches[self.layer_idx]
        if batch.attn_breaker is not None:
            # Piecewise CUDA-graph capture (worker/cuda_graphs.py): the attention itself runs between the graphs.
            q = batch.attn_backend.write_kv(q, k, v, kv_cache, batch.slot_mapping, rotary, positions)
            out = batch.attn_breaker.attention(self, q)
        else:
            out = batch.attn_backend.write_kv_and_attend(q, k, v, kv_cache, batch.slot_mapping, batch.attn_metadata,
                                                         self.scale, rotary, positions, **self._extras)
        return out.reshape(-1, self.num_heads * self.head_dim)

    def attend(self, q: torch.Tensor, batch: ForwardBatch, out: torch.Tensor | None = None) -> torch.Tensor:
        """The attention of ``q`` ``[T, Hq, D]`` (rotated; the new K/V already in the cache) over the paged
        context of each request of ``batch``; into ``out`` when given."""
        return batch.attn_backend.attend(q, batch.kv_caches[self.layer_idx], batch.attn_metadata, self.scale,
                                         out=out, **self._extras)
