"""OPT decoder (facebook/opt-125m ... 66b).

Differences from Llama: learned absolute position embeddings (indices offset by 2, a fairseq leftover), LayerNorm
with bias, ReLU MLP (fc1/fc2), biased q/k/v/out projections, and two layouts: pre-LayerNorm (most sizes) or
post-LayerNorm (350m, which also projects the embeddings in and out of a smaller ``word_embed_proj_dim``).

Pipeline parallel: the embeddings (and ``project_in``) on the first stage, the final LayerNorm, ``project_out`` and the
LM head on the last; a layer's residual is added inside it, so only the hidden states travel between stages.
LoRA: adapters of q/k/v_proj, out_proj, fc1 and fc2 (PEFT's names for HF's OPT are ours).
"""
from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

from pagedllm.attention.forward_batch import ForwardBatch
from pagedllm.distributed import is_first_pp_stage, is_last_pp_stage
from pagedllm.model.layers.activation import activation_fn
from pagedllm.model.layers.attention import Attention
from pagedllm.model.layers.embedding import ParallelLMHead, VocabParallelEmbedding, with_given_embeds
from pagedllm.model.layers.linear import (ColumnParallelLinear, QKVParallelLinear, ReplicatedLinear,
                                          RowParallelLinear)
from pagedllm.model.layers.norm import LayerNorm
from pagedllm.model.layers.pipeline import IntermediateTensors, PPMissingLayer, make_layers, missing_prefixes
from pagedllm.model.models.weights import load_packed_weights

# OPT's learned position table has 2 extra leading rows; position p reads row p + 2.
POSITION_OFFSET = 2


def _activation(name: str):
    return activation_fn(name, "OPT activation_function")


def _layer_norm(cfg, size: int) -> nn.Module:
    eps = getattr(cfg, "layer_norm_eps", 1e-5)       # OPT's is fixed at 1e-5; GPT-2 says its own
    if getattr(cfg, "layer_norm_elementwise_affine", True):
        return LayerNorm(size, eps=eps)
    return nn.LayerNorm(size, eps=eps, elementwise_affine=False)


class OPTAttention(nn.Module):
    def __init__(self, cfg, layer_idx: int):
        super().__init__()
        self.num_heads = cfg.num_attention_heads
        self.head_dim = cfg.hidden_size // self.num_heads
        bias = getattr(cfg, "enable_bias", True)
        self.qkv_proj = QKVParallelLinear(cfg.hidden_size, self.head_dim, self.num_heads, self.num_heads, bias=bias)
        self.out_proj = RowParallelLinear(cfg.hidden_size, cfg.hidden_size, bias=bias)
        # HF OPT multiplies q by head_dim**-0.5 right after the projection and attends with scale 1; doing the same
        # keeps the fp32 rounding identical (greedy parity with transformers).
        self.scaling = self.head_dim ** -0.5
        # Tensor parallel: this rank's heads (OPT has no GQA: as many KV heads as query heads).
        self.attn = Attention(self.qkv_proj.num_heads, self.head_dim, 1.0, self.qkv_proj.num_kv_heads, layer_idx)

    def forward(self, hidden: torch.Tensor, batch: ForwardBatch) -> torch.Tensor:
        q, k, v = self.qkv_proj(hidden, batch.lora_step).chunk(3, dim=-1)
        return self.out_proj(self.attn(q * self.scaling, k, v, batch), batch.lora_step)


class OPTDecoderLayer(nn.Module):
    def __init__(self, cfg, layer_idx: int):
        super().__init__()
        self.do_layer_norm_before = cfg.do_layer_norm_before
        bias = getattr(cfg, "enable_bias", True)
        self.self_attn = OPTAttention(cfg, layer_idx)
        self.self_attn_layer_norm = _layer_norm(cfg, cfg.hidden_size)
        self.fc1 = ColumnParallelLinear(cfg.hidden_size, cfg.ffn_dim, bias=bias)
        self.fc2 = RowParallelLinear(cfg.ffn_dim, cfg.hidden_size, bias=bias)
        self.final_layer_norm = _layer_norm(cfg, cfg.hidden_size)
        self.act = _activation(getattr(cfg, "activation_function", "relu"))

    def forward(self, hidden: torch.Tensor, batch: ForwardBatch) -> torch.Tensor:
        residual = hidden
        if self.do_layer_norm_before:
            hidden = self.self_attn_layer_norm(hidden)
        hidden = residual + self.self_attn(hidden, batch)
        if not self.do_layer_norm_before:
            hidden = self.self_attn_layer_norm(hidden)

        residual = hidden
        if self.do_layer_norm_before:
            hidden = self.final_layer_norm(hidden)
        hidden = residual + self.fc2(self.act(self.fc1(hidden, batch.lora_step)), batch.lora_step)
        if not self.do_layer_norm_before:
            hidden = self.final_layer_norm(hidden)
        return hidden


