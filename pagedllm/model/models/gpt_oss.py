"""OpenAI's gpt-oss (gpt-oss-20b, gpt-oss-120b: ``GptOssForCausalLM``) on the Llama decoder.

What it adds to Llama, each checked against HF transformers' ``modeling_gpt_oss.py``:
* attention sinks: a learned logit per query head (``self_attn.sinks``) that joins every softmax's denominator and
  nothing else, run by the attention backend (``supports_attention_sinks``: torch and triton);
* every other layer attends through a sliding window (``layer_types`` / ``sliding_window``, 128), GQA, biases on
  Q/K/V/O, YaRN rotary (transformers' own ``ROPE_INIT_FUNCTIONS``; its attention factor scales cos and sin as HF's);
* a MoE MLP in every layer: a router with a bias, the top-k of its logits softmaxed among themselves, experts with
  biases and a clamped SwiGLU, ``(clamp(up, -l, l) + 1) * g * sigmoid(alpha * g)`` with ``g = min(gate, l)``.

Checkpoints hold each layer's experts as stacked tensors: ``mlp.experts.gate_up_proj`` ``[E, H, 2I]`` (the input
dim first, gate and up columns interleaved: gate at even columns, up at odd), ``gate_up_proj_bias`` ``[E, 2I]``
(interleaved alike), ``down_proj`` ``[E, I, H]``, ``down_proj_bias`` ``[E, H]``. The published ones store
``gate_up_proj`` / ``down_proj`` in MXFP4 (``*_blocks`` + ``*_scales``, output dim first: ``[E, 2I, H / 32, 16]``,
``[E, H, I / 32, 16]``; model/quantization/mxfp4.py): kept MXFP4 on CUDA (the fused kernels unpack them), dequantized
here to the model dtype as they are read on the CPU. Both go into the usual stacked experts (``w13`` gate rows then up
rows, ``w2``; model/layers/moe.py), in the model dtype or as MXFP4 bytes and scales.
"""
from __future__ import annotations

import logging
from typing import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from pagedllm.config import num_experts
from pagedllm.distributed import tp_all_reduce
from pagedllm.model.layers.moe import MoEExperts
from pagedllm.model.models.llama import LlamaForCausalLM, LlamaVariant
from pagedllm.model.models.weights import load_packed_weights
from pagedllm.model.quantization.mxfp4 import dequantize_mxfp4

logger = logging.getLogger(__name__)


def clamped_swiglu(gate: torch.Tensor, up: torch.Tensor, alpha: float, limit: float) -> torch.Tensor:
    """gpt-oss's expert activation, in HF's order of operations."""
    gate = gate.clamp(max=limit)
    up = up.clamp(min=-limit, max=limit)
    return (up + 1) * (gate * torch.sigmoid(gate * alpha))


class GptOssExperts(MoEExperts):
    """The stacked experts (``w13``, ``w2``, this rank's slice of the intermediate dim) plus their biases ``b13``
    ``[E, 2 * I]`` (gate then up, as ``w13``'s rows) and ``b2`` ``[E, H]`` (held by tensor-parallel rank 0 only:
    the ranks' partial sums are added once), and the clamped SwiGLU."""

    def __init__(self, num_experts: int, hidden_size: int, intermediate_size: int, alpha: float, limit: float,
                 quant_config=None, prefix: str = ""):
        super().__init__(num_experts, hidden_size, intermediate_size, quant_config, prefix)
        dtype = torch.get_default_dtype()
        self.b13 = nn.Parameter(torch.zeros(num_experts, 2 * self.shard, dtype=dtype), requires_grad=False)
        self.b2 = nn.Parameter(torch.zeros(num_experts, hidden_size, dtype=dtype), requires_grad=False)
        self.alpha, self.limit = alpha, limit

    def load_bias(self, part: str, bias: torch.Tensor) -> None:
        """All experts' ``gate`` / ``up`` ``[E, I]`` or ``down`` ``[E, H]`` bias: this rank's slice."""
        with torch.no_grad():
            if part == "down":
                self.b2.data.copy_(bias if self.tp_rank == 0 else torch.zeros_like(bias))
            else:
                row = 0 if part == "gate" else self.shard
                self.b13.data[:, row:row + self.shard].copy_(bias[:, self.tp_rank * self.shard:
                                                                  (self.tp_rank + 1) * self.shard])

    def fused(self, x: torch.Tensor, top_ids: torch.Tensor, top_weights: torch.Tensor) -> torch.Tensor:
        from pagedllm.kernels.triton_moe import fused_moe
        return fused_moe(x, top_ids=top_ids, top_weights=top_weights, w13_bias=self.b13, w2_bias=self.b2,
                         swiglu_limits=(self.alpha, self.limit), **self.kernel_weights())

    def expert_loop(self, x: torch.Tensor, top_ids: torch.Tensor, top_weights: torch.Tensor) -> torch.Tensor:
        """HF's loop (the CPU path, the fused kernels' reference): one expert at a time over its tokens (MXFP4 experts
        kept as such, a test's CPU setting: each dequantized as it runs)."""
        out = torch.zeros_like(x)
        for e in top_ids.unique().tolist():          # ascending, as HF visits them
            tokens, slots = (top_ids == e).nonzero(as_tuple=True)
            w13, w2 = (self.quant_method.dequantized(self, e, x.dtype) if self.quant_method is not None
                       else (self.w13[e], self.w2[e]))
            gate, up = F.linear(x[tokens], w13, self.b13[e]).chunk(2, dim=-1)
            h = F.linear(clamped_swiglu(gate, up, self.alpha, self.limit), w2, self.b2[e])
            out.index_add_(0, tokens, (h * top_weights[tokens, slots, None]).to(out.dtype))
        return out


