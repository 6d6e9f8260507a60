"""ForwardBatch: everything one forward pass needs, passed explicitly to the model and every attention call.

There is no global "forward context": the model runner builds one ForwardBatch per step and the attention layers
read their KV caches, the attention backend and its metadata for the step from it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from pagedllm.attention.backends.base import AttentionBackend


@dataclass
class ForwardBatch:
    input_ids: torch.Tensor          # [T] int64, the new tokens of every scheduled request, request after request
    positions: torch.Tensor          # [T] int64
    slot_mapping: torch.Tensor       # [T] int64, cache slot of each new token (-1: padding, not stored)
    kv_caches: list[torch.Tensor]    # one [2, num_blocks, block_size, Hkv, D] tensor per layer
    attn_backend: AttentionBackend
    attn_metadata: Any               # what attn_backend.build_metadata made of this step
    # Set only while capturing piecewise CUDA graphs (worker/cuda_graphs.py): the attention layers hand their query
    # to it instead of attending, and it closes the graph there.
    attn_breaker: object | None = None
    # [T] int64 BERT segment ids (1 for the second text of a cross-encoder pair); None: every token's is 0.
    token_type_ids: torch.Tensor | None = None
    # enable_lora: the adapter slot each token runs with (pagedllm/lora/layers.py LoRAStep: a [T, max_loras] mask
    # and [T] slot ids); None when no request of the step has an adapter (LoRAManager.step_inputs).
    lora_step: Any = None
    # enable_prompt_embeds: (flat token indices [R] int64, their embeddings [R, hidden]) given by prompt_embeds
    # prompts, used instead of the embedding of input_ids there (model/layers/embedding.embed_inputs); None: none.
    input_embeds: tuple[torch.Tensor, torch.Tensor] | None = None
    # M-RoPE models (Qwen2-VL) in a step with image rows: [3, T] int64 (temporal, height, width) rotary positions of
    # every token (``positions`` holds the temporal row); None: each token's three are equal, ``positions``.
    mrope_positions: torch.Tensor | None = None

    @property
    def num_tokens(self) -> int:
        return self.input_ids.shape[0]
