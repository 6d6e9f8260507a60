"""Phi-3 / Phi-3.5 / Phi-4-mini (``Phi3ForCausalLM``): a Llama decoder whose checkpoint fuses the projections
(``qkv_proj`` = [q; k; v], ``gate_up_proj`` = [gate; up]), split here into the parts the packed layers load (each
rank its heads), with the partial rotary dimension and LongRoPE of its config (rotary.py; max_model_len capped at
the original context under LongRoPE, config._longrope_len)."""
from __future__ import annotations

from typing import Iterable

import torch

from pagedllm.model.models.llama import LlamaForCausalLM


class Phi3ForCausalLM(LlamaForCausalLM):
    # Phi-3 adapters target the fused qkv_proj / gate_up_proj modules, which the LoRA slots do not split yet.
    supports_lora = False

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        return super().load_weights(self._split_fused(weights))

    def _split_fused(self, weights: Iterable[tuple[str, torch.Tensor]]) -> Iterable[tuple[str, torch.Tensor]]:
        cfg = self.config
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        q = cfg.num_attention_heads * head_dim
        kv = (getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads) * head_dim
        for name, tensor in weights:
            fused = ".self_attn.qkv_proj." in name or ".mlp.gate_up_proj." in name
            if fused and not name.endswith(".weight"):
                raise ValueError(f"Phi-3 checkpoint tensor {name!r}: pre-quantized Phi-3 checkpoints (their fused "
                                 f"projections quantized as one tensor) are not supported yet; load the bf16 "
                                 f"checkpoint (quantization='fp8' or 'bitsandbytes' quantize it at load).")
            if ".self_attn.qkv_proj." in name:
                for part, piece in zip(("q_proj", "k_proj", "v_proj"), tensor.split([q, kv, kv], dim=0)):
                    yield name.replace("qkv_proj", part), piece
            elif ".mlp.gate_up_proj." in name:
                gate, up = tensor.chunk(2, dim=0)
                yield name.replace("gate_up_proj", "gate_proj"), gate
                yield name.replace("gate_up_proj", "up_proj"), up
            else:
                yield name, tensor
