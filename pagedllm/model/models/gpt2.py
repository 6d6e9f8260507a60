"""GPT-2 (``GPT2LMHeadModel``: gpt2 ... gpt2-xl, distilgpt2, and their fine-tunes) on the OPT decoder: the same
pre-LayerNorm block with learned absolute positions (no index offset here), biased projections and a tied head;
GELU-tanh ("gelu_new") in the MLP. Its checkpoint's Conv1D weights are stored [in, out] and its attention's q, k and
v fused in ``c_attn``: transposed and split on the way in. Attention scales q by ``head_dim ** -0.5`` as OPT does
(HF GPT-2 divides the scores by ``sqrt(head_dim)``: the same up to fp32 rounding). LoRA: adapters of c_attn,
c_proj and c_fc, as PEFT saves them for HF's Conv1D layers (A [r, in] and B [out, r], as for a linear layer; its
``fan_in_fan_out`` only says how to merge them into the [in, out] weight): c_attn's B cut into q / k / v rows."""
from __future__ import annotations

import re
from types import SimpleNamespace
from typing import Iterable

import torch

from pagedllm.model.models.opt import OPTForCausalLM

# GPT-2 checkpoint names (with or without the "transformer." prefix) -> the OPT decoder's, and whether the tensor is
# a Conv1D weight (stored [in, out]: transposed to Linear's [out, in]; Conv1D biases and the rest as they are).
_RENAMES = [
    (r"wte\.", "model.decoder.embed_tokens.", False), (r"wpe\.", "model.decoder.embed_positions.", False),
    (r"ln_f\.", "model.decoder.final_layer_norm.", False),
    (r"h\.(\d+)\.ln_1\.", r"model.decoder.layers.\1.self_attn_layer_norm.", False),
    (r"h\.(\d+)\.ln_2\.", r"model.decoder.layers.\1.final_layer_norm.", False),
    (r"h\.(\d+)\.attn\.c_proj\.", r"model.decoder.layers.\1.self_attn.out_proj.", True),
    (r"h\.(\d+)\.mlp\.c_fc\.", r"model.decoder.layers.\1.fc1.", True),
    (r"h\.(\d+)\.mlp\.c_proj\.", r"model.decoder.layers.\1.fc2.", True),
]
_C_ATTN = re.compile(r"h\.(\d+)\.attn\.c_attn\.(weight|bias)")


class GPT2ForCausalLM(OPTForCausalLM):
    position_offset = 0
    supports_pipeline_parallel = True
    lora_target_modules = ("c_attn", "c_proj", "c_fc")

    @staticmethod
    def decoder_config(hf_config):
        if getattr(hf_config, "scale_attn_by_inverse_layer_idx", False) or getattr(hf_config,
                                                                                    "reorder_and_upcast_attn", False):
            raise ValueError("GPT-2 with scale_attn_by_inverse_layer_idx or reorder_and_upcast_attn is not supported "
                             "yet.")
        if not getattr(hf_config, "scale_attn_weights", True):
            raise ValueError("GPT-2 with scale_attn_weights=False is not supported yet.")
        hidden = hf_config.n_embd
        return SimpleNamespace(
            hidden_size=hidden, num_attention_heads=hf_config.n_head, num_hidden_layers=hf_config.n_layer,
            max_position_embeddings=hf_config.n_positions, vocab_size=hf_config.vocab_size,
            ffn_dim=getattr(hf_config, "n_inner", None) or 4 * hidden, do_layer_norm_before=True,
            activation_function=getattr(hf_config, "activation_function", "gelu_new"), enable_bias=True,
            layer_norm_eps=getattr(hf_config, "layer_norm_epsilon", 1e-5), word_embed_proj_dim=None)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        return super().load_weights(self._opt_names(weights))

    def lora_module_parts(self, module: str, b: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
        """An adapter's module (``transformer.h.0.attn.c_attn``) and its lora_B [out, r] -> the OPT decoder's
        modules and their rows of B (c_attn's: q, k, v in turn)."""
        name = module.removeprefix("transformer.")
        match = re.fullmatch(r"h\.(\d+)\.attn\.c_attn", name)
        if match:
            return [(f"model.decoder.layers.{match.group(1)}.self_attn.{part}_proj", piece)
                    for part, piece in zip("qkv", b.split(self.config.n_embd, dim=0))]
        for pattern, new, _ in _RENAMES:
            renamed, n = re.subn(f"^{pattern}", new, f"{name}.")
            if n:
                return [(renamed.removesuffix("."), b)]
        return [(module, b)]

    def _opt_names(self, weights: Iterable[tuple[str, torch.Tensor]]) -> Iterable[tuple[str, torch.Tensor]]:
        hidden = self.config.n_embd
        for name, tensor in weights:
            name = name.removeprefix("transformer.")
            if re.fullmatch(r"h\.\d+\.attn\.(masked_)?bias", name):
                continue                       # older checkpoints' causal-mask buffers
            if name == "lm_head.weight":
                yield name, tensor             # tied: OPT's loader skips it
                continue
            match = _C_ATTN.fullmatch(name)
            if match:
                layer, kind = match.groups()
                fused = tensor.t() if kind == "weight" else tensor      # Conv1D: [in, 3 * out]
                for part, piece in zip("qkv", fused.split(hidden, dim=0)):
                    yield f"model.decoder.layers.{layer}.self_attn.{part}_proj.{kind}", piece
                continue
            for pattern, new, conv1d in _RENAMES:
                renamed, n = re.subn(f"^{pattern}", new, name)
                if n:
                    yield renamed, (tensor.t() if conv1d and renamed.endswith(".weight") else tensor)
                    break
            else:
                yield name, tensor              # unknown: the loader names it
