"""Mixture-of-experts decoders on the Llama decoder (model/layers/moe.py has the blocks): Qwen2-MoE (Qwen1.5-MoE,
Qwen2-57B-A14B: QKV bias, a shared expert), Qwen3-MoE (Qwen3-30B-A3B, 235B-A22B: per-head Q/K norms) and Mixtral
(8x7B, 8x22B). Their experts take FP8 (online or FP8 checkpoints), AWQ, GPTQ, compressed-tensors W4A16 and
bitsandbytes (4-bit at load, 4-bit and 8-bit checkpoints); LoRA adapters of the attention (and of Qwen2-MoE's shared
expert), not of the experts yet.

GLM-4.5 / 4.6 (``Glm4MoeForCausalLM``: GLM-4.5, GLM-4.5-Air, GLM-4.6) as HF transformers' glm4_moe runs it: a Llama
decoder with Q/K/V biases (``attention_bias``) and none on o_proj, per-head Q/K norms (``use_qk_norm``), NeoX
rotary over the first ``partial_rotary_factor`` of each head, ``first_k_dense_replace`` dense layers, then
DeepSeek-V3's MoE (model/models/deepseek.py's DeepseekMoE: fp32 sigmoid router with ``e_score_correction_bias``,
noaux_tc groups, ``routed_scaling_factor``, ``n_shared_experts`` shared experts). Its multi-token-prediction layers
(``model.layers.{num_hidden_layers}...``) are not run; their tensors are skipped at load. Unquantized and
compressed-tensors FP8 checkpoints (GLM-4.5-Air-FP8's llm-compressor form: e4m3 with a scale per output row, the
experts kept e4m3); no LoRA.

dots.llm1 (``Dots1ForCausalLM``: rednote-hilab/dots.llm1.base / .inst) is GLM-4.5's decoder with Qwen3's attention:
per-head Q/K norms always, ``attention_bias`` on Q/K/V/O, full rotary, and windowed layers from ``layer_types``
(``sliding_window`` from ``max_window_layers`` on); the same DeepSeek-V3 MoE after ``first_k_dense_replace``.

ERNIE 4.5 MoE (``Ernie4_5_MoeForCausalLM``: ERNIE-4.5-21B-A3B, 300B-A47B) is the dense ERNIE 4.5 decoder
(ernie4_5.py: interleaved rotary reordered at load) with MoE layers by ``moe_layer_start_index`` / ``end_index`` /
``interval``: an fp32 router whose softmax picks the top-k by probability + ``moe_statics.e_score_correction_bias``
and weighs them by their probabilities over their sum (clamped at ``moe_norm_min``), plus ``moe_num_shared_experts``
shared experts added ungated. Its multi-token-prediction tensors (``mtp_*``) are skipped at load.

Hunyuan MoE (``HunYuanMoEV1ForCausalLM``: Hunyuan-A13B) as HF transformers' hunyuan_v1_moe runs it: per-head Q/K
norms (``query_layernorm`` / ``key_layernorm``) *after* the rotary, which therefore runs in the model, not in the
attention backend; NTK-alpha rotary (``rope_scaling`` "dynamic" with a fixed ``alpha``: the base stretched, rotary.py);
every layer MoE: an fp32 router (``gate.wg``), softmax, top-k renormalized, fp32 weights, plus a SiLU shared MLP of
``intermediate_size`` (``shared_mlp``) added ungated. A per-layer ``moe_topk`` list must hold one value; configs HF's
model would run otherwise than the checkpoint's code (``use_cla``, ``use_mixed_mlp_moe`` false, ``use_qk_norm`` false,
``moe_intermediate_size`` or ``num_shared_expert`` other than HF's assumptions) are refused by name.

OLMoE (``OlmoeForCausalLM``: allenai/OLMoE-1B-7B): Qwen's router (softmax over all experts, then the top-k,
renormalized when ``norm_topk_prob``, False in the released checkpoints) on a Llama decoder whose Q / K RMSNorms run
over the whole projection (all heads, as OLMo 2's): no tensor parallel. ``clip_qkv`` is refused.

Granite MoE (``GraniteMoeForCausalLM``: granite-3.0-1b-a400m / 3b-a800m, granite-3.1 MoE; ``GraniteMoeShared
ForCausalLM``: a shared expert beside them): Granite's four multipliers (granite.py) with a router that softmaxes the
top-k logits among themselves (in fp32), and, for the shared variant, a SiLU-gated shared MLP of
``shared_intermediate_size`` added ungated. The checkpoints stack each layer's experts (``block_sparse_moe.
input_linear.weight`` ``[E, 2I, H]``: gate rows then up; ``output_linear.weight`` ``[E, H, I]``; the router's
``router.layer.weight``; ``shared_mlp.input_linear`` / ``output_linear``): cut per expert at load.

None of these three takes LoRA or quantization yet (refused by name).

PhiMoE (``PhimoeForCausalLM``: Phi-3.5-MoE-instruct): a Llama decoder with LayerNorms (with biases; eps
``rms_norm_eps``), biases on Q/K/V/O (``attention_bias``) and optionally on the LM head (``lm_head_bias``), LongRoPE
whose cos / sin are scaled by the config's ``short_mscale`` (HF's PhimoeRotaryEmbedding; max_model_len is capped at
the original context under LongRoPE, where HF uses the short factors and short_mscale), and 16 experts routed by
sparsemixer: at inference a deterministic top-2 (moe.sparsemixer_top2; ``num_experts_per_tok`` must be 2, which HF
assumes whatever the config says). Checkpoints name the experts ``block_sparse_moe.experts.{e}.w1/w3/w2`` and the
router ``block_sparse_moe.gate``, as Mixtral's. No LoRA or quantization yet.
"""
from __future__ import annotations

