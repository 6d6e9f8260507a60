"""Llama-family decoder (Llama 2/3, Mistral, SmolLM2), and the base of Qwen2 / Qwen3 (and their MoE), Mixtral,
Gemma 1 / 2 / 3, Granite, OLMo 2 and Phi-3.

The families differ only in the switches of ``LlamaVariant``: bias on the QKV projection (Qwen2), RMSNorms on Q and
K before the rotary embedding (Qwen3, Gemma 3; over the whole projection for OLMo 2), GELU-tanh gating, RMSNorm
weights stored as ``w - 1`` and scaled token embeddings (Gemma), norms around both branches and soft caps (Gemma 2),
norms after each branch only (OLMo 2), the multipliers of Granite, and mixture-of-experts MLPs (model/layers/moe.py).
Each layer's sliding window and rotary table come from the config (config.layer_sliding_windows,
rotary.rope_layer_types).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

import torch
from torch import nn

from pagedllm.attention.forward_batch import ForwardBatch
from pagedllm.config import layer_sliding_windows
from pagedllm.distributed import get_pp_layer_range, get_tp_rank, is_first_pp_stage, is_last_pp_stage
from pagedllm.model.layers.activation import GeluTanhAndMul, SiluAndMul, activation_fn
from pagedllm.model.layers.attention import Attention
from pagedllm.model.layers.embedding import ParallelLMHead, VocabParallelEmbedding, with_given_embeds
from pagedllm.model.layers.linear import (ColumnParallelLinear, MergedColumnParallelLinear, QKVParallelLinear,
                                          RowParallelLinear, default_weight_loader)
from pagedllm.model.layers.moe import SparseMoeBlock, is_sparse_layer, load_expert_tensors
from pagedllm.model.layers.norm import HeadLayerNorm, LayerNorm, RMSNorm
from pagedllm.model.layers.pipeline import (IntermediateTensors, PPMissingLayer, make_layers, missing_prefixes,
                                             run_stage_layers)
from pagedllm.model.layers.rotary import RotaryEmbedding, rope_layer_types
from pagedllm.model.models.weights import interleaved_rotary_to_neox, load_packed_weights


@dataclass(frozen=True)
class LlamaVariant:
    """What a Llama-shaped family changes; the defaults are Llama's. Built per model by
    ``LlamaForCausalLM.variant(hf_config)``."""
    qkv_bias: bool = False
    qk_norm: bool = False
    # the MLP's gate: "silu", or "gelu_tanh" (Gemma); "ungated": down(act(up(x))) with the config's hidden_act
    # (Arcee's ReLU squared)
    activation: str = "silu"
    norm_weight_offset: float = 0.0           # Gemma stores its RMSNorm weights as w - 1: loaded as stored + 1
    embed_scale: float | None = None          # the token embeddings times this (Gemma: sqrt(hidden); Granite)
    # Gemma rounds its scale to the model dtype before the multiply; the scale is its embedding layer's (HF's
    # ScaledWordEmbedding), so prompt_embeds, HF's inputs_embeds, come scaled already.
    embed_scale_in_model_dtype: bool = False
    residual_multiplier: float = 1.0          # Granite: attention and MLP outputs times this before the residual add
    attention_scale: float | None = None      # None: head_dim ** -0.5 (Granite: its attention_multiplier)
    logits_divisor: float = 1.0               # Granite: logits / logits_scaling
    # Gemma 2: norms around both branches (post_attention_layernorm on the attention output; pre_ / post_feedforward
    # layernorms around the MLP), attention logits soft-capped, final logits soft-capped (0: none).
    sandwich_norms: bool = False
    attn_soft_cap: float = 0.0
    final_logit_soft_cap: float = 0.0
    # Mixture-of-experts MLPs in the sparse layers (model/layers/moe.py): "qwen" (Qwen2-MoE / Qwen3-MoE: router
    # weights in the model dtype, Qwen2-MoE's shared expert) or "mixtral" (fp32 router weights); None: dense. A model
    # whose ``moe_block`` builds its block names it here too (its experts load through load_expert_tensors).
    moe: str | None = None
    # OLMo 2: norms after each branch and none before it (post_attention_ / post_feedforward_layernorm), and the
    # Q / K norms over the whole projection (all heads), not per head.
    post_norms: bool = False
    qk_norm_whole: bool = False
    # gpt-oss: a learned logit per attention head (``self_attn.sinks``) in each softmax's denominator, and its own
    # MoE block, built by ``moe_block(cfg, quant_config, prefix)`` in the sparse layers (None: ``moe`` decides).
    attention_sinks: bool = False
    moe_block: Callable[..., nn.Module] | None = None
    # Which layers rotate Q / K (None: all). SmolLM3's NoPE layers and Cohere 2's full-attention layers attend
    # without positions: their rotary is None, so no backend rotates them (nor takes the fused rotary decode path).
    rope_layers: tuple[bool, ...] | None = None
    o_proj_bias: bool | None = None            # None: the config's attention_bias (GLM: a bias on Q/K/V only)
    # Cohere: bias-free LayerNorms (layer_norm_eps) where Llama has RMSNorms, Q / K norms with a weight per head, and
    # the attention and MLP side by side on one norm's output: x + attn(ln(x)) + mlp(ln(x)).
    layer_norm: bool = False
    parallel_residual: bool = False
    layer_norm_bias: bool = False              # PhiMoE: LayerNorms with a bias
    # Hunyuan MoE: the per-head Q / K norms after the rotary, which then runs here, not in the attention backend
    # (no fused rotary decode for these layers).
    qk_norm_after_rotary: bool = False
    # Qwen2-VL's M-RoPE: the rotary dims' split among (temporal, height, width) positions; a step with image rows
    # (ForwardBatch.mrope_positions) rotates here (model/models/qwen2_vl.py), every other one as plain rotary.
    mrope_section: tuple[int, ...] | None = None


def attention_layer_types(hf_config, family: str) -> list[str]:
    """The config's ``layer_types``, one per layer, each "sliding_attention" or "full_attention" (the kinds the
    windows of config.layer_sliding_windows know); any other kind is a ValueError naming it."""
    kinds = list(hf_config.layer_types[:hf_config.num_hidden_layers])
    unknown = sorted(set(kinds) - {"sliding_attention", "full_attention"})
    if unknown:
        raise ValueError(f"{family} config: layer_types {unknown} are not supported (only 'sliding_attention' and "
                         f"'full_attention').")
    return kinds


class OffsetRMSNorm(RMSNorm):
    """Gemma's RMSNorm, ``norm(x) * (1 + w)``: the checkpoint's ``w`` is loaded as ``1 + w`` (added in fp32, then
    cast: exactly HF's factor in fp32; in bf16 it is rounded once, where HF multiplies in fp32 and rounds the
    product), so the plain RMSNorm and its fused kernels run it."""

    def __init__(self, hidden_size: int, eps: float, offset: float):
        super().__init__(hidden_size, eps)
        self.offset = offset
        self.weight.weight_loader = self._load

    def _load(self, param: torch.Tensor, loaded: torch.Tensor) -> None:
        default_weight_loader(param, loaded.float() + self.offset)


def _mlp(cfg, layer_idx: int, variant: LlamaVariant, quant_config, prefix: str) -> nn.Module:
    """The layer's MLP: dense, or a mixture of experts in a MoE model's sparse layers."""
    if variant.moe_block is not None and is_sparse_layer(cfg, layer_idx):
        return variant.moe_block(cfg, quant_config, prefix)
    if variant.activation == "ungated":
        return UngatedMLP(cfg, quant_config, prefix)
    if not (variant.moe and is_sparse_layer(cfg, layer_idx)):
        return LlamaMLP(cfg, quant_config, prefix, variant.activation)
    shared_size = getattr(cfg, "shared_expert_intermediate_size", None)
    shared = (LlamaMLP(cfg, quant_config, f"{prefix}.shared_expert", intermediate_size=shared_size) if shared_size
              else None)
    return SparseMoeBlock(cfg, shared, weights_in_model_dtype=variant.moe != "mixtral", quant_config=quant_config,
                          prefix=prefix)


def _norm(size: int, cfg, variant: LlamaVariant) -> RMSNorm | LayerNorm:
    if variant.layer_norm:      # PhiMoE's config names its LayerNorms' eps rms_norm_eps
        eps = cfg.layer_norm_eps if hasattr(cfg, "layer_norm_eps") else cfg.rms_norm_eps
        return LayerNorm(size, eps, bias=variant.layer_norm_bias)
    eps = cfg.rms_norm_eps
    return OffsetRMSNorm(size, eps, variant.norm_weight_offset) if variant.norm_weight_offset else RMSNorm(size, eps)


class LlamaAttention(nn.Module):
    def __init__(self, cfg, layer_idx: int, rotary: RotaryEmbedding, variant: LlamaVariant,
                 quant_config=None, prefix: str = "", window: int = 0):
        super().__init__()
        total_heads = cfg.num_attention_heads
        total_kv_heads = getattr(cfg, "num_key_value_heads", None) or total_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // total_heads
        self.qkv_proj = QKVParallelLinear(cfg.hidden_size, self.head_dim, total_heads, total_kv_heads,
                                          bias=variant.qkv_bias, quant_config=quant_config,
                                          prefix=f"{prefix}.qkv_proj")
        o_bias = getattr(cfg, "attention_bias", False) if variant.o_proj_bias is None else variant.o_proj_bias
        self.o_proj = RowParallelLinear(total_heads * self.head_dim, cfg.hidden_size,
                                        bias=o_bias, quant_config=quant_config,
                                        prefix=f"{prefix}.o_proj")
        # This rank's heads (all of them without tensor parallel).
        self.num_heads, self.num_kv_heads = self.qkv_proj.num_heads, self.qkv_proj.num_kv_heads
        self.rotary = rotary
        if variant.qk_norm and variant.layer_norm:      # Cohere: this rank's heads' weights
            self.q_norm = HeadLayerNorm(self.num_heads, self.head_dim, cfg.layer_norm_eps,
                                        self.qkv_proj.tp_rank * self.num_heads)
            self.k_norm = HeadLayerNorm(self.num_kv_heads, self.head_dim, cfg.layer_norm_eps,
                                        self.qkv_proj.kv_head_start)
        elif variant.qk_norm:
            q_width = total_heads * self.head_dim if variant.qk_norm_whole else self.head_dim
            k_width = total_kv_heads * self.head_dim if variant.qk_norm_whole else self.head_dim
            self.q_norm = _norm(q_width, cfg, variant)
            self.k_norm = _norm(k_width, cfg, variant)
        self.qk_norm, self.qk_norm_whole = variant.qk_norm, variant.qk_norm_whole
        self.qk_norm_after_rotary = variant.qk_norm_after_rotary
        self.mrope_section = variant.mrope_section
        scale = self.head_dim ** -0.5 if variant.attention_scale is None else variant.attention_scale
        if variant.attention_sinks:      # this rank's heads' sinks
            self.sinks = nn.Parameter(torch.empty(self.num_heads), requires_grad=False)
            self.sinks.weight_loader = self._load_sinks
        self.attn = Attention(self.num_heads, self.head_dim, scale, self.num_kv_heads, layer_idx,
                              soft_cap=variant.attn_soft_cap, sliding_window=window,
                              sinks=self.sinks if variant.attention_sinks else None)
        self.q_size, self.kv_size = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim

    def _load_sinks(self, param: torch.Tensor, loaded: torch.Tensor) -> None:
        """The checkpoint's sinks of all heads ``[Hq]``: this rank's (its query heads, in order)."""
        start = get_tp_rank() * self.num_heads
        default_weight_loader(param, loaded[start:start + self.num_heads])

    def forward(self, positions: torch.Tensor, hidden: torch.Tensor, batch: ForwardBatch) -> torch.Tensor:
        qkv = self.qkv_proj(hidden, batch.lora_step)
        q, k, v = qkv.split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        if self.qk_norm_whole:        # OLMo 2: over all heads (one rank holds them all: no tensor parallel)
            q, k = self.q_norm(q), self.k_norm(k)
        q = q.view(-1, self.num_heads, self.head_dim)
        k = k.view(-1, self.num_kv_heads, self.head_dim)
        if self.qk_norm_after_rotary:
            q, k = self.rotary(positions, q, k)
            return self.o_proj(self.attn(self.q_norm(q), self.k_norm(k), v, batch), batch.lora_step)
        if self.qk_norm and not self.qk_norm_whole:
            q, k = self.q_norm(q), self.k_norm(k)
        if self.mrope_section is not None and batch.mrope_positions is not None:
            # Image rows: three positions per token, rotated here; the backend gets rotated Q/K, so neither Triton's
            # rotary + KV store nor the fused rotary decode kernel (one position per token) sees them. Steps without
            # image rows have three equal positions per token, which is the plain rotary: the path below.
            q, k = self.rotary.forward_mrope(batch.mrope_positions, q, k, self.mrope_section)
            return self.o_proj(self.attn(q, k, v, batch), batch.lora_step)
        return self.o_proj(self.attn(q, k, v, batch, rotary=self.rotary, positions=positions), batch.lora_step)


class LlamaMLP(nn.Module):
    def __init__(self, cfg, quant_config=None, prefix: str = "", activation: str = "silu",
                 intermediate_size: int | None = None):
        super().__init__()
        bias = getattr(cfg, "mlp_bias", False)
        intermediate = intermediate_size or cfg.intermediate_size
        self.gate_up_proj = MergedColumnParallelLinear(cfg.hidden_size, [intermediate] * 2, bias=bias,
                                                       quant_config=quant_config, prefix=f"{prefix}.gate_up_proj")
        self.down_proj = RowParallelLinear(intermediate, cfg.hidden_size, bias=bias,
                                           quant_config=quant_config, prefix=f"{prefix}.down_proj")
        self.silu = activation == "silu"
        self.act = SiluAndMul() if self.silu else GeluTanhAndMul()

    def forward(self, x: torch.Tensor, lora_step=None) -> torch.Tensor:
        # SiLU-and-mul fused into down_proj's skinny GEMM was tried: 7B batch-1 decode 7% slower on an H200, as every
        # program recomputes SiLU over all of K (docs/perf.md). In gate_up's epilogue (PAGEDLLM_GATE_UP_SILU) each
        # output is computed once, by the program that has its gate and up rows (SiLU only).
        h = self.gate_up_proj.fused_forward(x, lora_step) if self.silu else None
        if h is None:
            h = self.act(self.gate_up_proj(x, lora_step))
        return self.down_proj(h, lora_step)


class UngatedMLP(nn.Module):
    """``down_proj(act(up_proj(x)))`` with no gate (Arcee: ReLU squared), so neither the merged gate/up layer nor
    its SiLU epilogue; ``act`` is the config's ``hidden_act``."""

    def __init__(self, cfg, quant_config=None, prefix: str = ""):
        super().__init__()
        bias = getattr(cfg, "mlp_bias", False)
        self.up_proj = ColumnParallelLinear(cfg.hidden_size, cfg.intermediate_size, bias=bias,
                                            quant_config=quant_config, prefix=f"{prefix}.up_proj")
        self.down_proj = RowParallelLinear(cfg.intermediate_size, cfg.hidden_size, bias=bias,
                                           quant_config=quant_config, prefix=f"{prefix}.down_proj")
        self.act = activation_fn(cfg.hidden_act, "hidden_act")

    def forward(self, x: torch.Tensor, lora_step=None) -> torch.Tensor:
        return self.down_proj(self.act(self.up_proj(x, lora_step)), lora_step)


