"""Mixture-of-experts MLP blocks (Qwen2-MoE, Qwen3-MoE, Mixtral): a router picks ``top_k`` of ``num_experts`` SiLU-
gated experts per token; their outputs, weighted by the router's probabilities, are summed (plus, for Qwen2-MoE, a
shared expert scaled by a sigmoid gate).

On the CPU the experts run as HF transformers runs them, one expert at a time over the tokens routed to it (in
ascending expert order, so fp32 results are HF's bit for bit), which picks the experts on the host. On a GPU they run
as two grouped Triton GEMMs with the routing kept on the device (kernels/triton_moe.py): no host sync, so the step
is captured in CUDA graphs like a dense model's. Tensor parallel: each rank holds its slice of every expert's
intermediate dimension (as the dense MLP's), and the experts' sum is all-reduced once.

Checkpoints name each expert's tensors (``...mlp.experts.{e}.gate_proj.weight``, Mixtral's ``block_sparse_moe.experts.
{e}.w1/w3/w2``); ``load_expert_tensors`` routes them into the stacked ``w13`` ``[E, 2 * I, H]`` and ``w2``
``[E, H, I]``.
"""
from __future__ import annotations

import re
from functools import partial
from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from pagedllm.config import num_experts
from pagedllm.distributed import get_tp_rank, get_tp_size, tp_all_reduce

# The last name is the tensor's kind: ``weight`` or a format's (``weight_scale``, ``qweight``, ``weight_absmax``, ...);
# the experts' quantization method says which it takes (an unknown one is an error naming them).
_EXPERT_TENSOR = re.compile(r"(.+\.mlp)\.experts\.(\d+)\.(gate_proj|up_proj|down_proj|w1|w3|w2)\.(\w+)")
_PART = {"gate_proj": "gate", "w1": "gate", "up_proj": "up", "w3": "up", "down_proj": "down", "w2": "down"}


def is_sparse_layer(hf_config, layer_idx: int) -> bool:
    """Whether decoder layer ``layer_idx`` has a MoE block (Qwen's ``mlp_only_layers`` / ``decoder_sparse_step``,
    GLM-4.5's ``first_k_dense_replace`` and ERNIE 4.5's ``moe_layer_start_index`` / ``moe_layer_end_index`` /
    ``moe_layer_interval`` keep some dense; Mixtral's are all sparse)."""
    if num_experts(hf_config) == 0 or layer_idx in (getattr(hf_config, "mlp_only_layers", None) or ()) \
            or layer_idx < (getattr(hf_config, "first_k_dense_replace", None) or 0):
        return False
    start = getattr(hf_config, "moe_layer_start_index", None)       # ERNIE 4.5: sparse from start to end (-1: last)
    if start is not None:
        end = hf_config.moe_layer_end_index
        if not isinstance(start, int) or not isinstance(end, int):
            raise ValueError(f"moe_layer_start_index={start!r} / moe_layer_end_index={end!r}: only one index each "
                             f"is supported (ERNIE 4.5's text MoE).")
        end = hf_config.num_hidden_layers - 1 if end == -1 else end
        return (layer_idx + 1) % (hf_config.moe_layer_interval or 1) == 0 and start <= layer_idx <= end
    step = getattr(hf_config, "decoder_sparse_step", None) or 1
    return (layer_idx + 1) % step == 0


