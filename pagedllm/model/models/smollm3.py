"""SmolLM3 (``SmolLM3ForCausalLM``: HuggingFaceTB/SmolLM3-3B): a Llama decoder in which some layers attend without
rotary positions (NoPE). The config's ``no_rope_layers`` has a 1 for each layer that rotates and a 0 for each NoPE
layer (by default every ``no_rope_layer_interval``-th layer is NoPE, which SmolLM3Config fills in)."""
from __future__ import annotations

import dataclasses

from pagedllm.model.models.llama import LlamaForCausalLM, LlamaVariant


class SmolLM3ForCausalLM(LlamaForCausalLM):
    @classmethod
    def variant(cls, hf_config) -> LlamaVariant:
        flags = list(hf_config.no_rope_layers or [])
        if len(flags) < hf_config.num_hidden_layers:
            raise ValueError(f"SmolLM3 config: no_rope_layers has {len(flags)} entries, fewer than "
                             f"num_hidden_layers={hf_config.num_hidden_layers} (one 0/1 flag per layer).")
        # HF windows a layer only with use_sliding_window; our windows follow layer_types alone
        # (config.layer_sliding_windows), so the one config where the two part ways is refused.
        if "sliding_attention" in (hf_config.layer_types or []) and not hf_config.use_sliding_window:
            raise ValueError("SmolLM3 config: layer_types names 'sliding_attention' layers while "
                             "use_sliding_window=False (HF then attends to the whole context in them); set "
                             "use_sliding_window=True or make those layers 'full_attention'.")
        return dataclasses.replace(super().variant(hf_config),
                                   rope_layers=tuple(bool(f) for f in flags[:hf_config.num_hidden_layers]))
