"""ChatGLM2 / ChatGLM3 / GLM-4 (THUDM's ``ChatGLMForConditionalGeneration``, config.json ``model_type`` "chatglm";
the config is read by ``model/hf_configs.py``, so the checkpoint's remote code never runs).

A pre-norm decoder like Llama, with its own names and three differences:
- the rotary embedding turns only the first half of each head's dims, in *interleaved* pairs ``(x[2i], x[2i+1])``,
  base ``10000 * rope_ratio``. Our rotary (torch and Triton) turns NeoX halves ``(x[i], x[i + r/2])``, so the Q and K
  rows of ``query_key_value`` are permuted once at load (each head's first half: even rows, then odd rows). Q and K
  get the same permutation, so every ``q . k`` and hence the attention output is unchanged, and both backends
  rotate through the partial-rotary path they already have (``partial_rotary_factor`` 0.5);
- multi-query attention: ``multi_query_group_num`` KV heads, a bias on the fused QKV projection only
  (``add_qkv_bias``; ``add_bias_linear`` for the other projections);
- ``dense_h_to_4h`` holds gate and up stacked (SwiGLU: ``silu(first half) * second half``), loaded as the two shards
  of our merged gate/up projection.

Tensor parallel comes from those layers: the QKV rows are cut into q / k / v (and reordered) before each rank takes
its heads (KV groups replicated when there are fewer than ranks), ``dense_h_to_4h`` into gate / up before each rank
takes its half of both. Pipeline parallel: the embedding on the first stage, the final norm and ``output_layer`` on
the last, the hidden states and the residual stream between stages.
"""
from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

from pagedllm.attention.forward_batch import ForwardBatch
from pagedllm.distributed import is_first_pp_stage, is_last_pp_stage
from pagedllm.model.hf_configs import reject_unsupported
from pagedllm.model.layers.activation import SiluAndMul
from pagedllm.model.layers.attention import Attention
from pagedllm.model.layers.embedding import ParallelLMHead, VocabParallelEmbedding, with_given_embeds
from pagedllm.model.layers.linear import MergedColumnParallelLinear, QKVParallelLinear, RowParallelLinear
from pagedllm.model.layers.norm import RMSNorm
from pagedllm.model.layers.pipeline import (IntermediateTensors, PPMissingLayer, make_layers, missing_prefixes,
                                             run_stage_layers)
from pagedllm.model.layers.rotary import RotaryEmbedding, neox_heads
from pagedllm.model.models.weights import load_packed_weights


def _check_supported(cfg) -> None:
    # Layouts no released ChatGLM2/3 / GLM-4 checkpoint uses: refused rather than run wrong.
    reject_unsupported("ChatGLM", cfg, {"rmsnorm": True, "apply_residual_connection_post_layernorm": False,
                                        "pre_seq_len": None, "quantization_bit": 0})


class GLMSelfAttention(nn.Module):
    def __init__(self, cfg, layer_idx: int, rotary: RotaryEmbedding):
        super().__init__()
        self.head_dim = cfg.kv_channels
        self.query_key_value = QKVParallelLinear(cfg.hidden_size, self.head_dim, cfg.num_attention_heads,
                                                 cfg.num_key_value_heads, bias=cfg.add_bias_linear or cfg.add_qkv_bias)
        self.dense = RowParallelLinear(cfg.num_attention_heads * self.head_dim, cfg.hidden_size,
                                       bias=cfg.add_bias_linear)
        # This rank's heads (all of them without tensor parallel).
        self.num_heads, self.num_kv_heads = self.query_key_value.num_heads, self.query_key_value.num_kv_heads
        self.rotary = rotary
        self.attn = Attention(self.num_heads, self.head_dim, self.head_dim ** -0.5, self.num_kv_heads, layer_idx)
        self.q_size, self.kv_size = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim

    def forward(self, positions: torch.Tensor, hidden: torch.Tensor, batch: ForwardBatch) -> torch.Tensor:
        lora = batch.lora_step
        q, k, v = self.query_key_value(hidden, lora).split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        return self.dense(self.attn(q, k, v, batch, rotary=self.rotary, positions=positions), lora)


class GLMMLP(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.dense_h_to_4h = MergedColumnParallelLinear(cfg.hidden_size, [cfg.ffn_hidden_size] * 2,
                                                        bias=cfg.add_bias_linear)
        self.dense_4h_to_h = RowParallelLinear(cfg.ffn_hidden_size, cfg.hidden_size, bias=cfg.add_bias_linear)
        self.act = SiluAndMul()

    def forward(self, x: torch.Tensor, lora_step=None) -> torch.Tensor:
        return self.dense_4h_to_h(self.act(self.dense_h_to_4h(x, lora_step)), lora_step)


class GLMBlock(nn.Module):
    def __init__(self, cfg, layer_idx: int, rotary: RotaryEmbedding):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.layernorm_epsilon)
        self.self_attention = GLMSelfAttention(cfg, layer_idx, rotary)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.layernorm_epsilon)
        self.mlp = GLMMLP(cfg)

    def forward(self, positions, hidden, residual, batch):
        if residual is None:
            residual = hidden
            hidden = self.input_layernorm(hidden)
        else:
            hidden, residual = self.input_layernorm(hidden, residual)
        hidden = self.self_attention(positions, hidden, batch)
        hidden, residual = self.post_attention_layernorm(hidden, residual)
        return self.mlp(hidden, batch.lora_step), residual