class LlamaDecoderLayer(nn.Module):
    def __init__(self, cfg, layer_idx: int, rotary: RotaryEmbedding | None, variant: LlamaVariant,
                 quant_config=None, prefix: str = "", window: int = 0, model_layer: int | None = None):
        """``layer_idx``: the layer's index in this pipeline stage (its KV cache's); ``model_layer``: in the model
        (None: the same), which says whether a MoE model's layer is sparse."""
        super().__init__()
        self.self_attn = LlamaAttention(cfg, layer_idx, rotary, variant, quant_config, f"{prefix}.self_attn",
                                        window)
        self.mlp = _mlp(cfg, layer_idx if model_layer is None else model_layer, variant, quant_config,
                        f"{prefix}.mlp")
        self.post_norms = variant.post_norms
        if not self.post_norms:
            self.input_layernorm = _norm(cfg.hidden_size, cfg, variant)
        self.parallel_residual = variant.parallel_residual
        if not self.parallel_residual:
            self.post_attention_layernorm = _norm(cfg.hidden_size, cfg, variant)
        self.sandwich = variant.sandwich_norms
        if self.sandwich:
            self.pre_feedforward_layernorm = _norm(cfg.hidden_size, cfg, variant)
        if self.sandwich or self.post_norms:
            self.post_feedforward_layernorm = _norm(cfg.hidden_size, cfg, variant)
        # The residual adds run inside the next norm (fused): a branch's output is scaled before it gets there.
        self.residual_multiplier = variant.residual_multiplier

    def forward(self, positions, hidden, residual, batch):
        if self.post_norms:     # OLMo 2: x + norm(attn(x)), then + norm(mlp(.)), the last add in the next layer
            x = hidden if residual is None else hidden + residual
            y = x + self.post_attention_layernorm(self.self_attn(positions, x, batch))
            return self.post_feedforward_layernorm(self.mlp(y, batch.lora_step)), y
        if residual is None:
            residual = hidden
            hidden = self.input_layernorm(hidden)
        else:
            hidden, residual = self.input_layernorm(hidden, residual)
        if self.parallel_residual:      # Cohere: (x + attn) + mlp, in HF's order, the last add in the next norm
            return self.mlp(hidden, batch.lora_step), residual + self.self_attn(positions, hidden, batch)
        hidden = self.self_attn(positions, hidden, batch)
        if self.sandwich:       # Gemma 2: each branch's output normed before its residual add
            hidden, residual = self.pre_feedforward_layernorm(self.post_attention_layernorm(hidden), residual)
            return self.post_feedforward_layernorm(self.mlp(hidden, batch.lora_step)), residual
        if self.residual_multiplier != 1.0:
            hidden = hidden * self.residual_multiplier
        hidden, residual = self.post_attention_layernorm(hidden, residual)
        hidden = self.mlp(hidden, batch.lora_step)
        if self.residual_multiplier != 1.0:
            hidden = hidden * self.residual_multiplier
        return hidden, residual