class OPTDecoder(nn.Module):
    def __init__(self, cfg, position_offset: int = POSITION_OFFSET):
        super().__init__()
        self.position_offset = position_offset
        self.first_stage, self.last_stage = is_first_pp_stage(), is_last_pp_stage()

        def first(make):     # a module of the first pipeline stage (a placeholder on the others)
            return make() if self.first_stage else PPMissingLayer()

        def last(make):
            return make() if self.last_stage else PPMissingLayer()

        proj_dim = getattr(cfg, "word_embed_proj_dim", None) or cfg.hidden_size
        self.embed_tokens = first(lambda: VocabParallelEmbedding(cfg.vocab_size, proj_dim))
        # Replicated on every tensor-parallel rank (as vLLM's OPTLearnedPositionalEmbedding): 2050 rows do not
        # split evenly over most rank counts, and every position's row is needed on every rank.
        self.embed_positions = first(lambda: nn.Embedding(cfg.max_position_embeddings + position_offset,
                                                          cfg.hidden_size))
        if self.first_stage:
            self.embed_positions.weight.requires_grad_(False)
        if proj_dim != cfg.hidden_size:   # opt-350m: 512-wide embeddings, 1024-wide layers
            self.project_in = first(lambda: ReplicatedLinear(proj_dim, cfg.hidden_size, bias=False))
            self.project_out = last(lambda: ReplicatedLinear(cfg.hidden_size, proj_dim, bias=False))
        else:
            self.project_in = self.project_out = None
        # ``_remove_final_layer_norm`` only exists for checkpoints fine-tuned before transformers 4.20.1.
        if cfg.do_layer_norm_before and not getattr(cfg, "_remove_final_layer_norm", False):
            self.final_layer_norm = last(lambda: _layer_norm(cfg, cfg.hidden_size))
        else:
            self.final_layer_norm = None
        self.start_layer, self.end_layer, self.layers = make_layers(
            cfg.num_hidden_layers, lambda i: OPTDecoderLayer(cfg, i))
        self._stage_layers = list(self.layers)[self.start_layer:self.end_layer]

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, batch: ForwardBatch,
                intermediate: IntermediateTensors | None = None) -> torch.Tensor | IntermediateTensors:
        if self.first_stage:
            hidden = with_given_embeds(self.embed_tokens(input_ids), batch.input_embeds)
            if self.project_in is not None:
                hidden = self.project_in(hidden)
            hidden = hidden + self.embed_positions(positions + self.position_offset)
        else:
            hidden = intermediate.hidden
        for layer in self._stage_layers:
            hidden = layer(hidden, batch)
        if not self.last_stage:
            return IntermediateTensors(hidden, None)
        if self.final_layer_norm is not None:
            hidden = self.final_layer_norm(hidden)
        if self.project_out is not None:
            hidden = self.project_out(hidden)
        return hidden


class OPTModel(nn.Module):
    def __init__(self, cfg, position_offset: int = POSITION_OFFSET):
        super().__init__()
        self.decoder = OPTDecoder(cfg, position_offset)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, batch: ForwardBatch,
                intermediate: IntermediateTensors | None = None) -> torch.Tensor | IntermediateTensors:
        return self.decoder(input_ids, positions, batch, intermediate)


class OPTForCausalLM(nn.Module):
    supports_tensor_parallel = True
    supports_pipeline_parallel = True
    supports_lora = True
    lora_target_modules = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")
    packed_modules_mapping = {"q_proj": ("qkv_proj", "q"), "k_proj": ("qkv_proj", "k"), "v_proj": ("qkv_proj", "v")}

    position_offset = POSITION_OFFSET

    def __init__(self, hf_config, engine_config):
        super().__init__()
        self.config = hf_config
        self.model = OPTModel(self.decoder_config(hf_config), self.position_offset)
        self.tied = getattr(hf_config, "tie_word_embeddings", True)
        # Tied over several pipeline stages: the last stage's head is a copy, loaded from the embedding's tensor.
        self._head_from_embedding = self.tied and not is_first_pp_stage()
        if not is_last_pp_stage():
            self.lm_head = PPMissingLayer()
            return
        proj_dim = getattr(hf_config, "word_embed_proj_dim", None) or hf_config.hidden_size
        self.lm_head = ParallelLMHead(hf_config.vocab_size, proj_dim)
        if self.tied and not self._head_from_embedding:
            self.lm_head.tie_weights(self.model.decoder.embed_tokens)

    @staticmethod
    def decoder_config(hf_config):
        """The config the decoder reads (GPT-2 maps its own onto OPT's names)."""
        return hf_config

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, batch: ForwardBatch,
                intermediate: IntermediateTensors | None = None) -> torch.Tensor | IntermediateTensors:
        return self.model(input_ids, positions, batch, intermediate)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head.compute_logits(hidden)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        skip = ("lm_head.weight",) if self.tied else ()

        def with_prefix(items):
            # HF checkpoints say "model.decoder.*"; the original metaseq conversions say "decoder.*".
            for name, tensor in items:
                yield (f"model.{name}" if name.startswith("decoder.") else name), tensor

        rename = {"model.decoder.embed_tokens.": "lm_head."} if self._head_from_embedding else None
        return load_packed_weights(self, with_prefix(weights), self.packed_modules_mapping, skip=skip, rename=rename)

    def pp_skipped_checkpoint_prefixes(self) -> tuple[str, ...]:
        """Checkpoint name prefixes this pipeline stage never reads, in HF's naming and metaseq's (no ``model.``)."""
        prefixes = missing_prefixes(self)
        if self._head_from_embedding:
            prefixes = tuple(p for p in prefixes if p != "model.decoder.embed_tokens.")
        return prefixes + tuple(p[len("model."):] for p in prefixes if p.startswith("model.decoder."))
