"""DeepSeek-V2 / V3 (``DeepseekV2ForCausalLM``: DeepSeek-V2, V2-Lite, V2.5; ``DeepseekV3ForCausalLM``: DeepSeek-V3,
R1, Moonlight), as HF transformers' deepseek_v2 / deepseek_v3 modeling runs them.

A pre-norm decoder with two parts of its own:

- Multi-head latent attention (MLA). Q comes from ``q_proj``, or through a low-rank pair ``q_a_proj`` ->
  ``q_a_layernorm`` -> ``q_b_proj`` when ``q_lora_rank`` is set (V2-Lite has none). ``kv_a_proj_with_mqa`` gives a
  ``kv_lora_rank`` latent and one ``qk_rope_head_dim`` key part shared by all heads (``k_pe``); ``kv_a_layernorm``
  then ``kv_b_proj`` expand the latent to each head's un-rotated key part (``qk_nope_head_dim``) and value
  (``v_head_dim``). A head's key is ``[k_nope, k_pe]``, its query ``[q_nope, q_pe]``; only the ``_pe`` parts
  rotate. Softmax scale: ``qk_head_dim ** -0.5``, times ``mscale(factor, mscale_all_dim) ** 2`` under YaRN
  (``_yarn_softmax_scale``, transformers 5.25's ``yarn_apply_mscale``); YaRN's own ``attention_factor`` scales the
  rotary table (rotary.py).
  DeepSeek rotates interleaved pairs (V2 always, V3 with ``rope_interleave``): the rope rows of the Q projection and
  of ``kv_a_proj_with_mqa`` are reordered at load into NeoX halves (rotary.interleaved_to_neox_rows), so the one
  NeoX rotary (torch and Triton) turns them; Q and K get the same order, so every ``q . k`` is unchanged. The
  reorder stays inside each 64-row run, so FP8 checkpoints' 128 x 128 weight-scale blocks still match their rows.
  AWQ / GPTQ / compressed-tensors checkpoints pack their output columns (or their zero points along them), so there
  the same reorder runs on the rope part of Q and of ``k_pe`` in the forward instead (``MLAttention.rope_perm``).

  The KV cache holds the compressed latent, as vLLM's: per token and layer, ``kv_c`` (the ``kv_lora_rank`` latent
  after ``kv_a_layernorm``) and the rotated ``k_pe``, through the ordinary paged cache and attention backends as MQA
  (config.attention_shape): ONE KV head of ``kv_lora_rank + qk_rope_head_dim`` (576 for V2 / V3) that all heads
  attend, its key ``[kv_c, k_pe]`` and its value the same row (``kv_cache_value_is_key``): the backends take one head
  dim for K and V, and only the value output's first ``kv_lora_rank`` columns (``softmax . kv_c``) are used, the
  rest (``softmax . k_pe``) cut. So the row is stored once, as vLLM's MLA cache: the model runner allocates each
  layer's K alone and presents V as the same memory (an expanded view; worker/swap_space.stored_kv for whole-block
  copies). The V write then writes the same bytes again (an fp8 cache too: K and V are both stored with scale 1.0,
  the backends take no other). For decodes ``kv_b_proj``'s rows are absorbed (per head, batched
  matmuls over its weight, ``[heads, nope + v_head_dim, kv_lora_rank]``): the query becomes ``[W_UK^T q_nope, q_pe]``
  (so ``q . k = q_nope . k_nope + q_pe . k_pe``, the expanded form's scores), the attention's latent output
  ``softmax . kv_c`` turns into each head's value output through ``W_UV``, then ``o_proj``. The softmax scale stays
  the model's. A quantized ``kv_b_proj`` is dequantized once to the model dtype for those matmuls. That is
  ``kv_lora_rank + qk_rope_head_dim`` values per token and layer (576) where the expanded cache held ``2 * heads *
  qk_head_dim``: 10.7x fewer for V2-Lite (16 heads), 85.3x for V3 (128 heads), and half the 1,152 of a cache that
  kept a separate ``[kv_c, 0]`` value (this project until session 36: twice the blocks now for the same memory);
  the start-up log says which cache runs and its size.
  Prompt tokens attend in the expanded form, as vLLM's MLA prefill (``MLAttention.attend``, PAGEDLLM_MLA_PREFILL):
  the absorbed dots are ``kv_lora_rank + qk_rope_head_dim`` wide for scores and values (1,152 multiply-adds per
  head and key for V2 / V3) where the expanded ones are ``qk_head_dim + v_head_dim`` (320), and the projections
  cost the same for new tokens (W_UK and W_UV on each query, or ``kv_b_proj`` on each new key). A step's prompt
  requests (those after its decodes) gather their whole sequence's latent from the cache, their cached context
  included, expand it through ``kv_b_proj`` into per-head ``[k_nope, k_pe]`` keys and values, and attend causally
  through the backend's ``varlen_attention``; its decodes stay absorbed (``attend_decodes``); the latent is
  stored for every token. A step whose cached context is long against its new tokens stays absorbed whole
  (``_PrefillPlan.make``: expanding a context token costs ``kv_b_proj``'s 131k multiply-adds per head). Over more
  keys than a bound (the GPU's max_num_batched_tokens: what the start-up memory profile expanded) the new tokens
  attend to themselves causally and to their cached context expanded in chunks of at most that many keys
  (non-causal), the outputs merged by log-sum-exp (vLLM's chunked context, ``merge_attn_states``).

- DeepSeekMoE: after ``first_k_dense_replace`` dense layers, every ``moe_layer_freq``-th layer routes each token to
  ``num_experts_per_tok`` of ``n_routed_experts`` SiLU experts (model/layers/moe.py's stacked experts: HF's loop on
  the CPU, the fused Triton experts on the GPU) and adds ``n_shared_experts`` shared experts (one dense MLP of
  ``moe_intermediate_size * n_shared_experts``). The router runs in fp32 (HF keeps ``gate.weight`` fp32): V2 softmax
  with greedy or group-limited top-k; V3 sigmoid with ``e_score_correction_bias`` and noaux_tc group selection
  (moe.softmax_group_topk / sigmoid_noaux_topk); the routed weights times ``routed_scaling_factor``.

Tensor parallel splits the heads (``q_proj`` / ``q_b_proj`` / ``kv_b_proj`` by output rows, ``o_proj`` by input
columns; the low-rank ``q_a_proj`` / ``kv_a_proj_with_mqa`` replicated) and the MLPs' and experts' intermediate size.
V3's multi-token-prediction layers (``model.layers.{num_hidden_layers}...``) are not run; their tensors are skipped.

LoRA (enable_lora): adapters of every attention projection and of the dense and shared-expert MLPs, their lora_B rope
rows reordered as the weights' (the routed experts' adapters are refused by name). ``kv_b_proj`` never multiplies
activations in the absorbed form, so its adapter's ``B A`` is added per head there (``B_UK A`` on the absorbed query,
``B_UV A`` on the value output: pagedllm/lora/layers.py ``head_transposed_delta`` / ``head_delta``) and to the
expanded latent in the expanded prefill (each key token with its request's adapter): both forms give the merged
model's output. vLLM wraps kv_b_proj for LoRA but both of its MLA paths bypass the wrapper, so such an adapter loads
and is not applied (vllm-project/vllm issue 48974).
"""
from __future__ import annotations