class LlamaModel(nn.Module):
    def __init__(self, cfg, max_position: int, variant: LlamaVariant, quant_config=None, prefix: str = "model",
                 windows: list[int] | None = None):
        """``windows``: each layer's sliding attention window (0: full; config.layer_sliding_windows)."""
        super().__init__()
        # Pipeline parallel: the embedding on the first stage, the final norm on the last, each stage its layers.
        self.first_stage, self.last_stage = is_first_pp_stage(), is_last_pp_stage()
        self.embed_tokens = (VocabParallelEmbedding(cfg.vocab_size, cfg.hidden_size, quant_config,
                                                    f"{prefix}.embed_tokens") if self.first_stage
                             else PPMissingLayer())
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        # One rotary table for the model, or one per layer type where they rotate differently (Gemma 3's local
        # and global layers): each layer gets its type's.
        types = rope_layer_types(cfg)
        if types is None:
            shared = RotaryEmbedding(cfg, head_dim, max_position)
            rotaries = [shared] * cfg.num_hidden_layers
        else:
            by_type = {t: RotaryEmbedding(cfg, head_dim, max_position, t) for t in types}
            rotaries = [by_type[t] for t in cfg.layer_types[:cfg.num_hidden_layers]]
        if variant.rope_layers is not None:
            rotaries = [r if rotates else None for r, rotates in zip(rotaries, variant.rope_layers)]
        # make_layers numbers the stage's layers from 0; the per-layer tables, the sparse layers and the checkpoint
        # names are the model's: a pipeline stage's layer i is the model's layer start + i.
        start, _ = get_pp_layer_range(cfg.num_hidden_layers)
        self.start_layer, self.end_layer, self.layers = make_layers(
            cfg.num_hidden_layers, lambda i: LlamaDecoderLayer(
                cfg, i, rotaries[start + i], variant, quant_config, f"{prefix}.layers.{start + i}",
                windows[start + i] if windows else 0, model_layer=start + i))
        self._stage_layers = list(self.layers)[self.start_layer:self.end_layer]    # a plain list: no slicing per step
        self.norm = _norm(cfg.hidden_size, cfg, variant) if self.last_stage else PPMissingLayer()
        self.embed_scale, self._embed_scale_in_model_dtype = variant.embed_scale, variant.embed_scale_in_model_dtype

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, batch: ForwardBatch,
                intermediate: IntermediateTensors | None = None) -> torch.Tensor | IntermediateTensors:
        if self.first_stage:
            # Given embeddings (prompt_embeds) are HF's inputs_embeds: Gemma's come scaled (its embedding layer
            # scales), Granite's are multiplied here like the looked-up ones.
            given, residual = batch.input_embeds, None
            scaled_given = given is not None and self._embed_scale_in_model_dtype
            hidden = with_given_embeds(self.embed_tokens(input_ids), None if scaled_given else given)
            if self.embed_scale is not None:
                hidden = hidden * (torch.tensor(self.embed_scale).to(hidden.dtype)
                                   if self._embed_scale_in_model_dtype else self.embed_scale)
            if scaled_given:
                hidden = with_given_embeds(hidden, given)
        else:
            hidden, residual = intermediate.hidden, intermediate.residual
        return run_stage_layers(self._stage_layers, positions, hidden, residual, batch, self.last_stage, self.norm)


