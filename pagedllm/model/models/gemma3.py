"""Gemma 3 text (``Gemma3ForCausalLM``: gemma-3-1b and the text-only checkpoints): Gemma 2's decoder with per-head
``1 + w`` RMSNorms on Q and K, no soft-capping (its config says None), local layers (a sliding window of 512 / 1,024,
five of every six) rotating with ``rope_local_base_freq``-style parameters of their own and global ones with theirs
(``rope_parameters`` per layer type; rotary.rope_layer_types)."""
from __future__ import annotations

from pagedllm.model.models.gemma2 import Gemma2ForCausalLM


class Gemma3ForCausalLM(Gemma2ForCausalLM):
    qk_norm = True
