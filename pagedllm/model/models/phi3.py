"""Phi-3 / Phi-3.5 / Phi-4-mini (``Phi3ForCausalLM``): a Llama decoder whose checkpoint fuses the projections
(``qkv_proj`` = [q; k; v], ``gate_up_proj`` = [gate; up]), split here into the parts the packed layers load (each
rank its heads), with the partial rotary dimension and LongRoPE of its config (rotary.py; max_model_len capped at
the original context under LongRoPE, config._longrope_len)."""
from __future__ import annotations

from typing import Iterable

import torch

from pagedllm.model.models.llama import LlamaForCausalLM


class Phi3ForCausalLM(LlamaForCausalLM):
    # LoRA: Phi-3 adapters target the checkpoint's fused qkv_proj / gate_up_proj; the LoRA manager cuts their B
    # rows into the parts below (lora_checkpoint_fused_modules), each part keeping the shared A.
    supports_lora = True

    def lora_checkpoint_fused_modules(self) -> dict[str, list[tuple[str, int]]]:
        """The checkpoint's fused projections: their parts, in order, as the model's modules name them, and each
        part's output rows (the whole model's, before tensor parallel)."""
        cfg = self.config
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        q = cfg.num_attention_heads * head_dim
        kv = (getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads) * head_dim
        return {"qkv_proj": [("q_proj", q), ("k_proj", kv), ("v_proj", kv)],
                "gate_up_proj": [("gate_proj", cfg.intermediate_size), ("up_proj", cfg.intermediate_size)]}

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        return super().load_weights(self._split_fused(weights))

    def _split_fused(self, weights: Iterable[tuple[str, torch.Tensor]]) -> Iterable[tuple[str, torch.Tensor]]:
        parts_of = self.lora_checkpoint_fused_modules()
        for name, tensor in weights:
            leaf = ("qkv_proj" if ".self_attn.qkv_proj." in name else
                    "gate_up_proj" if ".mlp.gate_up_proj." in name else None)
            if leaf is not None and not name.endswith(".weight"):
                raise ValueError(f"Phi-3 checkpoint tensor {name!r}: pre-quantized Phi-3 checkpoints (their fused "
                                 f"projections quantized as one tensor) are not supported yet; load the bf16 "
                                 f"checkpoint (quantization='fp8' or 'bitsandbytes' quantize it at load).")
            if leaf is not None:
                parts = parts_of[leaf]
                for (part, _), piece in zip(parts, tensor.split([rows for _, rows in parts], dim=0)):
                    yield name.replace(leaf, part), piece
            else:
                yield name, tensor