class LlamaForCausalLM(nn.Module):
    qkv_bias = False
    qk_norm = False
    moe: str | None = None      # LlamaVariant.moe
    has_lm_head = True
    supports_tensor_parallel = True
    supports_quantization = True
    supports_pipeline_parallel = True
    supports_lora = True      # adapters of q/k/v/o/gate/up/down_proj (pagedllm/lora)
    # checkpoint name fragment -> (our parameter fragment, shard id)
    packed_modules_mapping = {
        "q_proj": ("qkv_proj", "q"), "k_proj": ("qkv_proj", "k"), "v_proj": ("qkv_proj", "v"),
        "gate_proj": ("gate_up_proj", 0), "up_proj": ("gate_up_proj", 1),
    }

    @classmethod
    def variant(cls, hf_config) -> LlamaVariant:
        """The family's switches for this config (a subclass overrides it: Gemma, Granite)."""
        return LlamaVariant(qkv_bias=cls.qkv_bias or getattr(hf_config, "attention_bias", False), qk_norm=cls.qk_norm,
                            moe=cls.moe)

    def __init__(self, hf_config, engine_config):
        super().__init__()
        self.config = hf_config
        max_position = max(engine_config.max_model_len, getattr(hf_config, "max_position_embeddings", 0) or 0)
        variant = self.variant(hf_config)
        act = getattr(hf_config, "hidden_act", None) or "silu"
        if variant.activation == "silu" and act not in ("silu", "swish"):
            # The gated MLP is SiLU's (and the GPU fuses SiLU into gate_up): another activation would run as SiLU.
            raise ValueError(f"hidden_act={act!r} is not supported for {type(self).__name__}: its gated MLP runs "
                             f"SiLU (supported: 'silu').")
        self.logits_divisor, self.final_logit_soft_cap = variant.logits_divisor, variant.final_logit_soft_cap
        disabled = getattr(getattr(engine_config, "args", None), "disable_sliding_window", False)
        self.model = LlamaModel(hf_config, max_position, variant, getattr(engine_config, "quant_config", None),
                                windows=layer_sliding_windows(hf_config, hf_config.num_hidden_layers, disabled))
        if not self.has_lm_head:
            return
        if not is_last_pp_stage():
            self.lm_head = PPMissingLayer()
            return
        self.lm_head = ParallelLMHead(hf_config.vocab_size, hf_config.hidden_size,
                                      bias=bool(getattr(hf_config, "lm_head_bias", False)),     # PhiMoE's option
                                      quant_config=getattr(engine_config, "quant_config", None), prefix="lm_head")
        # Tied embeddings over several pipeline stages: the last stage holds a copy of the first's embedding as its
        # head (loaded from the embedding's checkpoint tensor, load_weights).
        self._head_from_embedding = getattr(hf_config, "tie_word_embeddings", False) and not is_first_pp_stage()
        if getattr(hf_config, "tie_word_embeddings", False) and is_first_pp_stage():
            self.lm_head.tie_weights(self.model.embed_tokens)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, batch: ForwardBatch,
                intermediate: IntermediateTensors | None = None) -> torch.Tensor | IntermediateTensors:
        return self.model(input_ids, positions, batch, intermediate)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = self.lm_head.compute_logits(hidden)
        if self.logits_divisor != 1.0:
            logits = logits / self.logits_divisor
        if self.final_logit_soft_cap:      # Gemma 2, in HF's order
            logits = torch.tanh(logits / self.final_logit_soft_cap) * self.final_logit_soft_cap
        return logits

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        skip = ("rotary_emb.inv_freq",)
        if getattr(self.config, "tie_word_embeddings", False):
            skip += ("lm_head.weight",)
        rename = {"model.embed_tokens.": "lm_head."} if getattr(self, "_head_from_embedding", False) else None
        experts: set[str] = set()
        if self.moe:          # each expert's tensors into the stacked expert parameters (model/layers/moe.py)
            weights = load_expert_tensors(self, weights, experts)
        return load_packed_weights(self, weights, self.packed_modules_mapping, skip=skip, rename=rename) | experts

    def pp_skipped_checkpoint_prefixes(self) -> tuple[str, ...]:
        """Checkpoint name prefixes this pipeline stage never reads (the loader does not even read them)."""
        prefixes = missing_prefixes(self)
        if getattr(self, "_head_from_embedding", False):
            prefixes = tuple(p for p in prefixes if p != "model.embed_tokens.")
        return prefixes