class MoEExperts(nn.Module):
    """The stacked experts of one layer: ``w13 [E, 2 * I, H]`` (gate rows, then up rows) and ``w2 [E, H, I]``, this
    rank's slice of ``I``; a quantization config's ``MoEMethod`` (model/quantization/base.py) may hold them in its
    own form (FP8: e4m3 with scales)."""

    # LoRA adapters of the experts are not applied yet (pagedllm/lora skips the layers inside, and refuses an
    # adapter for them by name); the attention's and a shared expert's projections take them.
    no_lora = True

    def __init__(self, num_experts: int, hidden_size: int, intermediate_size: int, quant_config=None,
                 prefix: str = ""):
        super().__init__()
        self.tp_size, self.tp_rank = get_tp_size(), get_tp_rank()
        if intermediate_size % self.tp_size:
            raise ValueError(f"The experts' intermediate size {intermediate_size} does not split over "
                             f"tensor_parallel_size={self.tp_size}.")
        self.num_experts, self.hidden_size, self.shard = num_experts, hidden_size, intermediate_size // self.tp_size
        self.prefix = prefix
        self._parts: set[tuple[int, str]] = set()      # (expert, part) loaded from the checkpoint
        self._kinds: set[tuple[int, str, str]] = set()     # (expert, part, kind) of every tensor loaded
        self.quant_method = quant_config.get_moe_method(self, prefix) if quant_config is not None else None
        if self.quant_method is None:
            self.create_dense_weights(torch.get_default_dtype())
        else:           # its own parameters (FP8 online: the dense ones, quantized after loading)
            self.quant_method.create_weights(self, torch.get_default_dtype())

    def create_dense_weights(self, dtype: torch.dtype) -> None:
        self.w13 = nn.Parameter(torch.empty(self.num_experts, 2 * self.shard, self.hidden_size, dtype=dtype),
                                requires_grad=False)
        self.w2 = nn.Parameter(torch.empty(self.num_experts, self.hidden_size, self.shard, dtype=dtype),
                               requires_grad=False)

    def shard_of(self, part: str, tensor: torch.Tensor, per_row: int = 1, per_col: int = 1) -> torch.Tensor:
        """This rank's slice of a checkpoint tensor of one expert's ``part`` (gate / up ``[I, H]``: rows; down
        ``[H, I]``: columns); a scale tensor with one entry per ``per_row`` x ``per_col`` weights is cut at the
        same place."""
        if part == "down":
            return tensor[:, self.tp_rank * self.shard // per_col:(self.tp_rank + 1) * self.shard // per_col]
        return tensor[self.tp_rank * self.shard // per_row:(self.tp_rank + 1) * self.shard // per_row]

    def load(self, expert: int, part: str, tensor: torch.Tensor, kind: str = "weight") -> None:
        """One expert's gate / up ``[I, H]`` or down ``[H, I]`` checkpoint tensor (or a quantized format's scale of
        one): this rank's slice."""
        if not 0 <= expert < self.num_experts:
            raise ValueError(f"Checkpoint expert {expert} is out of range ({self.num_experts} experts).")
        if self.quant_method is None or not self.quant_method.load(self, expert, part, kind, tensor):
            if kind != "weight":
                raise ValueError(f"Checkpoint tensor {kind!r} of expert {expert} {part}: these experts are not "
                                 "quantized (pass quantization= for the checkpoint's format).")
            with torch.no_grad():       # into w13 / w2, whatever their dtype (FP8 checkpoints: e4m3)
                if part == "down":
                    self.w2.data[expert].copy_(self.shard_of(part, tensor))
                else:
                    row = 0 if part == "gate" else self.shard
                    self.w13.data[expert, row:row + self.shard].copy_(self.shard_of(part, tensor))
        if kind in ("weight", "qweight", "weight_packed"):      # the weight itself, in whatever form
            self._parts.add((expert, part))
        self._kinds.add((expert, part, kind))

    def check_loaded(self, name: str) -> None:
        """A checkpoint must give every expert its three tensors (random experts would give garbage silently)."""
        missing = [(e, p) for e in range(self.num_experts) for p in ("gate", "up", "down") if (e, p) not in self._parts]
        if missing:
            raise ValueError(f"Checkpoint is missing expert weights for {name}: "
                             + ", ".join(f"expert {e} {p}" for e, p in missing[:8]) + (" ..." if len(missing) > 8
                                                                                        else ""))
        # A quantized format's other tensors (scales, zero points, a 4-bit state): one missing would leave zeros.
        required = getattr(self.quant_method, "required_kinds", None)
        kinds = required(self) if required is not None else {}
        missing = [f"expert {e} {p} {k}" for e in range(self.num_experts) for p, ks in kinds.items() for k in ks
                   if (e, p, k) not in self._kinds]
        if missing:
            raise ValueError(f"Checkpoint is missing expert tensors for {name}: " + ", ".join(missing[:8])
                             + (" ..." if len(missing) > 8 else ""))

    def forward(self, x: torch.Tensor, top_ids: torch.Tensor, top_weights: torch.Tensor) -> torch.Tensor:
        """``x`` ``[T, H]``; ``top_ids`` / ``top_weights`` ``[T, k]``: this rank's part of the weighted sum."""
        return (self.fused if x.is_cuda else self.expert_loop)(x, top_ids, top_weights)

    def fused(self, x: torch.Tensor, top_ids: torch.Tensor, top_weights: torch.Tensor) -> torch.Tensor:
        """Every expert in two grouped Triton GEMMs, the routing on the device (the GPU path)."""
        from pagedllm.kernels.triton_moe import fused_moe
        return fused_moe(x, top_ids=top_ids, top_weights=top_weights, **self.kernel_weights())

    def kernel_weights(self) -> dict:
        """``fused_moe``'s weight arguments: the dense ``w13`` / ``w2``, or the quantization method's form."""
        if self.quant_method is not None:
            return self.quant_method.kernel_args(self)
        return {"w13": self.w13, "w2": self.w2}

    def expert_loop(self, x: torch.Tensor, top_ids: torch.Tensor, top_weights: torch.Tensor) -> torch.Tensor:
        """HF's loop: one expert at a time over its tokens (the CPU path; the reference for the fused kernels)."""
        out = torch.zeros_like(x)
        for e in top_ids.unique().tolist():          # ascending, as HF visits them
            tokens, slots = (top_ids == e).nonzero(as_tuple=True)
            gate_up, down = (self.quant_method.expert_matmuls(self, e, x.dtype) if self.quant_method is not None
                             else (partial(F.linear, weight=self.w13[e]), partial(F.linear, weight=self.w2[e])))
            gate, up = gate_up(x[tokens]).chunk(2, dim=-1)
            h = down(F.silu(gate) * up) * top_weights[tokens, slots, None]
            out.index_add_(0, tokens, h.to(out.dtype))
        return out


class SparseMoeBlock(nn.Module):
    """Router + experts (+ a shared expert), in HF's order of operations. ``routing``: "softmax_topk", the softmax
    over all experts, then the top-k (Qwen, Mixtral, OLMoE); "topk_softmax", the top-k logits softmaxed among
    themselves in fp32 (Granite MoE); "sparsemixer", PhiMoE's top-2 (sparsemixer_top2). ``renormalize`` (softmax_topk):
    the top-k probabilities divided by their sum (Mixtral always; Qwen's and OLMoE's ``norm_topk_prob``);
    ``weights_in_model_dtype``: Qwen casts them to the logits' dtype before the products, Mixtral keeps them fp32. The
    shared expert's output is scaled by a sigmoid gate (Qwen2-MoE) or added as it is (``shared_expert_gate=False``:
    GraniteMoeShared, Hunyuan). ``router_fp32``: the router's weight and logits in fp32 (Hunyuan)."""

    def __init__(self, hf_config, shared_expert: nn.Module | None = None, weights_in_model_dtype: bool = True,
                 quant_config=None, prefix: str = "", routing: str = "softmax_topk",
                 shared_expert_gate: bool = True, router_fp32: bool = False):
        super().__init__()
        n = num_experts(hf_config)
        self.top_k = hf_config.num_experts_per_tok
        assert routing in ("softmax_topk", "topk_softmax", "sparsemixer"), routing
        self.routing = routing
        self.renormalize = routing == "softmax_topk" and bool(getattr(hf_config, "norm_topk_prob", True))
        self.jitter_eps = float(getattr(hf_config, "router_jitter_noise", 0.0) or 0.0)     # sparsemixer's
        self.weights_in_model_dtype = weights_in_model_dtype
        intermediate = getattr(hf_config, "moe_intermediate_size", None) or hf_config.intermediate_size
        self.router_fp32 = router_fp32
        self.gate = nn.Linear(hf_config.hidden_size, n, bias=False,        # the router, replicated
                              dtype=torch.float32 if router_fp32 else None)
        self.gate.weight.requires_grad_(False)
        self.experts = MoEExperts(n, hf_config.hidden_size, intermediate, quant_config, f"{prefix}.experts")
        self.shared_expert = shared_expert
        self.shared_expert_gate = None
        if shared_expert is not None and shared_expert_gate:
            self.shared_expert_gate = nn.Linear(hf_config.hidden_size, 1, bias=False)
            self.shared_expert_gate.weight.requires_grad_(False)

    def forward(self, x: torch.Tensor, lora_step=None) -> torch.Tensor:
        logits = self.gate(x.float() if self.router_fp32 else x)
        if self.routing == "topk_softmax":
            top_logits, top_ids = torch.topk(logits.float(), self.top_k, dim=-1)
            top_weights = torch.softmax(top_logits, dim=-1)
        elif self.routing == "sparsemixer":
            top_weights, top_ids = sparsemixer_top2(logits, self.jitter_eps)
        else:
            probs = torch.softmax(logits, dim=-1, dtype=torch.float32)
            top_weights, top_ids = torch.topk(probs, self.top_k, dim=-1)
        if self.renormalize:
            top_weights /= top_weights.sum(dim=-1, keepdim=True)
        if self.weights_in_model_dtype:
            top_weights = top_weights.to(logits.dtype)
        out = self.experts(x, top_ids, top_weights)
        if self.experts.tp_size > 1:
            out = tp_all_reduce(out)
        if self.shared_expert is not None:     # a dense MLP: its projections take LoRA as any model's
            shared = self.shared_expert(x, lora_step)
            if self.shared_expert_gate is not None:
                shared = torch.sigmoid(self.shared_expert_gate(x)) * shared
            out = out + shared
        return out


def sparsemixer_top2(logits: torch.Tensor, jitter_eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """PhiMoE's router at inference (HF transformers' ``sparsemixer`` outside training), ``(weights, ids)`` ``[T, 2]``
    in the logits' dtype: the best expert, weighted by its softmax among the experts whose logit is within a
    relative ``2 * jitter_eps`` of it (the others masked); then the best of the rest, weighted alike among the rest.
    Plain tensor ops: on the GPU no host sync, so it runs inside the CUDA graphs."""
    def pick(scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        threshold, best = scores.max(dim=-1, keepdim=True)
        far = (threshold - logits) / logits.abs().clamp(min=threshold) > 2 * jitter_eps
        return scores.masked_fill(far, float("-inf")).softmax(dim=-1).gather(-1, best), best

    first_weight, first = pick(logits)
    second_weight, second = pick(logits.scatter(-1, first, float("-inf")))
    return torch.cat((first_weight, second_weight), dim=-1), torch.cat((first, second), dim=-1)


# ---- DeepSeek-V2 / V3 routing (model/models/deepseek.py): each returns ``(top_weights fp32, top_ids)`` ``[T, k]``,
# before the routed scaling factor, in HF transformers' order of operations (DeepseekV2TopkRouter /
# DeepseekV3TopkRouter), so fp32 picks HF's experts. Plain tensor ops: on the GPU they stay on the device (no host
# sync), so the step is captured in CUDA graphs and the fused experts take the ids as they are.
def softmax_group_topk(logits: torch.Tensor, top_k: int, num_groups: int | None = None,
                       topk_groups: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """DeepSeek-V2: softmax over the experts, then the top ``top_k`` (``topk_method`` "greedy"), or with
    ``num_groups`` ("group_limited_greedy") the top ``top_k`` within the ``topk_groups`` groups of experts whose best
    score is highest (the others' scores set to 0)."""
    scores = logits.softmax(dim=-1, dtype=torch.float32)
    if num_groups:
        best = scores.view(-1, num_groups, scores.shape[-1] // num_groups).max(dim=-1).values
        scores = scores.masked_fill(~_chosen_groups(best, topk_groups, scores.shape[-1]), 0.0)
    return torch.topk(scores, k=top_k, dim=-1, sorted=False)


def sigmoid_noaux_topk(logits: torch.Tensor, top_k: int, correction_bias: torch.Tensor, num_groups: int,
                       topk_groups: int, renormalize: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """DeepSeek-V3 (``topk_method`` "noaux_tc", ``scoring_func`` "sigmoid"): sigmoid scores; the experts are chosen
    by score + ``correction_bias`` (``e_score_correction_bias``) within the ``topk_groups`` groups whose two best
    biased scores sum highest, and weighted by their unbiased scores (divided by their sum + 1e-20 when
    ``renormalize``, ``norm_topk_prob``)."""
    scores = logits.sigmoid()
    choice = scores + correction_bias
    n = scores.shape[-1]
    best_two = choice.view(-1, num_groups, n // num_groups).topk(2, dim=-1)[0].sum(dim=-1)
    choice = choice.masked_fill(~_chosen_groups(best_two, topk_groups, n), float("-inf"))
    top_ids = torch.topk(choice, k=top_k, dim=-1, sorted=False)[1]
    top_weights = scores.gather(1, top_ids)
    if renormalize:
        top_weights = top_weights / (top_weights.sum(dim=-1, keepdim=True) + 1e-20)
    return top_weights, top_ids


def _chosen_groups(group_scores: torch.Tensor, topk_groups: int, num_experts: int) -> torch.Tensor:
    """``[T, num_experts]`` bool: the experts of each token's ``topk_groups`` best groups."""
    num_groups = group_scores.shape[-1]
    chosen = torch.zeros_like(group_scores).scatter_(1, torch.topk(group_scores, k=topk_groups, dim=-1,
                                                                   sorted=False)[1], 1)
    return chosen.unsqueeze(-1).expand(-1, num_groups, num_experts // num_groups).reshape(-1, num_experts).bool()


def load_expert_tensors(model: nn.Module, weights: Iterable[tuple[str, torch.Tensor]],
                        loaded: set[str]) -> Iterable[tuple[str, torch.Tensor]]:
    """The checkpoint's tensors, the experts' loaded into their ``MoEExperts`` on the way (their stacked parameters'
    names added to ``loaded``); Mixtral's ``block_sparse_moe`` names read as ``mlp``. Experts of layers another
    pipeline stage holds are skipped."""
    for name, tensor in weights:
        name = name.replace(".block_sparse_moe.", ".mlp.")
        match = _EXPERT_TENSOR.fullmatch(name)
        if match is None:
            yield name, tensor
            continue
        prefix, expert, part, kind = match.groups()
        try:
            experts = model.get_submodule(f"{prefix}.experts")
        except AttributeError:
            continue                       # a layer of another pipeline stage
        if not isinstance(experts, MoEExperts):
            continue
        if getattr(model, "weights_processed", False) and experts.quant_method is not None:
            raise ValueError(f"load_weights: {name!r} is a weight of quantized experts, converted to their kernels' "
                             "layout when the model loaded; updating quantized weights after loading is not "
                             "supported yet (dense layers are).")
        experts.load(int(expert), _PART[part], tensor, kind)
        # every parameter of the stacked experts (a format's scales too: its own check finds a missing one)
        loaded.update(f"{prefix}.experts.{n}" for n, _ in experts.named_parameters())