import copy
import dataclasses
import re
from typing import Iterable

import torch

from torch import nn

from pagedllm.config import num_experts, rope_parameters
from pagedllm.distributed import tp_all_reduce
from pagedllm.model.hf_configs import reject_unsupported
from pagedllm.model.layers.moe import MoEExperts, SparseMoeBlock
from pagedllm.model.models.deepseek import DeepseekMoE, check_expert_groups
from pagedllm.model.models.ernie4_5 import Ernie4_5ForCausalLM
from pagedllm.model.models.granite import GraniteForCausalLM
from pagedllm.model.models.llama import LlamaForCausalLM, LlamaMLP, LlamaVariant, attention_layer_types
from pagedllm.model.models.weights import without_layers_from


class _MoE(LlamaForCausalLM):
    supports_lora = True      # the attention's and Qwen2-MoE's shared expert's projections; not the experts yet
    supports_quantization = ("fp8", "awq", "gptq", "compressed-tensors", "bitsandbytes")


class Qwen2MoeForCausalLM(_MoE):
    qkv_bias = True
    moe = "qwen"


class Qwen3MoeForCausalLM(_MoE):
    qk_norm = True
    moe = "qwen"


class MixtralForCausalLM(_MoE):
    moe = "mixtral"


def _glm4_moe_block(cfg, quant_config, prefix: str) -> DeepseekMoE:
    return DeepseekMoE(cfg, True, quant_config, prefix)


class Glm4MoeForCausalLM(LlamaForCausalLM):
    moe = "deepseek"                # LlamaVariant.moe; the block is _glm4_moe_block's
    supports_lora = True            # the attention's, the dense layers' and the shared experts' projections
    # GLM-4.5(-Air)-FP8: llm-compressor's per-channel FP8 (the experts through Fp8MoEMethod)
    supports_quantization = ("compressed-tensors",)

    @classmethod
    def variant(cls, hf_config) -> LlamaVariant:
        check_expert_groups(hf_config, "Glm4MoeForCausalLM", sigmoid=True)
        return dataclasses.replace(super().variant(hf_config), o_proj_bias=False,
                                   qk_norm=bool(getattr(hf_config, "use_qk_norm", False)), moe_block=_glm4_moe_block)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        return super().load_weights(without_layers_from(weights, self.config.num_hidden_layers))