class InterleavedRotaryForCausalLM(LlamaForCausalLM):
    """A Llama decoder whose checkpoint rotates interleaved pairs ``(x[2i], x[2i+1])`` (GLM, Cohere, ERNIE 4.5): its
    Q / K rows are reordered at load into NeoX halves (weights.interleaved_rotary_to_neox), so every backend and the
    fused rotary decode kernel run it through the one NeoX path. LoRA: an adapter's q_proj / k_proj lora_B rows get
    the same reordering (``lora_module_parts``; lora_A, on the input side, is untouched), so the adapted Q / K are
    the merged model's, reordered alike."""

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        return super().load_weights(interleaved_rotary_to_neox(weights, self.config, type(self).__name__))

    def lora_module_parts(self, module: str, b: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
        """An adapter's module and its lora_B [out, r]: q_proj's / k_proj's rows in the order the checkpoint's rows
        were loaded in (B's rows are the projection's output rows)."""
        [(_, b)] = interleaved_rotary_to_neox([(f"{module}.weight", b)], self.config, type(self).__name__)
        return [(module, b)]


class LlamaForEmbedding(LlamaForCausalLM):
    """The bare decoder as saved by HF's ``LlamaModel`` / ``Qwen3Model`` (decoder embedders such as
    Qwen3-Embedding, e5-mistral): weights without the ``model.`` prefix and no language-model head, so it runs as a
    pooling model only (causal, last-token pooling by default)."""
    has_lm_head = False

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        raise ValueError(f"{type(self).__name__} has no language-model head: it cannot generate text.")

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        renamed = ((name if name.startswith("model.") else "model." + name, tensor)
                   for name, tensor in weights if not name.startswith("lm_head."))
        return load_packed_weights(self, renamed, self.packed_modules_mapping, skip=("rotary_emb.inv_freq",))


class LlamaForSequenceClassification(LlamaForEmbedding):
    """HF's ``LlamaForSequenceClassification`` (reward / classifier / reranker heads on a decoder): the decoder, then
    ``score`` (a linear layer without bias, to ``num_labels`` logits) on the last token's hidden state, which the
    engine's ClassifierPooler hands to ``classify``."""

    def __init__(self, hf_config, engine_config):
        super().__init__(hf_config, engine_config)
        self.score = nn.Linear(hf_config.hidden_size, hf_config.num_labels, bias=False)   # replicated, like BERT's

    def classify(self, pooled: torch.Tensor) -> torch.Tensor:
        """``[B, hidden]`` last-token rows -> ``[B, num_labels]`` logits."""
        return self.score(pooled)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        token_ids = getattr(self.config, "classifier_from_token_ids", None)
        if token_ids is not None:      # a causal LM's checkpoint: the score head from its LM head's rows
            weights = self._score_from_lm_head(weights, token_ids)
        renamed = ((name if name.startswith(("model.", "score.")) else "model." + name, tensor)
                   for name, tensor in weights if not name.startswith("lm_head."))
        return load_packed_weights(self, renamed, self.packed_modules_mapping, skip=("rotary_emb.inv_freq",))

    def _score_from_lm_head(self, weights: Iterable[tuple[str, torch.Tensor]],
                            token_ids: list[int]) -> Iterable[tuple[str, torch.Tensor]]:
        """The checkpoint's tensors, then ``score.weight`` made from the rows of ``token_ids`` in ``lm_head`` (the
        token embeddings when they are tied): the true row minus the false one for ``from_2_way_softmax`` (so the
        one label's sigmoid is softmax over the two tokens' logits), the rows as they are for
        ``no_post_processing`` (vLLM's conversions)."""
        head = embeddings = None
        for name, tensor in weights:
            if name == "lm_head.weight":
                head = tensor
            elif name.endswith("embed_tokens.weight"):
                embeddings = tensor
            yield name, tensor
        head = head if head is not None else embeddings if self.config.tie_word_embeddings else None
        if head is None:
            raise ValueError("classifier_from_token needs the checkpoint's lm_head.weight (or tied token "
                             "embeddings) to build the score head from; this checkpoint has neither.")
        rows = head[token_ids].float()
        if self.config.method == "from_2_way_softmax":
            rows = rows[1:2] - rows[0:1]
        yield "score.weight", rows
