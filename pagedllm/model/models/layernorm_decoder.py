"""The classic LayerNorm decoders: GPT-NeoX (Pythia), Phi-1 / 1.5 / 2, StableLM, Starcoder2, GPTBigCode (StarCoder,
SantaCoder) and Falcon. Each family's file maps its config onto ``LayerNormDecoderConfig`` and its checkpoint names
onto this module's; the differences from Llama are the switches below:

- LayerNorm (with bias; StableLM 2's, Falcon's, ... all have one) instead of RMSNorm, no fused residual add;
- rotary positions over part of each head (``partial_rotary_factor`` of the HF config: our rotary tables and the
  Triton kernels, fused decode included, rotate the first ``rotary_dim`` dims and pass the rest), or learned absolute
  positions (GPTBigCode);
- the residual: sequential (``x + attn(ln1(x))``, then ``+ mlp(ln2(.))``), parallel with two norms
  (``x + attn(ln1(x)) + mlp(ln2(x))``: GPT-NeoX, Falcon's new decoder architecture) or parallel with one norm
  (``x + attn(ln(x)) + mlp(ln(x))``: Phi, Falcon-7B, StableLM with use_parallel_residual);
- a plain MLP ``fc2(act(fc1(x)))`` with a GELU / ReLU (not the gate_up SiLU epilogue: nothing gated to fuse), or
  Llama's gated SiLU MLP (StableLM: its fused epilogue, PAGEDLLM_GATE_UP_SILU, applies);
- biases where the family has them, Q/K LayerNorms (Phi's one per projection, StableLM's one per head), a biased
  LM head (Phi).

A checkpoint's fused QKV tensor is cut into q / k / v at load (``split_fused_qkv``: per head, per KV group or
contiguous), so the packed QKV layer takes each rank's heads under tensor parallel (KV heads replicated when there
are fewer than ranks). Pipeline parallel: the embeddings on the first stage, the final norm and the LM head on the
last (a tied head: the last stage's copy of the embedding), a layer's residual added inside it, so only the hidden
states travel between stages. No quantization yet (refused at load by the registry's checks).

LoRA: adapters as PEFT saves them for the HF model name the checkpoint's modules (each family's
``lora_target_modules``: GPT-NeoX's query_key_value / dense / dense_h_to_4h / dense_4h_to_h, Phi's q/k/v_proj /
dense / fc1 / fc2, ...); ``lora_module_parts`` renames them as the checkpoint's tensors are and cuts a fused QKV's
lora_B rows as its weight's (lora_A, on the input side, is shared by the parts), so the adapter lands on our
q/k/v, o_proj and fc1 / fc2 (or gate/up/down) layers.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable

import torch
from torch import nn

from pagedllm.attention.forward_batch import ForwardBatch
from pagedllm.config import layer_sliding_windows
from pagedllm.distributed import get_pp_layer_range, is_first_pp_stage, is_last_pp_stage
from pagedllm.model.layers.activation import activation_fn
from pagedllm.model.layers.attention import Attention
from pagedllm.model.layers.embedding import ParallelLMHead, VocabParallelEmbedding, with_given_embeds
from pagedllm.model.layers.linear import ColumnParallelLinear, QKVParallelLinear, RowParallelLinear
from pagedllm.model.layers.norm import HeadLayerNorm, LayerNorm
from pagedllm.model.layers.pipeline import IntermediateTensors, PPMissingLayer, make_layers, missing_prefixes
from pagedllm.model.layers.rotary import RotaryEmbedding
from pagedllm.model.models.llama import LlamaMLP
from pagedllm.model.models.weights import load_packed_weights

SEQUENTIAL, PARALLEL, PARALLEL_ONE_NORM = "sequential", "parallel", "parallel_one_norm"


@dataclass(frozen=True)
class LayerNormDecoderConfig:
    """What a LayerNorm decoder family sets (each family's ``decoder_config`` builds it from its HF config)."""
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    vocab_size: int
    intermediate_size: int
    eps: float
    activation: str                 # the plain MLP's HF activation name, or "silu_gated" (Llama's gate/up/down MLP)
    residual: str                   # SEQUENTIAL, PARALLEL (two norms) or PARALLEL_ONE_NORM
    qkv_bias: bool
    out_bias: bool
    mlp_bias: bool
    tie_word_embeddings: bool
    max_position_embeddings: int
    learned_positions: bool = False     # an absolute position table (GPTBigCode) instead of rotary
    qk_norm: str | None = None          # "shared": one LayerNorm(head_dim) for all heads (Phi); "per_head" (StableLM)
    lm_head_bias: bool = False
    attention_scale: float | None = None    # None: head_dim ** -0.5

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads


def split_fused_qkv(tensor: torch.Tensor, layout: str, num_heads: int, num_kv_heads: int,
                    head_dim: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A checkpoint's fused QKV weight ``[rows, in]`` (or bias ``[rows]``) cut into its q, k and v rows:
    - "per_head": ``[H, 3, D]``, each head's q, k and v together (GPT-NeoX; Falcon and GPTBigCode without MQA);
    - "grouped": ``[Hkv, H / Hkv + 2, D]``, each KV group's queries then its key and value (Falcon's new decoder
      architecture);
    - "contiguous": ``[H * D | Hkv * D | Hkv * D]`` (multi-query Falcon-7B and GPTBigCode)."""
    rest = tensor.shape[1:]
    if layout == "per_head":
        q, k, v = tensor.reshape(num_heads, 3, head_dim, *rest).unbind(1)
    elif layout == "grouped":
        grouped = tensor.reshape(num_kv_heads, num_heads // num_kv_heads + 2, head_dim, *rest)
        q, k, v = grouped[:, :-2], grouped[:, -2], grouped[:, -1]
    elif layout == "contiguous":
        q, k, v = tensor.split([num_heads * head_dim, num_kv_heads * head_dim, num_kv_heads * head_dim])
    else:
        raise AssertionError(layout)
    return q.reshape(-1, *rest), k.reshape(-1, *rest), v.reshape(-1, *rest)


class LayerNormAttention(nn.Module):
    def __init__(self, cfg: LayerNormDecoderConfig, layer_idx: int, rotary: RotaryEmbedding | None, window: int):
        super().__init__()
        head_dim = self.head_dim = cfg.head_dim
        self.qkv_proj = QKVParallelLinear(cfg.hidden_size, head_dim, cfg.num_heads, cfg.num_kv_heads,
                                          bias=cfg.qkv_bias)
        self.o_proj = RowParallelLinear(cfg.num_heads * head_dim, cfg.hidden_size, bias=cfg.out_bias)
        # This rank's heads (all of them without tensor parallel).
        self.num_heads, self.num_kv_heads = self.qkv_proj.num_heads, self.qkv_proj.num_kv_heads
        self.q_size, self.kv_size = self.num_heads * head_dim, self.num_kv_heads * head_dim
        self.qk_norm = cfg.qk_norm
        if cfg.qk_norm == "shared":
            self.q_norm, self.k_norm = LayerNorm(head_dim, cfg.eps), LayerNorm(head_dim, cfg.eps)
        elif cfg.qk_norm == "per_head":
            self.q_norm = HeadLayerNorm(self.num_heads, head_dim, cfg.eps, self.qkv_proj.tp_rank * self.num_heads)
            self.k_norm = HeadLayerNorm(self.num_kv_heads, head_dim, cfg.eps, self.qkv_proj.kv_head_start)
        self.rotary = rotary
        scale = head_dim ** -0.5 if cfg.attention_scale is None else cfg.attention_scale
        self.attn = Attention(self.num_heads, head_dim, scale, self.num_kv_heads, layer_idx, sliding_window=window)

    def forward(self, positions: torch.Tensor, hidden: torch.Tensor, batch: ForwardBatch) -> torch.Tensor:
        qkv = self.qkv_proj(hidden, batch.lora_step)
        q, k, v = qkv.split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        if self.qk_norm:
            q = self.q_norm(q.reshape(-1, self.num_heads, self.head_dim))
            k = self.k_norm(k.reshape(-1, self.num_kv_heads, self.head_dim))
        return self.o_proj(self.attn(q, k, v, batch, rotary=self.rotary, positions=positions), batch.lora_step)


class PlainMLP(nn.Module):
    """``fc2(act(fc1(x)))`` (GELU or ReLU; eager activation on every device)."""

    def __init__(self, cfg: LayerNormDecoderConfig, family: str):
        super().__init__()
        self.fc1 = ColumnParallelLinear(cfg.hidden_size, cfg.intermediate_size, bias=cfg.mlp_bias)
        self.fc2 = RowParallelLinear(cfg.intermediate_size, cfg.hidden_size, bias=cfg.mlp_bias)
        self.act = activation_fn(cfg.activation, f"{family} activation")

    def forward(self, x: torch.Tensor, lora_step=None) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x, lora_step)), lora_step)


class LayerNormDecoderLayer(nn.Module):
    def __init__(self, cfg: LayerNormDecoderConfig, layer_idx: int, rotary: RotaryEmbedding | None, window: int,
                 family: str):
        super().__init__()
        self.residual = cfg.residual
        self.input_layernorm = LayerNorm(cfg.hidden_size, cfg.eps)
        if cfg.residual != PARALLEL_ONE_NORM:
            self.post_attention_layernorm = LayerNorm(cfg.hidden_size, cfg.eps)
        self.self_attn = LayerNormAttention(cfg, layer_idx, rotary, window)
        self.mlp = LlamaMLP(cfg) if cfg.activation == "silu_gated" else PlainMLP(cfg, family)

    def forward(self, positions: torch.Tensor, hidden: torch.Tensor, batch: ForwardBatch) -> torch.Tensor:
        normed = self.input_layernorm(hidden)
        attn = self.self_attn(positions, normed, batch)
        if self.residual == SEQUENTIAL:
            hidden = hidden + attn
            return hidden + self.mlp(self.post_attention_layernorm(hidden), batch.lora_step)
        mlp_in = normed if self.residual == PARALLEL_ONE_NORM else self.post_attention_layernorm(hidden)
        return hidden + attn + self.mlp(mlp_in, batch.lora_step)


class LayerNormDecoderModel(nn.Module):
    def __init__(self, cfg: LayerNormDecoderConfig, hf_config, max_position: int, windows: list[int], family: str):
        super().__init__()
        self.first_stage, self.last_stage = is_first_pp_stage(), is_last_pp_stage()
        self.embed_tokens = (VocabParallelEmbedding(cfg.vocab_size, cfg.hidden_size) if self.first_stage
                             else PPMissingLayer())
        self.embed_positions = None
        if cfg.learned_positions and self.first_stage:
            # Replicated on every tensor-parallel rank (as OPT's): every position's row is needed on every rank.
            self.embed_positions = nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size)
            self.embed_positions.weight.requires_grad_(False)
        elif cfg.learned_positions:
            self.embed_positions = PPMissingLayer()
        # The rope theta, scaling and partial_rotary_factor come from the HF config (rotary.py reads them).
        rotary = None if cfg.learned_positions else RotaryEmbedding(hf_config, cfg.head_dim, max_position)
        # make_layers numbers a stage's layers from 0 (its KV cache); the windows are the whole model's.
        start = get_pp_layer_range(cfg.num_layers)[0]
        self.start_layer, self.end_layer, self.layers = make_layers(
            cfg.num_layers, lambda i: LayerNormDecoderLayer(cfg, i, rotary, windows[start + i], family))
        self._stage_layers = list(self.layers)[self.start_layer:self.end_layer]
        self.norm = LayerNorm(cfg.hidden_size, cfg.eps) if self.last_stage else PPMissingLayer()

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, batch: ForwardBatch,
                intermediate: IntermediateTensors | None = None) -> torch.Tensor | IntermediateTensors:
        if self.first_stage:
            hidden = with_given_embeds(self.embed_tokens(input_ids), batch.input_embeds)
            if self.embed_positions is not None:
                hidden = hidden + self.embed_positions(positions)
        else:
            hidden = intermediate.hidden
        for layer in self._stage_layers:
            hidden = layer(positions, hidden, batch)
        if not self.last_stage:
            return IntermediateTensors(hidden, None)
        return self.norm(hidden)


class LayerNormDecoderForCausalLM(nn.Module):
    """The base of each family's class: ``decoder_config`` maps its HF config, ``checkpoint_renames`` its tensor
    names (regex, replacement; each applied in turn), ``fused_qkv`` names its fused QKV tensor and
    ``qkv_layout(hf_config)`` says how that tensor is laid out (split_fused_qkv); ``ignored`` matches buffers some
    checkpoints carry (causal masks, rotary frequencies)."""
    family = "LayerNorm decoder"
    supports_tensor_parallel = True
    supports_pipeline_parallel = True
    supports_lora = True
    lora_target_modules: tuple[str, ...] = ()    # the checkpoint's projection names an adapter may target
    packed_modules_mapping = {
        "q_proj": ("qkv_proj", "q"), "k_proj": ("qkv_proj", "k"), "v_proj": ("qkv_proj", "v"),
        "gate_proj": ("gate_up_proj", 0), "up_proj": ("gate_up_proj", 1),
    }
    checkpoint_renames: tuple[tuple[str, str], ...] = ()
    fused_qkv: str | None = None           # the fused tensor's module name (after the renames), e.g. "self_attn.qkv"
    ignored = re.compile(r".*(\.attn\.(masked_)?bias|\.attention\.(masked_)?bias|rotary_emb\.inv_freq)$")

    @classmethod
    def decoder_config(cls, hf_config) -> LayerNormDecoderConfig:
        raise NotImplementedError

    @classmethod
    def qkv_layout(cls, hf_config) -> str:
        return "per_head"

    def __init__(self, hf_config, engine_config):
        super().__init__()
        self.config = hf_config
        cfg = self.cfg = self.decoder_config(hf_config)
        max_position = max(engine_config.max_model_len, cfg.max_position_embeddings)
        disabled = getattr(getattr(engine_config, "args", None), "disable_sliding_window", False)
        self.model = LayerNormDecoderModel(cfg, hf_config, max_position,
                                           layer_sliding_windows(hf_config, cfg.num_layers, disabled), self.family)
        # Tied over several pipeline stages: the last stage's head is a copy, loaded from the embedding's tensor.
        self._head_from_embedding = cfg.tie_word_embeddings and not is_first_pp_stage()
        if not is_last_pp_stage():
            self.lm_head = PPMissingLayer()
            return
        self.lm_head = ParallelLMHead(cfg.vocab_size, cfg.hidden_size, bias=cfg.lm_head_bias)
        if cfg.tie_word_embeddings and not self._head_from_embedding:
            self.lm_head.tie_weights(self.model.embed_tokens)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, batch: ForwardBatch,
                intermediate: IntermediateTensors | None = None) -> torch.Tensor | IntermediateTensors:
        return self.model(input_ids, positions, batch, intermediate)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head.compute_logits(hidden)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        skip = ("lm_head.weight",) if self.cfg.tie_word_embeddings else ()
        rename = {"model.embed_tokens.": "lm_head."} if self._head_from_embedding else None
        return load_packed_weights(self, self._our_names(weights), self.packed_modules_mapping, skip=skip,
                                   rename=rename)

    def lora_module_parts(self, module: str, b: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
        """An adapter's module (the checkpoint's name) and its lora_B [out, r] -> our modules and their rows of B:
        renamed as the checkpoint's tensors, a fused QKV's B cut into q / k / v rows as its weight is; none for the
        modules another pipeline stage holds (which loads them; pp_skipped_checkpoint_prefixes, in the checkpoint's
        names, cannot say which)."""
        elsewhere = missing_prefixes(self)
        return [(name.removesuffix(".weight"), rows) for name, rows in self._our_names([(f"{module}.weight", b)])
                if not (elsewhere and name.startswith(elsewhere))]

    def pp_skipped_checkpoint_prefixes(self) -> tuple[str, ...]:
        """Checkpoint name prefixes this pipeline stage never reads: none, as the families' checkpoint names are not
        ours (renamed on the way in); every stage reads each tensor and load_packed_weights drops those of modules
        another stage holds, after the renames."""
        return ()

    def _our_names(self, weights: Iterable[tuple[str, torch.Tensor]]) -> Iterable[tuple[str, torch.Tensor]]:
        cfg = self.cfg
        renames = [(re.compile(pattern), new) for pattern, new in self.checkpoint_renames]
        layout = self.qkv_layout(self.config)
        for name, tensor in weights:
            if self.ignored.fullmatch(name):
                continue
            for pattern, new in renames:
                name = pattern.sub(new, name)
            if self.fused_qkv is not None and f".{self.fused_qkv}." in name:
                parts = split_fused_qkv(tensor, layout, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim)
                for part, piece in zip(("q_proj", "k_proj", "v_proj"), parts):
                    yield name.replace(f".{self.fused_qkv}.", f".self_attn.{part}."), piece
                continue
            yield name, tensor          # our name already, or unknown: the loader names it