class Dots1ForCausalLM(Glm4MoeForCausalLM):
    @classmethod
    def variant(cls, hf_config) -> LlamaVariant:
        attention_layer_types(hf_config, "Dots1ForCausalLM")
        return dataclasses.replace(super().variant(hf_config), qk_norm=True, o_proj_bias=None)


class OlmoeForCausalLM(_MoE):
    qk_norm = True
    moe = "qwen"
    supports_tensor_parallel = False     # the Q / K norms over all heads need them on one rank (as OLMo 2)
    supports_quantization = False

    @classmethod
    def variant(cls, hf_config) -> LlamaVariant:
        reject_unsupported("OlmoeForCausalLM", hf_config, {"clip_qkv": None},
                           why=", as the released OLMoE checkpoints")
        return dataclasses.replace(super().variant(hf_config), qk_norm_whole=True)


def _granite_moe_block(cfg, quant_config, prefix: str) -> SparseMoeBlock:
    shared = getattr(cfg, "shared_intermediate_size", 0) or 0
    return SparseMoeBlock(cfg, LlamaMLP(cfg, quant_config, f"{prefix}.shared_expert", intermediate_size=shared)
                          if shared else None, quant_config=quant_config, prefix=prefix, routing="topk_softmax",
                          shared_expert_gate=False)


# Granite MoE checkpoint names (under model.layers.{i}.) -> ours; the experts' stacked tensors are cut per expert.
_GRANITE_MOE_NAMES = {"block_sparse_moe.router.layer.": "mlp.gate.",
                      "shared_mlp.input_linear.": "mlp.shared_expert.gate_up_proj.",
                      "shared_mlp.output_linear.": "mlp.shared_expert.down_proj."}
_GRANITE_STACKED = re.compile(r"(.+)\.block_sparse_moe\.(input|output)_linear\.weight")