class GptOssMoeBlock(nn.Module):
    """Router (with a bias; the top-k logits softmaxed among themselves, in the logits' dtype, as HF) + experts."""

    def __init__(self, hf_config, quant_config=None, prefix: str = ""):
        super().__init__()
        n = num_experts(hf_config)
        self.top_k = hf_config.num_experts_per_tok
        self.router = nn.Linear(hf_config.hidden_size, n, bias=True)       # replicated
        self.router.requires_grad_(False)
        self.experts = GptOssExperts(n, hf_config.hidden_size, hf_config.intermediate_size,
                                     float(getattr(hf_config, "swiglu_alpha", 1.702)),
                                     float(getattr(hf_config, "swiglu_limit", 7.0)), quant_config,
                                     f"{prefix}.experts")

    def forward(self, x: torch.Tensor, lora_step=None) -> torch.Tensor:
        logits = self.router(x)
        top_logits, top_ids = torch.topk(logits, self.top_k, dim=-1)
        top_weights = torch.softmax(top_logits, dim=-1, dtype=top_logits.dtype)
        out = self.experts(x, top_ids, top_weights)
        return tp_all_reduce(out) if self.experts.tp_size > 1 else out


# The checkpoint's stacked expert weights (HF's layout; MXFP4 ones carry _blocks / _scales)
_STACKED = ("gate_up_proj", "down_proj")