class GLMTransformer(nn.Module):
    def __init__(self, cfg, rotary: RotaryEmbedding):
        super().__init__()
        self.last_stage = is_last_pp_stage()
        self.start_layer, self.end_layer, self.layers = make_layers(cfg.num_layers,
                                                                    lambda i: GLMBlock(cfg, i, rotary))
        self._stage_layers = list(self.layers)[self.start_layer:self.end_layer]
        if not cfg.post_layer_norm:
            self.final_layernorm = None
        elif self.last_stage:
            self.final_layernorm = RMSNorm(cfg.hidden_size, cfg.layernorm_epsilon)
        else:
            self.final_layernorm = PPMissingLayer()

    def forward(self, positions, hidden, residual, batch):
        norm = self.final_layernorm if self.final_layernorm is not None else (lambda h, r: (h + r, None))
        return run_stage_layers(self._stage_layers, positions, hidden, residual, batch, self.last_stage, norm)


class GLMEmbedding(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.word_embeddings = VocabParallelEmbedding(cfg.padded_vocab_size, cfg.hidden_size)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.word_embeddings(input_ids)


class ChatGLMModel(nn.Module):
    def __init__(self, cfg, max_position: int):
        super().__init__()
        self.first_stage = is_first_pp_stage()
        self.embedding = GLMEmbedding(cfg) if self.first_stage else PPMissingLayer()
        # rope_theta and partial_rotary_factor come from the config class (hf_configs.ChatGLMConfig)
        self.rotary = RotaryEmbedding(cfg, cfg.kv_channels, max_position)
        self.encoder = GLMTransformer(cfg, self.rotary)
        self.output_layer = (ParallelLMHead(cfg.padded_vocab_size, cfg.hidden_size) if is_last_pp_stage()
                             else PPMissingLayer())

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, batch: ForwardBatch,
                intermediate: IntermediateTensors | None = None) -> torch.Tensor | IntermediateTensors:
        if self.first_stage:
            hidden = with_given_embeds(self.embedding(input_ids), batch.input_embeds)
            return self.encoder(positions, hidden, None, batch)
        return self.encoder(positions, intermediate.hidden, intermediate.residual, batch)


class ChatGLMForCausalLM(nn.Module):
    supports_tensor_parallel = True
    supports_pipeline_parallel = True
    # checkpoint name fragment -> (our parameter fragment, shard id); the shards are cut in load_weights
    packed_modules_mapping = {
        "query_key_value_q": ("query_key_value", "q"), "query_key_value_k": ("query_key_value", "k"),
        "query_key_value_v": ("query_key_value", "v"),
        "dense_h_to_4h_gate": ("dense_h_to_4h", 0), "dense_h_to_4h_up": ("dense_h_to_4h", 1),
    }
    # LoRA (vLLM's ChatGLM targets): an adapter's query_key_value and dense_h_to_4h are cut into the shards above as
    # the checkpoint's weights are, its Q / K rows of lora_B reordered for our rotary (lora_module_parts).
    supports_lora = True
    lora_target_modules = ("query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h")
    lora_slot_modules = ("query_key_value_q", "query_key_value_k", "query_key_value_v", "dense",
                         "dense_h_to_4h_gate", "dense_h_to_4h_up", "dense_4h_to_h")

    def __init__(self, hf_config, engine_config):
        super().__init__()
        _check_supported(hf_config)
        self.config = hf_config
        max_position = max(engine_config.max_model_len, getattr(hf_config, "seq_length", 0) or 0)
        self.transformer = ChatGLMModel(hf_config, max_position)
        self._rotary_dim = self.transformer.rotary.rotary_dim

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, batch: ForwardBatch,
                intermediate: IntermediateTensors | None = None) -> torch.Tensor | IntermediateTensors:
        return self.transformer(input_ids, positions, batch, intermediate)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.transformer.output_layer.compute_logits(hidden)

    def _split_checkpoint_tensors(self, weights: Iterable[tuple[str, torch.Tensor]]):
        """The fused checkpoint tensors cut into the shards our fused layers load: ``query_key_value`` into q / k / v
        (q and k rows reordered for our rotary, see the module docstring), ``dense_h_to_4h`` into gate / up."""
        cfg = self.config
        head_dim = cfg.kv_channels
        q_size, kv_size = cfg.num_attention_heads * head_dim, cfg.num_key_value_heads * head_dim
        for name, tensor in weights:
            if ".query_key_value." in name:
                q, k, v = tensor.split([q_size, kv_size, kv_size], dim=0)
                for shard, part in (("q", q), ("k", k)):
                    yield (name.replace(".query_key_value.", f".query_key_value_{shard}."),
                           neox_heads(part, head_dim, self._rotary_dim))
                yield name.replace(".query_key_value.", ".query_key_value_v."), v
            elif ".dense_h_to_4h." in name:
                gate, up = tensor.chunk(2, dim=0)
                yield name.replace(".dense_h_to_4h.", ".dense_h_to_4h_gate."), gate
                yield name.replace(".dense_h_to_4h.", ".dense_h_to_4h_up."), up
            else:
                yield name, tensor

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        # rotary_pos_emb.inv_freq: a buffer saved in the .bin checkpoints; we compute our own tables
        return load_packed_weights(self, self._split_checkpoint_tensors(weights), self.packed_modules_mapping,
                                   skip=("rotary_pos_emb.inv_freq",))

    def lora_module_parts(self, module: str, b: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
        """An adapter's module (the checkpoint's name) and its lora_B [out, r] -> our modules and their rows of B,
        cut and reordered as the checkpoint's weights (lora_A, on the input side, is shared by the parts)."""
        return [(name.removesuffix(".weight"), rows)
                for name, rows in self._split_checkpoint_tensors([(f"{module}.weight", b)])]

    def pp_skipped_checkpoint_prefixes(self) -> tuple[str, ...]:
        """Checkpoint name prefixes this pipeline stage never reads (the checkpoint's names are the modules')."""
        return missing_prefixes(self)