class GraniteMoeForCausalLM(GraniteForCausalLM):
    moe = "granite"                 # LlamaVariant.moe; the block is _granite_moe_block's
    supports_quantization = False
    # LoRA: the attention's projections and the shared MLP's (its input_linear: [gate; up], cut into our parts);
    # the experts' stacked input_linear / output_linear are refused by name, as the other MoE models' experts.
    supports_lora = True
    lora_target_modules = ("q_proj", "k_proj", "v_proj", "o_proj", "input_linear", "output_linear")

    @classmethod
    def variant(cls, hf_config) -> LlamaVariant:
        return dataclasses.replace(super().variant(hf_config), moe_block=_granite_moe_block)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        return super().load_weights(self._per_expert(weights))

    def lora_checkpoint_fused_modules(self) -> dict[str, list[tuple[str, int]]]:
        shared = getattr(self.config, "shared_intermediate_size", 0) or 0
        return {"gate_up_proj": [("gate_proj", shared), ("up_proj", shared)]} if shared else {}

    def lora_module_parts(self, module: str, b: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
        """An adapter's module in our names: the shared MLP's renamed as its weights; an expert layer's stacked
        projection under ``mlp.experts.`` (refused there by name)."""
        stacked = _GRANITE_STACKED.fullmatch(f"{module}.weight")
        if stacked is not None:
            return [(f"{stacked.group(1)}.mlp.experts.{stacked.group(2)}_linear", b)]
        [(name, _)] = self._per_expert([(f"{module}.weight", b)])
        return [(name.removesuffix(".weight"), b)]

    @staticmethod
    def _per_expert(weights: Iterable[tuple[str, torch.Tensor]]) -> Iterable[tuple[str, torch.Tensor]]:
        for name, tensor in weights:
            stacked = _GRANITE_STACKED.fullmatch(name)
            if stacked is None:
                for old, new in _GRANITE_MOE_NAMES.items():
                    name = name.replace(f".{old}", f".{new}")
                yield name, tensor
                continue
            layer, which = stacked.groups()
            for e in range(tensor.shape[0]):
                if which == "output":
                    yield f"{layer}.mlp.experts.{e}.down_proj.weight", tensor[e]
                else:
                    gate, up = tensor[e].chunk(2, dim=0)
                    yield f"{layer}.mlp.experts.{e}.gate_proj.weight", gate
                    yield f"{layer}.mlp.experts.{e}.up_proj.weight", up


class GraniteMoeSharedForCausalLM(GraniteMoeForCausalLM):
    """Granite MoE with its shared MLP (``shared_intermediate_size``; the block reads it from the config)."""


def _phimoe_block(cfg, quant_config, prefix: str) -> SparseMoeBlock:
    return SparseMoeBlock(cfg, quant_config=quant_config, prefix=prefix, routing="sparsemixer")


class PhimoeForCausalLM(LlamaForCausalLM):
    moe = "phimoe"                  # LlamaVariant.moe; the block is _phimoe_block's
    supports_lora = True            # the attention's projections (the experts: refused by name)
    supports_quantization = False

    @classmethod
    def variant(cls, hf_config) -> LlamaVariant:
        if hf_config.num_experts_per_tok != 2:
            raise ValueError(f"PhimoeForCausalLM with num_experts_per_tok={hf_config.num_experts_per_tok} is not "
                             f"supported: its sparsemixer router picks 2 experts a token (HF's too, whatever the "
                             f"config says).")
        return dataclasses.replace(super().variant(hf_config), layer_norm=True, layer_norm_bias=True,
                                   moe_block=_phimoe_block)

    def __init__(self, hf_config, engine_config):
        super().__init__(self._short_mscale_rotary(hf_config), engine_config)

    @staticmethod
    def _short_mscale_rotary(hf_config):
        """Under LongRoPE, HF's PhiMoE scales cos / sin by ``short_mscale`` within the original context (the only
        context pagedllm runs it in), not by LongRoPE's own attention factor: a copy of the config whose rotary
        parameters say so (transformers' longrope takes an ``attention_factor`` as given)."""
        params = rope_parameters(hf_config)
        if not isinstance(params, dict) or params.get("rope_type", params.get("type")) != "longrope":
            return hf_config
        config = copy.copy(hf_config)
        config.rope_parameters = dict(params, attention_factor=params["short_mscale"])
        return config


class Ernie45MoeBlock(nn.Module):
    """ERNIE 4.5's MoE layer, in HF's order of operations (module docstring)."""

    def __init__(self, cfg, quant_config=None, prefix: str = ""):
        super().__init__()
        n, hidden = num_experts(cfg), cfg.hidden_size
        self.top_k, self.norm_min = cfg.num_experts_per_tok, float(cfg.moe_norm_min)
        self.gate = nn.Linear(hidden, n, bias=False, dtype=torch.float32)     # replicated, fp32 as HF keeps it
        self.gate.requires_grad_(False)
        self.moe_statics = nn.Module()
        self.moe_statics.e_score_correction_bias = nn.Parameter(torch.zeros(1, n, dtype=torch.float32),
                                                                requires_grad=False)
        self.experts = MoEExperts(n, hidden, cfg.moe_intermediate_size, quant_config, f"{prefix}.experts")
        shared = (cfg.moe_num_shared_experts or 0) * cfg.moe_intermediate_size
        self.shared_experts = (LlamaMLP(cfg, quant_config, f"{prefix}.shared_experts", intermediate_size=shared)
                               if shared else None)

    def forward(self, x: torch.Tensor, lora_step=None) -> torch.Tensor:
        probs = torch.softmax(self.gate(x.float()), dim=-1)
        top_ids = torch.topk(probs + self.moe_statics.e_score_correction_bias[0], self.top_k, dim=-1)[1]
        top_weights = probs.gather(-1, top_ids)
        top_weights = (top_weights / top_weights.sum(dim=-1, keepdim=True).clamp(min=self.norm_min)).to(x.dtype)
        out = self.experts(x, top_ids, top_weights)
        if self.experts.tp_size > 1:
            out = tp_all_reduce(out)
        return out if self.shared_experts is None else out + self.shared_experts(x, lora_step)


def _ernie_moe_block(cfg, quant_config, prefix: str) -> Ernie45MoeBlock:
    return Ernie45MoeBlock(cfg, quant_config, prefix)


class Ernie4_5_MoeForCausalLM(Ernie4_5ForCausalLM):
    moe = "ernie"                   # LlamaVariant.moe; the block is _ernie_moe_block's
    supports_quantization = False
    supports_lora = True            # the attention's and the shared experts' projections (the experts: refused)

    @classmethod
    def variant(cls, hf_config) -> LlamaVariant:
        return dataclasses.replace(super().variant(hf_config), moe_block=_ernie_moe_block)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        return super().load_weights((name, t) for name, t in weights if not name.startswith("model.mtp_"))


def _hunyuan_moe_block(cfg, quant_config, prefix: str) -> SparseMoeBlock:
    return SparseMoeBlock(cfg, LlamaMLP(cfg, quant_config, f"{prefix}.shared_expert"), weights_in_model_dtype=False,
                          quant_config=quant_config, prefix=prefix, shared_expert_gate=False, router_fp32=True)


# Hunyuan checkpoint names -> ours (the router's nn.Linear is gate.wg; the shared MLP shared_mlp)
_HUNYUAN_NAMES = {".mlp.gate.wg.": ".mlp.gate.", ".mlp.shared_mlp.": ".mlp.shared_expert.",
                  ".self_attn.query_layernorm.": ".self_attn.q_norm.",
                  ".self_attn.key_layernorm.": ".self_attn.k_norm."}


class HunYuanMoEV1ForCausalLM(LlamaForCausalLM):
    qk_norm = True
    moe = "hunyuan"                 # LlamaVariant.moe; the block is _hunyuan_moe_block's
    supports_lora = True            # the attention's and the shared MLP's projections (the experts: refused)
    supports_quantization = False

    @classmethod
    def variant(cls, hf_config) -> LlamaVariant:
        return dataclasses.replace(super().variant(hf_config), qk_norm_after_rotary=True,
                                   moe_block=_hunyuan_moe_block)

    def __init__(self, hf_config, engine_config):
        super().__init__(self._checked(hf_config), engine_config)

    @staticmethod
    def _checked(hf_config):
        """The config with a per-layer ``moe_topk`` list of one value as that value; what HF's model would run
        otherwise than the checkpoint's code refused by name."""
        refused = {"use_cla": True, "use_mixed_mlp_moe": False, "use_qk_norm": False}
        for field, value in refused.items():
            if getattr(hf_config, field, not value) == value:
                raise ValueError(f"HunYuanMoEV1ForCausalLM with {field}={value} is not supported (HF transformers' "
                                 f"model runs it as {field}={not value}).")
        for field, want in (("moe_intermediate_size", hf_config.intermediate_size), ("num_shared_expert", 1)):
            value = getattr(hf_config, field, None)
            if value is not None and any(v != want for v in (value if isinstance(value, list) else [value])):
                raise ValueError(f"HunYuanMoEV1ForCausalLM with {field}={value} is not supported (only {want} in "
                                 f"every layer, as HF transformers' model assumes).")
        for field in ("num_experts", "moe_topk"):
            value = getattr(hf_config, field)
            if isinstance(value, list):
                if len(set(value)) != 1:
                    raise ValueError(f"HunYuanMoEV1ForCausalLM with {field}={value}: only one value for every layer "
                                     f"is supported.")
                hf_config = copy.copy(hf_config)
                setattr(hf_config, field, value[0])
        return hf_config

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        return super().load_weights(self._renamed(weights))

    def lora_module_parts(self, module: str, b: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
        """An adapter's module in our names (the shared MLP's ``shared_mlp`` is our ``shared_expert``)."""
        [(name, _)] = self._renamed([(f"{module}.weight", b)])
        return [(name.removesuffix(".weight"), b)]

    @staticmethod
    def _renamed(weights: Iterable[tuple[str, torch.Tensor]]) -> Iterable[tuple[str, torch.Tensor]]:
        for name, tensor in weights:
            for old, new in _HUNYUAN_NAMES.items():
                name = name.replace(old, new)
            yield name, tensor