class GptOssForCausalLM(LlamaForCausalLM):
    attention_sinks = True          # the model runner asks the backend for supports_attention_sinks
    supports_quantization = ("mxfp4",)
    supports_lora = True            # the attention's q/k/v/o (the experts take none yet, as the other MoE models')
    supports_pipeline_parallel = True

    @classmethod
    def variant(cls, hf_config) -> LlamaVariant:
        if getattr(hf_config, "hidden_act", "silu") != "silu":
            raise ValueError(f"gpt-oss with hidden_act={hf_config.hidden_act!r}: its experts' activation is the "
                             f"clamped SwiGLU (swiglu_alpha / swiglu_limit), which HF's model uses whatever it says; "
                             f"pagedllm takes the config's 'silu' only.")
        return LlamaVariant(qkv_bias=bool(getattr(hf_config, "attention_bias", True)), attention_sinks=True,
                            moe_block=GptOssMoeBlock)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        experts_loaded: set[str] = set()
        rest = self._load_experts(weights, experts_loaded)
        skip = ("rotary_emb.inv_freq",) + (("lm_head.weight",) if self.config.tie_word_embeddings else ())
        return load_packed_weights(self, rest, self.packed_modules_mapping, skip=skip) | experts_loaded

    def _load_experts(self, weights: Iterable[tuple[str, torch.Tensor]],
                      loaded: set[str]) -> Iterable[tuple[str, torch.Tensor]]:
        """The checkpoint's tensors, the experts' loaded into their ``GptOssExperts`` on the way (MXFP4 pairs kept
        as such by experts that hold MXFP4, else dequantized once both halves are in); the others passed on."""
        pending: dict[str, dict[str, torch.Tensor]] = {}        # "<layer>.mlp.experts.<proj>" -> blocks / scales
        mxfp4_bytes = dequantized_bytes = kept_bytes = 0
        for name, tensor in weights:
            module, _, last = name.rpartition(".")
            if not module.endswith(".mlp.experts"):
                yield name, tensor
                continue
            experts = self.get_submodule(module)
            if last.endswith(("_blocks", "_scales")):
                proj, _, kind = last.rpartition("_")
                halves = pending.setdefault(f"{module}.{proj}", {})
                halves[kind] = tensor
                if len(halves) < 2:
                    continue
                blocks, scales = halves.pop("blocks"), halves.pop("scales")
                mxfp4_bytes += blocks.numel() + scales.numel()
                device = experts.w13.device
                if experts.quant_method is not None:       # kept MXFP4 (CUDA): this rank's share of the bytes
                    self._load_stacked(experts, proj, blocks.shape[0], lambda e: blocks[e])
                    self._load_stacked(experts, proj, blocks.shape[0], lambda e: scales[e], kind="weight_scale")
                    w, s = (experts.w2, experts.w2_scale) if proj == "down_proj" else (experts.w13, experts.w13_scale)
                    kept_bytes += w.numel() + s.numel()
                else:
                    dequantized_bytes += blocks.numel() * 2 * experts.w13.element_size()
                    # One expert at a time, on the experts' device: a layer's whole gate_up in fp32 would be 2 GiB of
                    # host memory for gpt-oss-20b (8 GiB for 120b) and its lookups several times that.
                    dtype = experts.w13.dtype      # the model's (a stage past the first holds no embedding)
                    self._load_stacked(experts, proj, blocks.shape[0], lambda e: dequantize_mxfp4(
                        blocks[e].to(device), scales[e].to(device), dtype))
            elif last in _STACKED:
                self._load_stacked(experts, last, tensor.shape[0], lambda e: tensor[e].t())
            elif last in ("gate_up_proj_bias", "down_proj_bias"):
                if last == "down_proj_bias":
                    experts.load_bias("down", tensor)
                else:
                    experts.load_bias("gate", tensor[:, 0::2])
                    experts.load_bias("up", tensor[:, 1::2])
                loaded.add(f"{module}.{'b2' if last == 'down_proj_bias' else 'b13'}")
                continue
            else:
                raise ValueError(f"Checkpoint tensor {name!r} has no matching parameter in GptOssForCausalLM.")
            loaded.update(f"{module}.{n}" for n in ("w13", "w2", "w13_scale", "w2_scale") if hasattr(experts, n))
        half = [f"{k} ({', '.join(v)} only)" for k, v in pending.items() if v]
        if half:
            raise ValueError("Checkpoint has MXFP4 experts missing their blocks or scales: " + ", ".join(half[:4]))
        if kept_bytes:
            logger.info("gpt-oss: MXFP4 experts kept in MXFP4 on %s: %.2f GiB of expert weights (%.2f GiB as MXFP4 "
                        "in the checkpoint); the fused MoE kernels unpack them.", device, kept_bytes / 2**30,
                        mxfp4_bytes / 2**30)
        if dequantized_bytes:
            logger.info("gpt-oss: MXFP4 experts dequantized to %s at load: %.2f GiB of expert weights held in the "
                        "model dtype (%.2f GiB as MXFP4 in the checkpoint).", dtype,
                        dequantized_bytes / 2**30, mxfp4_bytes / 2**30)

    @staticmethod
    def _load_stacked(experts: GptOssExperts, proj: str, num: int, expert_weight: Callable[[int], torch.Tensor],
                      kind: str = "weight") -> None:
        """All ``num`` experts' ``gate_up_proj`` (gate / up rows interleaved) or ``down_proj``, ``expert_weight(e)``
        giving expert ``e``'s as ``[out, in]`` (MXFP4 kept: its blocks ``[out, in / 32, 16]`` or scales ``[out, in /
        32]``, ``kind``): each expert's parts into ``w13`` / ``w2`` (or the experts' MXFP4 form)."""
        if num != experts.num_experts:
            raise ValueError(f"Checkpoint {proj} has {num} experts; the config says {experts.num_experts}.")
        for e in range(num):
            weight = expert_weight(e)
            if proj == "down_proj":
                experts.load(e, "down", weight, kind)
            else:
                experts.load(e, "gate", weight[0::2], kind)
                experts.load(e, "up", weight[1::2], kind)