import contextlib
import itertools
import logging
import math
import threading
from dataclasses import dataclass
from typing import Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pagedllm import envs
from pagedllm.attention.backends.base import CommonAttentionMetadata
from pagedllm.attention.forward_batch import ForwardBatch
from pagedllm.config import rope_parameters
from pagedllm.distributed import (get_pp_layer_range, get_tp_size, is_first_pp_stage, is_last_pp_stage,
                                  tp_all_reduce)
from pagedllm.kernels.torch_attention import merge_attn_states
from pagedllm.model.layers.attention import Attention
from pagedllm.model.layers.embedding import ParallelLMHead, VocabParallelEmbedding, with_given_embeds
from pagedllm.model.layers.linear import ColumnParallelLinear, ReplicatedLinear, RowParallelLinear
from pagedllm.model.layers.moe import MoEExperts, load_expert_tensors, sigmoid_noaux_topk, softmax_group_topk
from pagedllm.model.layers.norm import RMSNorm
from pagedllm.model.layers.pipeline import (IntermediateTensors, PPMissingLayer, make_layers, missing_prefixes,
                                             run_stage_layers)
from pagedllm.model.layers.rotary import RotaryEmbedding, interleaved_to_neox_rows
from pagedllm.model.models.llama import LlamaMLP
from pagedllm.model.models.weights import load_packed_weights, without_layers_from

logger = logging.getLogger(__name__)


def _check_supported(cfg, v3: bool) -> None:
    """Config values these models would otherwise run differently from the checkpoint's code: refused by name."""
    arch = "DeepseekV3ForCausalLM" if v3 else "DeepseekV2ForCausalLM"
    method = getattr(cfg, "topk_method", None) or ("noaux_tc" if v3 else "greedy")
    scoring = getattr(cfg, "scoring_func", None) or ("sigmoid" if v3 else "softmax")
    allowed = {"noaux_tc"} if v3 else {"greedy", "group_limited_greedy"}
    if method not in allowed:
        raise ValueError(f"{arch} with topk_method={method!r} is not supported (HF transformers' {arch} routes with "
                         f"{' / '.join(sorted(allowed))}).")
    if scoring != ("sigmoid" if v3 else "softmax"):
        raise ValueError(f"{arch} with scoring_func={scoring!r} is not supported (only "
                         f"{'sigmoid' if v3 else 'softmax'}).")
    if not v3 and getattr(cfg, "norm_topk_prob", False):
        # DeepSeek's V2 code then divides the top-k weights by their sum instead of scaling them, vLLM does both,
        # HF transformers neither: no released V2 checkpoint sets it, so there is no reference to follow.
        raise ValueError("DeepseekV2ForCausalLM with norm_topk_prob=True is not supported (HF transformers ignores it "
                         "for V2 and other implementations disagree on what it does).")
    if cfg.hidden_act != "silu":
        raise ValueError(f"DeepSeek with hidden_act={cfg.hidden_act!r} is not supported (only 'silu').")
    if v3 or method == "group_limited_greedy":
        check_expert_groups(cfg, arch, v3)


def check_expert_groups(cfg, arch: str, sigmoid: bool) -> None:
    """Grouped routing's ``n_group`` / ``topk_group`` (DeepSeek-V2's group-limited greedy, the sigmoid noaux_tc
    routing of DeepSeek-V3 and GLM-4.5, which scores a group by its two best experts): refused by name unless they
    split the experts evenly."""
    experts = cfg.n_routed_experts or 0
    groups, chosen = cfg.n_group, cfg.topk_group
    if experts and (not groups or not chosen or experts % groups or not 0 < chosen <= groups
                    or (sigmoid and experts // groups < 2)):
        raise ValueError(f"{arch} routes within expert groups: n_group={groups} must divide n_routed_experts="
                         f"{experts}{' into groups of at least 2' if sigmoid else ''}, and topk_group={chosen} be "
                         f"between 1 and n_group.")


def is_moe_layer(cfg, layer_idx: int) -> bool:
    """DeepSeek's rule: routed experts after the first ``first_k_dense_replace`` layers, in every
    ``moe_layer_freq``-th layer (1 in every released checkpoint; HF transformers reads only the first)."""
    return bool(cfg.n_routed_experts) and layer_idx >= (cfg.first_k_dense_replace or 0) \
        and layer_idx % (getattr(cfg, "moe_layer_freq", None) or 1) == 0


def _rope_last_rows(other: int, rope: int) -> torch.Tensor:
    """Row order of ``other`` rows then ``rope`` interleaved-rotary rows: the rope rows in NeoX halves."""
    return torch.cat([torch.arange(other), other + interleaved_to_neox_rows(rope, rope)])



def _yarn_softmax_scale(params: dict, scale: float) -> float:
    """The softmax scale under YaRN, as DeepSeek's reference code and transformers 5.25's ``yarn_apply_mscale`` fold
    it: times ``mscale(factor, mscale_all_dim) ** 2`` (the YaRN paper's ``0.1 * m * ln(factor) + 1``, 1 for factors up
    to 1). Written out because earlier transformers releases (5.17, the GPU host's) do not have that function."""
    if params.get("rope_type", params.get("type", "default")) == "default" or not params.get("mscale_all_dim"):
        return scale
    factor = params["factor"]
    mscale = 0.1 * params["mscale_all_dim"] * math.log(factor) + 1.0 if factor > 1 else 1.0
    return scale * mscale * mscale

# PAGEDLLM_MLA_PREFILL's values (envs.py): how a step's prompt tokens attend.
MLA_PREFILL_MODES = ("expanded", "absorbed", "expanded-always")


@dataclass
class _KeySet:
    """Keys of a step's prompt requests to expand and attend at once: their latent cache slots, request by request."""
    slots: torch.Tensor         # [K] int64
    cu_k: torch.Tensor          # [P + 1] int32 prefix sums of each prompt request's keys here (from 0; some may be 0)
    cu_k_cpu: list[int]
    max_k: int


@dataclass
class _PrefillPlan:
    """A step's prompt requests (every request after its decodes) for MLAttention.attend's expanded form."""
    num_decodes: int            # requests, and rows, before them (one token each)
    slots: torch.Tensor         # [K] int64: the latent cache slot of every token of each prompt request's sequence
    cu_q: torch.Tensor          # [P + 1] int32 prefix sums of their new tokens (from 0)
    cu_k: torch.Tensor          # [P + 1] int32 prefix sums of their whole sequences (cached context + new tokens)
    cu_q_cpu: list[int]
    cu_k_cpu: list[int]
    max_q: int
    max_k: int
    # None: one causal pass over the whole sequences (the fields above). Else (more keys than the bound): the new
    # tokens' own keys, attended causally, then their cached context in chunks of at most the bound's keys, each
    # attended by all the new tokens (non-causal); the outputs merged by log-sum-exp (vLLM's chunked context).
    new_keys: _KeySet | None = None
    context_chunks: list[_KeySet] | None = None

    @staticmethod
    def make(common: CommonAttentionMetadata, block_size: int, max_keys: int | None,
             layer: "MLAttention") -> "_PrefillPlan | None":
        """None: the whole step absorbed. Expanding costs kv_b_proj on every cached context token and saves the
        wider absorbed dots on every (query, key) pair, so with PAGEDLLM_MLA_PREFILL=expanded a step whose prompt
        requests have cached context stays absorbed when that saves multiply-adds: ``pairs * pair_saving <=
        context tokens * context_token_cost`` (V2 / V3: 832 vs 131,072, so the expanded form needs a query per
        158 context tokens: a 4k-token prefix takes it for chunks of ~800 tokens and more; speculative
        verifications of a few tokens stay absorbed). ``max_keys`` bounds how many keys are expanded at once
        (MLAttention._prefill_plan: on the GPU): a step whose prompt requests' sequences hold more (cached context
        and new tokens) expands its new tokens on their own, then the cached context in chunks of at most
        ``max_keys`` keys (``context_chunks``). One rule for the whole step: no third split of it. =expanded-always
        skips the cost rule and the bound (one pass)."""
        nd, num_reqs = common.num_decodes, common.num_reqs
        if nd == num_reqs:
            return None
        host = (common.query_start_loc_cpu, common.seq_lens_cpu, common.block_tables_cpu)
        if any(x is None for x in host):      # (graph capture over device buffers: the attention never runs there)
            host = tuple(t.cpu().numpy() for t in (common.query_start_loc, common.seq_lens, common.block_tables))
        starts, lens, tables = host
        q_lens = np.diff(starts[nd:]).astype(np.int64)
        k_lens = lens[nd:].astype(np.int64)
        context = k_lens - q_lens
        if layer.prefill_mode == "expanded" and context.any():
            pairs = int((q_lens * context + q_lens * (q_lens + 1) // 2).sum())
            if pairs * layer.pair_saving <= int(context.sum()) * layer.context_token_cost:
                return None
        cu_k = np.zeros(len(k_lens) + 1, dtype=np.int64)
        np.cumsum(k_lens, out=cu_k[1:])
        req = np.repeat(np.arange(len(k_lens)), k_lens)             # each key's prompt request
        pos = np.arange(int(cu_k[-1])) - cu_k[req]                   # its position in that request's sequence
        slots = tables[nd + req, pos // block_size].astype(np.int64) * block_size + pos % block_size
        cu_q = (starts[nd:] - starts[nd]).astype(np.int32)
        device = common.seq_lens.device
        plan = _PrefillPlan(nd, torch.from_numpy(slots).to(device), torch.from_numpy(cu_q).to(device),
                            torch.from_numpy(cu_k.astype(np.int32)).to(device), cu_q.tolist(), cu_k.tolist(),
                            int(q_lens.max()), int(k_lens.max()))
        if (layer.prefill_mode == "expanded" and context.any() and max_keys is not None
                and int(cu_k[-1]) > max_keys):
            in_context = pos < context[req]
            plan.new_keys = _PrefillPlan._key_set(slots[~in_context], q_lens, device)
            # The context keys request by request (slots' order), cut every max_keys keys: a chunk may end inside
            # a request's context and hold none of another's.
            ctx_slots, cu_ctx = slots[in_context], np.concatenate(([0], np.cumsum(context)))
            plan.context_chunks = []
            for lo in range(0, int(cu_ctx[-1]), max_keys):
                hi = min(lo + max_keys, int(cu_ctx[-1]))
                lens = np.clip(cu_ctx[1:], lo, hi) - np.clip(cu_ctx[:-1], lo, hi)
                plan.context_chunks.append(_PrefillPlan._key_set(ctx_slots[lo:hi], lens, device))
        return plan

    @staticmethod
    def _key_set(slots: np.ndarray, lens: np.ndarray, device: torch.device) -> _KeySet:
        cu = np.concatenate(([0], np.cumsum(lens))).astype(np.int32)
        return _KeySet(torch.from_numpy(np.ascontiguousarray(slots)).to(device), torch.from_numpy(cu).to(device),
                       cu.tolist(), int(lens.max()))


# The step whose plan was made last and that plan, per thread (two CPU engines of one process may run steps on two
# threads at once): every MLA layer of a step uses the first one's. The step is told by its metadata object (held
# here, so not reused by another step while cached).
_step_plans = threading.local()


class MLAttention(nn.Module):
    """Multi-head latent attention over the latent paged KV cache, ``kv_b_proj`` absorbed (module docstring)."""

    # The expanded prefill's bound on keys expanded at once (_prefill_plan); None: the device's (tests set it, so
    # the chunked-context path runs on the CPU too).
    context_chunk_keys: int | None = None
    # Set by the start-up warm-up (DeepseekV2ForCausalLM.warmup_forms): every prompt step in the chunked-context form.
    warmup_chunked = False

    def __init__(self, cfg, layer_idx: int, rotary: RotaryEmbedding, quant_config=None, prefix: str = ""):
        super().__init__()
        total_heads, hidden = cfg.num_attention_heads, cfg.hidden_size
        self.nope, self.rope, self.v_dim = cfg.qk_nope_head_dim, cfg.qk_rope_head_dim, cfg.v_head_dim
        self.qk_dim, self.kv_rank = self.nope + self.rope, cfg.kv_lora_rank
        bias = getattr(cfg, "attention_bias", False)
        self.q_lora = cfg.q_lora_rank is not None
        if self.q_lora:
            self.q_a_proj = ReplicatedLinear(hidden, cfg.q_lora_rank, bias=bias, quant_config=quant_config,
                                             prefix=f"{prefix}.q_a_proj")
            self.q_a_layernorm = RMSNorm(cfg.q_lora_rank)       # HF's default eps (1e-6), not rms_norm_eps
            self.q_b_proj = ColumnParallelLinear(cfg.q_lora_rank, total_heads * self.qk_dim,
                                                 quant_config=quant_config, prefix=f"{prefix}.q_b_proj")
        else:
            self.q_proj = ColumnParallelLinear(hidden, total_heads * self.qk_dim, quant_config=quant_config,
                                               prefix=f"{prefix}.q_proj")
        self.kv_a_proj_with_mqa = ReplicatedLinear(hidden, self.kv_rank + self.rope, bias=bias,
                                                   quant_config=quant_config, prefix=f"{prefix}.kv_a_proj_with_mqa")
        self.kv_a_layernorm = RMSNorm(self.kv_rank)
        # The layer never runs on activations (once on the identity when quantized: after_weights_processed): its
        # weight's rows are absorbed into the query (W_UK) and the output (W_UV), or multiply the gathered latent
        # (attend).
        self.kv_b_proj = ColumnParallelLinear(self.kv_rank, total_heads * (self.nope + self.v_dim),
                                              quant_config=quant_config, prefix=f"{prefix}.kv_b_proj")
        self._kv_b_dequantized: torch.Tensor | None = None
        # Where the checkpoint's rope columns could not be reordered at load (packed int formats: AWQ / GPTQ /
        # compressed-tensors pack their output columns), the rope part of Q and k_pe is reordered here, each step
        # (interleaved pairs -> NeoX halves); None: reordered at load (DeepseekV2ForCausalLM._rope_rows).
        self.rope_perm: torch.Tensor | None = None
        self.o_proj = RowParallelLinear(total_heads * self.v_dim, hidden, bias=bias, quant_config=quant_config,
                                        prefix=f"{prefix}.o_proj")
        self.num_heads = total_heads // get_tp_size()      # this rank's
        self.rotary = rotary
        scale = _yarn_softmax_scale(rope_parameters(cfg), self.qk_dim ** -0.5)
        # The latent cache (config.attention_shape): MQA, one KV head of kv_lora_rank + qk_rope_head_dim shared by
        # this rank's heads (replicated on every tensor-parallel rank). The scale stays the model's: the absorbed
        # scores equal the expanded ones.
        self.attn = Attention(self.num_heads, self.kv_rank + self.rope, scale, 1, layer_idx)
        self.prefill_mode = envs.PAGEDLLM_MLA_PREFILL
        if self.prefill_mode not in MLA_PREFILL_MODES:
            raise ValueError(f"PAGEDLLM_MLA_PREFILL must be one of {', '.join(MLA_PREFILL_MODES)}; got "
                             f"{self.prefill_mode!r}.")
        # Multiply-adds per head (_PrefillPlan's rule): what the expanded form saves per (query, key) pair (the
        # absorbed scores and values are kv_lora_rank + qk_rope_head_dim wide, the expanded ones qk_head_dim and
        # v_head_dim: V2 / V3 1,152 vs 320) and what expanding one cached context token costs (kv_b_proj's rows:
        # 512 x 256). The projections of the new tokens cost the same in both forms (W_UK on each query and W_UV
        # on each output, or kv_b_proj on each new key).
        self.pair_saving = 2 * (self.kv_rank + self.rope) - (self.qk_dim + self.v_dim)
        self.context_token_cost = self.kv_rank * (self.nope + self.v_dim)

    def after_weights_processed(self) -> None:
        """A quantized kv_b_proj (V3's FP8 block checkpoints, online fp8, AWQ / GPTQ / bitsandbytes ones) is
        dequantized once, to the model dtype, for the per-head batched matmuls (no quantized bmm here). The layer
        applied to the identity gives W^T through the method's own matmul, whatever the method (an identity row
        quantizes exactly where activations are quantized). The loader calls this once the quantization methods
        have processed their layers. It must not wait for the first forward: on the GPU that is the dry pass of
        kernels/parallel_compile.py, in which a Triton kernel not built yet does not run, so the copy was whatever
        its output buffer held (session 36, an empty Triton cache). A quantized weight is not updated after loading
        (weights.load_packed_weights refuses), so the copy stays valid. It costs kv_b_proj in the model dtype besides
        its quantized weight (V3: 32 MiB a layer in bf16 at TP 1)."""
        layer = self.kv_b_proj
        if layer.quant_method is None:
            return
        device = next(itertools.chain(layer.parameters(), layer.buffers())).device
        eye = torch.eye(self.kv_rank, dtype=layer.params_dtype, device=device)
        with torch.inference_mode():
            self._kv_b_dequantized = layer(eye).t().contiguous()

    def _kv_b_weight(self, device: torch.device) -> torch.Tensor:
        """kv_b_proj's weight, this rank's ``[heads, nope + v_head_dim, kv_lora_rank]``: the checkpoint's rows of
        each head, its key's nope part (W_UK) then its value (W_UV)."""
        layer = self.kv_b_proj
        if layer.quant_method is None:
            weight = layer.weight      # read at each call: a weight update or a layer offload swaps its storage
        else:
            if self._kv_b_dequantized is None:
                raise RuntimeError("DeepSeek MLA: the quantized kv_b_proj was not dequantized after loading "
                                   "(after_weights_processed is the loader's to call).")
            if self._kv_b_dequantized.device != device:        # weights offloaded to the CPU: moved once
                self._kv_b_dequantized = self._kv_b_dequantized.to(device)
            weight = self._kv_b_dequantized
        return weight.view(self.num_heads, self.nope + self.v_dim, self.kv_rank)

    def forward(self, positions: torch.Tensor, hidden: torch.Tensor, batch: ForwardBatch) -> torch.Tensor:
        lora = batch.lora_step
        q = (self.q_b_proj(self.q_a_layernorm(self.q_a_proj(hidden, lora)), lora) if self.q_lora
             else self.q_proj(hidden, lora)).view(-1, self.num_heads, self.qk_dim)
        latent, k_pe = self.kv_a_proj_with_mqa(hidden, lora).split([self.kv_rank, self.rope], dim=-1)
        kv_c = self.kv_a_layernorm(latent)
        q_pe, k_pe = q[..., self.nope:], k_pe.unsqueeze(1)
        if self.rope_perm is not None:
            if self.rope_perm.device != hidden.device:      # moved once, at the first (eager, profiling) forward
                self.rope_perm = self.rope_perm.to(hidden.device)
            q_pe, k_pe = q_pe.index_select(-1, self.rope_perm), k_pe.index_select(-1, self.rope_perm)
        q_pe, k_pe = self.rotary(positions, q_pe, k_pe)     # in place on CUDA
        # One KV head: the key [kv_c, k_pe], and the value the same row (the backends take one head dim for K and
        # V; the output's softmax . k_pe columns are cut). The model runner keeps one copy: V is K's memory
        # (kv_cache_value_is_key), so the V write stores the same bytes again.
        cache_k = torch.cat((kv_c, k_pe.squeeze(1)), dim=-1)
        cache_v = cache_k
        common = getattr(batch.attn_metadata, "common", None)
        if batch.attn_breaker is None and (self.prefill_mode == "absorbed" or common is None
                                           or common.num_decodes == common.num_reqs):
            # Decode steps (the decode CUDA graphs capture this), PAGEDLLM_MLA_PREFILL=absorbed, or a backend whose
            # metadata does not describe the step: every token absorbed, over the latent cache.
            w_kv_b = self._kv_b_weight(hidden.device)
            out = self.attn(self._absorbed_query(q[..., :self.nope], q_pe, w_kv_b, lora), cache_k, cache_v, batch)
            out = self._value_output(out, w_kv_b, lora)
        else:
            # Steps with prompt tokens: the latent stored for every token (later decodes read it), then attend().
            # Under piecewise CUDA-graph capture attend() runs between the graphs at each replay, on the replayed
            # step (which requests are decodes, which prompts, is known there only); its output is the first
            # v_head_dim of each head of the graphs' static [T, heads, qk_head_dim] output.
            q = torch.cat((q[..., :self.nope], q_pe), dim=-1)
            batch.attn_backend.write_kv(q, cache_k.unsqueeze(1), cache_v.unsqueeze(1),
                                        batch.kv_caches[self.attn.layer_idx], batch.slot_mapping)
            if batch.attn_breaker is not None:
                out = batch.attn_breaker.attention(self, q)[..., :self.v_dim]
            else:
                out = self.attend(q, batch)
        return self.o_proj(out.reshape(-1, self.num_heads * self.v_dim), lora)

    def _kv_b_lora(self, step, rows: torch.Tensor | int | None = None):
        """The LoRA step of kv_b_proj's adapters for some of the step's tokens (``rows``: the first ``rows``, or
        these row indices; None: all), or None where no token of the step has an adapter or none adapts kv_b_proj."""
        if step is None or self.kv_b_proj.lora is None:
            return None
        if rows is None:
            return step
        if isinstance(rows, int):
            return step._replace(mask=step.mask[:rows], slots=step.slots[:rows])
        return step._replace(mask=step.mask[rows], slots=step.slots[rows])

    def _absorbed_query(self, q_nope: torch.Tensor, q_pe: torch.Tensor, w_kv_b: torch.Tensor,
                        lora=None) -> torch.Tensor:
        """``[W_UK^T q_nope, q_pe]`` ``[T, heads, kv_lora_rank + rope]``: q_nope . k_nope = q_nope . (W_UK kv_c) =
        (W_UK^T q_nope) . kv_c, each head's query in the latent's space. With a kv_b_proj adapter (``lora``, one
        row per token), W_UK + B_UK A: its part (B_UK A)^T q_nope added, so the scores are the merged model's."""
        q_latent = torch.bmm(q_nope.transpose(0, 1), w_kv_b[:, :self.nope]).transpose(0, 1)
        lora = self._kv_b_lora(lora)
        if lora is not None:
            q_latent = q_latent + self.kv_b_proj.lora.head_transposed_delta(
                q_nope, self.num_heads, slice(0, self.nope), lora).to(q_latent.dtype)
        return torch.cat((q_latent, q_pe), dim=-1)

    def _value_output(self, out: torch.Tensor, w_kv_b: torch.Tensor, lora=None) -> torch.Tensor:
        """softmax . V = softmax . (W_UV kv_c) = W_UV (softmax . kv_c): each head's value ``[T, heads, v_head_dim]``
        from its latent output (``[T, heads * (kv_lora_rank + rope)]``, the rope part, ``softmax . k_pe``, cut).
        With a kv_b_proj adapter (``lora``), W_UV + B_UV A: its part B_UV (A (softmax . kv_c)) added."""
        out = out.view(-1, self.num_heads, self.kv_rank + self.rope)[..., :self.kv_rank]
        value = torch.bmm(out.transpose(0, 1), w_kv_b[:, self.nope:].transpose(1, 2)).transpose(0, 1)
        lora = self._kv_b_lora(lora)
        if lora is not None:
            value = value + self.kv_b_proj.lora.head_delta(out, self.num_heads, slice(self.nope, None),
                                                           lora).to(value.dtype)
        return value

    def attend(self, q: torch.Tensor, batch: ForwardBatch, out: torch.Tensor | None = None) -> torch.Tensor:
        """The attention of a step with prompt tokens: ``q`` its rotated queries ``[T, heads, qk_head_dim]`` (the
        step's latent already cached) -> ``[T, heads, v_head_dim]``, into ``out[..., :v_head_dim]`` when ``out``
        (``[T, heads, qk_head_dim]``) is given. The decodes (the first requests, one row each) absorbed over the
        latent cache; the prompt requests in the expanded form, vLLM's prefill (``_PrefillPlan``): each one's whole
        sequence, its cached context (chunked prefill's earlier chunks, a prefix-cache hit) included, gathered from
        the latent cache and expanded through kv_b_proj into per-head keys ``[k_nope, k_pe]`` and values, then
        causal attention at qk_head_dim / v_head_dim through the backend's ``varlen_attention``; over more keys
        than the plan's bound, the new tokens' causal attention to themselves and their non-causal attention to
        each bounded chunk of the cached context, merged by log-sum-exp; or the whole step absorbed where the plan
        says so."""
        kv_cache, w_kv_b = batch.kv_caches[self.attn.layer_idx], self._kv_b_weight(q.device)
        backend, metadata, scale = batch.attn_backend, batch.attn_metadata, self.attn.scale
        out = q.new_empty(q.shape[0], self.num_heads, self.v_dim) if out is None else out[..., :self.v_dim]
        plan = self._prefill_plan(batch, kv_cache.shape[2])
        lora = self._kv_b_lora(batch.lora_step)
        if plan is None:
            absorbed = backend.attend(self._absorbed_query(q[..., :self.nope], q[..., self.nope:], w_kv_b, lora),
                                      kv_cache, metadata, scale)
            return out.copy_(self._value_output(absorbed, w_kv_b, lora))
        nd = plan.num_decodes
        if nd:
            decodes = self._kv_b_lora(lora, nd)
            absorbed = backend.attend_decodes(self._absorbed_query(q[:nd, :, :self.nope], q[:nd, :, self.nope:],
                                                                   w_kv_b, decodes), kv_cache, metadata, scale)
            out[:nd] = self._value_output(absorbed, w_kv_b, decodes)
        cache = kv_cache[0].view(-1, self.kv_rank + self.rope)      # [slots, kv_lora_rank + rope]: kv_c, k_pe
        if plan.context_chunks is None:
            k, v = self._expanded_keys(cache, plan.slots, plan.cu_k, plan.cu_k_cpu, plan, w_kv_b, lora, q.dtype)
            out[nd:] = backend.varlen_attention(q[nd:], k, v, plan.cu_q, plan.cu_k, scale, plan.max_q, plan.max_k,
                                                plan.cu_q_cpu, plan.cu_k_cpu)
            return out
        # Over the bound: one chunk's keys expanded at a time (the start-up memory profile expanded that many).
        keys = plan.new_keys
        k, v = self._expanded_keys(cache, keys.slots, keys.cu_k, keys.cu_k_cpu, plan, w_kv_b, lora, q.dtype)
        merged, lse = backend.varlen_attention(q[nd:], k, v, plan.cu_q, keys.cu_k, scale, plan.max_q, keys.max_k,
                                               plan.cu_q_cpu, keys.cu_k_cpu, return_lse=True)
        del k, v
        for keys in plan.context_chunks:
            k, v = self._expanded_keys(cache, keys.slots, keys.cu_k, keys.cu_k_cpu, plan, w_kv_b, lora, q.dtype)
            part, part_lse = backend.varlen_attention(q[nd:], k, v, plan.cu_q, keys.cu_k, scale, plan.max_q,
                                                      keys.max_k, plan.cu_q_cpu, keys.cu_k_cpu, causal=False,
                                                      return_lse=True)
            del k, v
            merged, lse = merge_attn_states(merged, lse, part, part_lse)
        out[nd:] = merged
        return out

    def _expanded_keys(self, cache: torch.Tensor, slots: torch.Tensor, cu_k: torch.Tensor, cu_k_cpu: list[int],
                       plan: _PrefillPlan, w_kv_b: torch.Tensor, lora, dtype: torch.dtype):
        """The prompt requests' keys ``[K, heads, qk_head_dim]`` and values ``[K, heads, v_head_dim]`` at these
        latent cache slots (``cu_k``: how many of them each prompt request has), expanded through kv_b_proj."""
        if cache.element_size() == 1:       # fp8 (kv_cache_dtype): gathered as bytes, index_select has no fp8 kernels
            latent = cache.view(torch.uint8).index_select(0, slots).view(cache.dtype).to(dtype)
        else:
            latent = cache.index_select(0, slots).to(dtype)
        kv = F.linear(latent[:, :self.kv_rank], w_kv_b.flatten(0, 1))
        if lora is not None:
            # kv_b_proj's adapter on the expanded latent: each key token takes its request's adapter (the row of
            # the request's first new token; no host synchronisation).
            first_rows = plan.cu_q[:-1].long() + plan.num_decodes
            rows = torch.repeat_interleave(first_rows, cu_k.diff(), output_size=cu_k_cpu[-1])
            kv = self.kv_b_proj.add_lora(latent[:, :self.kv_rank], kv, self._kv_b_lora(lora, rows))
        kv = kv.view(-1, self.num_heads, self.nope + self.v_dim)
        k_nope, v = kv.split([self.nope, self.v_dim], dim=-1)
        k = torch.cat((k_nope, latent[:, None, self.kv_rank:].expand(-1, self.num_heads, -1)), dim=-1)
        return k, v

    def _prefill_plan(self, batch: ForwardBatch, block_size: int) -> _PrefillPlan | None:
        """The step's _PrefillPlan, made by its first MLA layer (the same for all: one rule, one cache layout)."""
        common = batch.attn_metadata.common
        made = getattr(_step_plans, "last", None)
        if made is not None and made[0] is common:
            return made[1]
        # On the GPU the KV cache got the memory the start-up's profile forward left, and that forward expanded
        # max_num_batched_tokens new tokens: a step with longer sequences (cached context and new tokens) expands
        # its cached context in chunks of at most that many keys, merged by log-sum-exp (vLLM's chunked context),
        # so as not to need memory the profile did not count. The CPU has no such budget (no profile:
        # kv_cache_memory_gb sizes the cache), and no bound: 1 x 3,072 in chunks of 1,024 prefilled 20% faster
        # without one (docs/perf.md, session 36). context_chunk_keys (tests) sets the bound on any device.
        max_keys = self.context_chunk_keys
        if max_keys is None and common.seq_lens.device.type == "cuda":
            max_keys = batch.attn_backend.max_num_batched_tokens
        plan = _PrefillPlan.make(common, block_size, max_keys, self)
        if self.warmup_chunked and plan is not None and plan.context_chunks is None:
            # The warm-up's prompts (no cached context): their keys both the new tokens' and one context chunk's,
            # for the kernels' sake (the output is not that attention; a dummy forward's is not read).
            whole = _KeySet(plan.slots, plan.cu_k, plan.cu_k_cpu, plan.max_k)
            plan.new_keys, plan.context_chunks = whole, [whole]
        _step_plans.last = (common, plan)
        return plan


class DeepseekRouter(nn.Module):
    """The MoE gate: fp32 logits from an fp32 weight (as HF keeps it), V2's or V3's top-k, the routed scaling."""

    def __init__(self, cfg, v3: bool):
        super().__init__()
        n = cfg.n_routed_experts
        self.weight = nn.Parameter(torch.empty(n, cfg.hidden_size, dtype=torch.float32), requires_grad=False)
        self.v3, self.top_k, self.scale = v3, cfg.num_experts_per_tok, cfg.routed_scaling_factor
        grouped = v3 or getattr(cfg, "topk_method", None) == "group_limited_greedy"
        self.num_groups, self.topk_groups = (cfg.n_group, cfg.topk_group) if grouped else (None, None)
        self.renormalize = bool(cfg.norm_topk_prob)
        if v3:
            self.e_score_correction_bias = nn.Parameter(torch.empty(n, dtype=torch.float32), requires_grad=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = F.linear(x.float(), self.weight)
        if self.v3:
            weights, ids = sigmoid_noaux_topk(logits, self.top_k, self.e_score_correction_bias, self.num_groups,
                                              self.topk_groups, self.renormalize)
        else:
            weights, ids = softmax_group_topk(logits, self.top_k, self.num_groups, self.topk_groups)
        return weights * self.scale, ids


class DeepseekMoE(nn.Module):
    """Routed experts (their sum all-reduced under tensor parallel) plus the shared experts."""

    def __init__(self, cfg, v3: bool, quant_config=None, prefix: str = ""):
        super().__init__()
        self.gate = DeepseekRouter(cfg, v3)
        self.experts = MoEExperts(cfg.n_routed_experts, cfg.hidden_size, cfg.moe_intermediate_size, quant_config,
                                  f"{prefix}.experts")
        shared = (cfg.n_shared_experts or 0) * cfg.moe_intermediate_size
        self.shared_experts = (LlamaMLP(cfg, quant_config, f"{prefix}.shared_experts", intermediate_size=shared)
                               if shared else None)

    def forward(self, x: torch.Tensor, lora_step=None) -> torch.Tensor:
        weights, ids = self.gate(x)
        out = self.experts(x, ids, weights)
        if self.experts.tp_size > 1:
            out = tp_all_reduce(out)
        if self.shared_experts is not None:
            out = out + self.shared_experts(x, lora_step)     # GLM-4.5's / dots.llm1's adapters (the experts take none)
        return out


class DeepseekDecoderLayer(nn.Module):
    """MLA, then a dense MLP or DeepSeekMoE, pre-norm (LlamaDecoderLayer's plain path, written out: this model
    takes none of Llama's variant switches)."""

    def __init__(self, cfg, layer_idx: int, cache_idx: int, rotary: RotaryEmbedding, v3: bool, quant_config=None,
                 prefix: str = ""):
        """``layer_idx``: the model's layer number; ``cache_idx``: its KV cache's among this pipeline stage's."""
        super().__init__()
        self.self_attn = MLAttention(cfg, cache_idx, rotary, quant_config, f"{prefix}.self_attn")
        self.mlp = (DeepseekMoE(cfg, v3, quant_config, f"{prefix}.mlp") if is_moe_layer(cfg, layer_idx)
                    else LlamaMLP(cfg, quant_config, f"{prefix}.mlp"))
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(self, positions, hidden, residual, batch):
        if residual is None:
            residual = hidden
            hidden = self.input_layernorm(hidden)
        else:
            hidden, residual = self.input_layernorm(hidden, residual)
        hidden = self.self_attn(positions, hidden, batch)
        hidden, residual = self.post_attention_layernorm(hidden, residual)
        return self.mlp(hidden, batch.lora_step), residual


class DeepseekModel(nn.Module):
    def __init__(self, cfg, max_position: int, v3: bool, quant_config=None, prefix: str = "model"):
        super().__init__()
        self.first_stage, self.last_stage = is_first_pp_stage(), is_last_pp_stage()
        self.embed_tokens = (VocabParallelEmbedding(cfg.vocab_size, cfg.hidden_size, quant_config,
                                                    f"{prefix}.embed_tokens") if self.first_stage
                             else PPMissingLayer())
        rotary = RotaryEmbedding(cfg, cfg.qk_rope_head_dim, max_position)     # of the shared k_pe and each q_pe
        start, _ = get_pp_layer_range(cfg.num_hidden_layers)     # make_layers numbers the stage's layers from 0
        self.start_layer, self.end_layer, self.layers = make_layers(
            cfg.num_hidden_layers, lambda i: DeepseekDecoderLayer(cfg, start + i, i, rotary, v3, quant_config,
                                                                  f"{prefix}.layers.{start + i}"))
        self._stage_layers = list(self.layers)[self.start_layer:self.end_layer]
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps) if self.last_stage else PPMissingLayer()

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, batch: ForwardBatch,
                intermediate: IntermediateTensors | None = None) -> torch.Tensor | IntermediateTensors:
        if self.first_stage:
            hidden, residual = with_given_embeds(self.embed_tokens(input_ids), batch.input_embeds), None
        else:
            hidden, residual = intermediate.hidden, intermediate.residual
        return run_stage_layers(self._stage_layers, positions, hidden, residual, batch, self.last_stage, self.norm)


class DeepseekV2ForCausalLM(nn.Module):
    v3 = False
    # MLAttention writes each token's latent row as its key and as its value (the value output's k_pe columns cut):
    # the model runner stores it once, V the same memory as K (module docstring).
    kv_cache_value_is_key = True
    supports_tensor_parallel = True
    supports_pipeline_parallel = True
    # FP8 checkpoints (V3's 128 x 128 blocks) and online FP8; AWQ / GPTQ / compressed-tensors checkpoints (their
    # packed rope columns reordered each step, MLAttention.rope_perm; the experts through the packed MoE method)
    supports_quantization = ("fp8", "awq", "gptq", "compressed-tensors")
    # checkpoint name fragment -> (our parameter fragment, shard id): the dense and shared-expert MLPs
    packed_modules_mapping = {"gate_proj": ("gate_up_proj", 0), "up_proj": ("gate_up_proj", 1)}
    # LoRA: every projection of the attention (kv_b_proj in both its forms: the absorbed query and value output add
    # its adapter's B_UK A / B_UV A per head, the expanded prefill adds it to the expanded latent; MLAttention), the
    # dense layers' and the shared experts' MLPs; the routed experts' adapters are refused by name (MoEExperts).
    supports_lora = True
    lora_target_modules = ("q_proj", "q_a_proj", "q_b_proj", "kv_a_proj_with_mqa", "kv_b_proj", "o_proj",
                           "gate_proj", "up_proj", "down_proj")
    lora_slot_modules = ("q_a_proj", "q_b_proj", "kv_a_proj_with_mqa", "kv_b_proj")

    def warmup_forms(self) -> list[contextlib.AbstractContextManager]:
        """The model runner's start-up warm-up runs a prompt under each (so its Triton variants build then, not in
        a request): with the expanded prefill on, the absorbed prefill too, which a step takes at run time only
        when expanding its cached context would cost more (MLAttention._prefill_plan), and the chunked-context
        form, which a step takes only over more keys than the bound (its varlen launches' LSE and non-causal
        variants; the warm-up prompts have no cached context, so their own tokens stand in for it)."""
        layers = [m for m in self.modules() if isinstance(m, MLAttention)]
        if not layers or layers[0].prefill_mode != "expanded":
            return []

        @contextlib.contextmanager
        def chunked():
            for layer in layers:
                layer.warmup_chunked = True
            try:
                yield
            finally:
                for layer in layers:
                    layer.warmup_chunked = False

        @contextlib.contextmanager
        def absorbed():
            for layer in layers:
                layer.prefill_mode = "absorbed"
            try:
                yield
            finally:
                for layer in layers:
                    layer.prefill_mode = "expanded"
        return [absorbed(), chunked()]

    def __init__(self, hf_config, engine_config):
        super().__init__()
        _check_supported(hf_config, self.v3)
        self.config = cfg = hf_config
        quant_config = getattr(engine_config, "quant_config", None)
        max_position = max(engine_config.max_model_len, getattr(cfg, "max_position_embeddings", 0) or 0)
        self.model = DeepseekModel(cfg, max_position, self.v3, quant_config)
        tied = getattr(cfg, "tie_word_embeddings", False)
        if not is_last_pp_stage():
            self.lm_head = PPMissingLayer()
        else:
            if tied and not is_first_pp_stage():
                raise ValueError("DeepSeek with tie_word_embeddings=True over several pipeline stages is not "
                                 "supported yet; use pipeline_parallel_size=1.")
            self.lm_head = ParallelLMHead(cfg.vocab_size, cfg.hidden_size, quant_config=quant_config,
                                          prefix="lm_head")
            if tied:
                self.lm_head.tie_weights(self.model.embed_tokens)
        # Checkpoint rows whose rope part is reordered at load (interleaved pairs -> NeoX halves): V2 always
        # rotates interleaved pairs, V3 unless rope_interleave is false.
        self._rope_rows: dict[str, torch.Tensor] = {}
        if not self.v3 or getattr(cfg, "rope_interleave", True):
            qk_dim = cfg.qk_nope_head_dim + cfg.qk_rope_head_dim
            per_head = _rope_last_rows(cfg.qk_nope_head_dim, cfg.qk_rope_head_dim)
            q_order = (torch.arange(cfg.num_attention_heads)[:, None] * qk_dim + per_head).flatten()
            self._rope_rows = {".self_attn.q_proj.": q_order, ".self_attn.q_b_proj.": q_order,
                               ".self_attn.kv_a_proj_with_mqa.": _rope_last_rows(cfg.kv_lora_rank,
                                                                                 cfg.qk_rope_head_dim)}
        if self._rope_rows and quant_config is not None and quant_config.name != "fp8":
            # Packed int checkpoints hold their output columns packed (AWQ / GPTQ zero points, AWQ weights): their
            # rope part is reordered in the forward instead, on Q and k_pe.
            perm = interleaved_to_neox_rows(cfg.qk_rope_head_dim, cfg.qk_rope_head_dim)
            for module in self.modules():
                if isinstance(module, MLAttention):
                    module.rope_perm = perm
            self._rope_rows = {}
        # A block-quantized checkpoint (V3's FP8, 128 x 128) keeps one scale per block of rows: the reorder must
        # keep every row inside its block (it does for DeepSeek's 64-row rope runs).
        block = (getattr(quant_config, "weight_block_size", None) or [None])[0]
        for module, order in self._rope_rows.items() if block else ():
            if not torch.equal(order // block, torch.arange(order.numel()) // block):
                raise ValueError(f"DeepSeek checkpoint with weight_block_size {quant_config.weight_block_size}: the "
                                 f"{module.strip('.')} scale blocks cut through the rotary rows reordered at load; "
                                 f"this layout is not supported.")
        latent = cfg.kv_lora_rank + cfg.qk_rope_head_dim
        expanded = 2 * cfg.num_attention_heads * (cfg.qk_nope_head_dim + cfg.qk_rope_head_dim)
        self.kv_cache_note = (f"the MLA latent cache: {latent} values per token and layer (one KV head of "
                              f"kv_lora_rank {cfg.kv_lora_rank} + rope {cfg.qk_rope_head_dim} = {latent}, stored once "
                              f"as key and value), {expanded / latent:.1f}x fewer than the {expanded} of "
                              f"{cfg.num_attention_heads} heads' expanded keys and values")
        logger.info("%s: the KV cache is %s.", type(self).__name__, self.kv_cache_note)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, batch: ForwardBatch,
                intermediate: IntermediateTensors | None = None) -> torch.Tensor | IntermediateTensors:
        return self.model(input_ids, positions, batch, intermediate)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head.compute_logits(hidden)

    def _checkpoint_tensors(self, weights: Iterable[tuple[str, torch.Tensor]]
                            ) -> Iterable[tuple[str, torch.Tensor]]:
        """The checkpoint's tensors without V3's multi-token-prediction layers, the rope rows of the Q projection
        and of ``kv_a_proj_with_mqa`` (weight, bias, per-row scales) in NeoX order."""
        for name, tensor in without_layers_from(weights, self.config.num_hidden_layers):
            module = next((m for m in self._rope_rows if m in name), None)
            if module is not None and tensor.dim() and tensor.shape[0] == self._rope_rows[module].numel():
                tensor = tensor.index_select(0, self._rope_rows[module].to(tensor.device))   # weight, bias, row scales
            yield name, tensor

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        skip = ("rotary_emb.inv_freq",) + (("lm_head.weight",) if getattr(self.config, "tie_word_embeddings", False)
                                           else ())
        experts: set[str] = set()
        weights = load_expert_tensors(self, self._checkpoint_tensors(weights), experts)
        return load_packed_weights(self, weights, self.packed_modules_mapping, skip=skip) | experts

    def lora_module_parts(self, module: str, b: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
        """An adapter's module and its lora_B [out, r]: the Q projection's and kv_a_proj_with_mqa's rope rows
        reordered as the checkpoint's (lora_A, on the input side, is untouched), so the adapted Q and k_pe rotate as
        the merged model's; none for V3's multi-token-prediction layers, which are not run."""
        return [(name.removesuffix(".weight"), rows) for name, rows in self._checkpoint_tensors([(f"{module}.weight",
                                                                                                  b)])]

    def pp_skipped_checkpoint_prefixes(self) -> tuple[str, ...]:
        """Checkpoint name prefixes this pipeline stage never reads (the checkpoint's names are the modules')."""
        return missing_prefixes(self)


class DeepseekV3ForCausalLM(DeepseekV2ForCausalLM):
    v3 = True
