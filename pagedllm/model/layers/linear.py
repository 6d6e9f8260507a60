"""Linear layers with per-parameter weight loaders.

Fused projections (QKV, gate+up) are one matmul; each HF checkpoint tensor is copied into its slice by the layer's
``weight_loader`` so model files stay free of loading logic. The names follow vLLM's parallel layers: tensor
parallelism will shard these same layers (column: output rows, row: input columns).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pagedllm import envs
from pagedllm.distributed import get_tp_rank, get_tp_size, kv_head_range, tp_all_reduce
from pagedllm.kernels import settings as kernel_settings
from pagedllm.kernels.cpu_onednn import onednn_linear, onednn_pack

# GPU decode at small batches: the Triton skinny GEMM (kernels/triton_gemv.py) reads the weights faster than cuBLAS
# on every Qwen2.5-1.5B/7B projection at M = 1 (1.07-1.68x per call, H200), and at 2 <= M <= 16 on the shapes
# triton_gemv.preferred lists (measured per shape and M bucket). On by default: end to end on an H200, batch-1
# decode went from 530.7 to 611.7 tok/s (Qwen2.5-1.5B) and from 220.2 to 242.8 tok/s (7B). --no-triton-gemv
# (default env PAGEDLLM_TRITON_GEMV) turns it off; PAGEDLLM_SKINNY_MAX_M=1 keeps it to M = 1 (A/B runs; read once,
# when this module is imported, not per call).
_SKINNY_MAX_M = envs.PAGEDLLM_SKINNY_MAX_M


def _use_skinny(x: torch.Tensor, weight: torch.Tensor) -> bool:
    if x.dim() != 2 or x.shape[0] > _SKINNY_MAX_M or not kernel_settings.current.triton_gemv:
        return False
    from pagedllm.kernels.triton_gemv import preferred     # M == 1 always; above, where it beat cuBLAS
    return preferred(x.shape[0], weight.shape[0], weight.shape[1])


def cuda_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``F.linear`` on the GPU, through the skinny-GEMM kernel where it is faster."""
    if _use_skinny(x, weight):
        from pagedllm.kernels.triton_gemv import skinny_linear
        y = skinny_linear(x, weight, bias)
        if y is not None:
            return y
    return F.linear(x, weight, bias)


def cuda_linear_silu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor | None:
    """``cuda_linear`` of a fused [gate; up] ``weight`` with SiLU-and-mul after it, in one skinny-GEMM kernel
    (triton_gemv.skinny_linear_silu) where ``cuda_linear`` would take the skinny GEMM; None elsewhere."""
    if not _use_skinny(x, weight):
        return None
    from pagedllm.kernels.triton_gemv import skinny_linear_silu
    return skinny_linear_silu(x, weight, bias)


def default_weight_loader(param: torch.Tensor, loaded: torch.Tensor) -> None:
    if param.shape != loaded.shape:
        raise ValueError(f"Weight shape mismatch: parameter {tuple(param.shape)} vs checkpoint {tuple(loaded.shape)}")
    param.data.copy_(loaded)


def load_param(param: torch.Tensor, loaded: torch.Tensor, shard_id: int | str | None = None) -> None:
    """A checkpoint tensor into ``param`` through its ``weight_loader`` (``shard_id``: the part of a fused layer),
    floating-point values in the parameter's dtype (packed integers, zero points and g_idx keep theirs)."""
    loader = getattr(param, "weight_loader", default_weight_loader)
    if loaded.is_floating_point() and param.is_floating_point():
        loaded = loaded.to(param.dtype)
    with torch.no_grad():
        if shard_id is None:
            loader(param, loaded)
        else:
            loader(param, loaded, shard_id)


# How a parameter is cut for tensor parallelism and for the parts of a fused layer: the dim over the output features
# and the one over the input features (None: not cut that way), and, for packed integers, how many features one
# element holds along the packed dim. A dense weight [out, in] and bias [out] need no attributes; a quantization
# method's parameters carry them (pagedllm/model/quantization/int_weight.py).
def _output_dim(param: torch.Tensor) -> int | None:
    return getattr(param, "output_dim", 0)


def _input_dim(param: torch.Tensor) -> int | None:
    return getattr(param, "input_dim", 1 if param.dim() == 2 else None)


def _output_pack(param: torch.Tensor) -> int:
    packed = getattr(param, "packed_dim", None)
    return getattr(param, "pack_factor", 1) if packed is not None and packed == _output_dim(param) else 1


def _units(size: int, pack: int, what: str) -> int:
    if size % pack:
        raise ValueError(f"{what} ({size}) is not a multiple of the {pack} values packed in one element.")
    return size // pack


class LinearBase(nn.Module):
    """``y = x W^T + b``. With a ``quant_config`` whose method covers this layer (by its ``prefix``, e.g.
    ``model.layers.0.self_attn.qkv_proj``), the method creates the weight's parameters and does the matmul."""

    def __init__(self, input_size: int, output_size: int, bias: bool = False, quant_config=None, prefix: str = "",
                 output_sizes: list[int] | None = None, full_input_size: int | None = None):
        super().__init__()
        self.input_size, self.output_size = input_size, output_size
        self.prefix, self.params_dtype = prefix, torch.get_default_dtype()
        self.quant_method = quant_config.get_linear_method(self, prefix) if quant_config is not None else None
        if self.quant_method is None:
            self.weight = nn.Parameter(torch.empty(output_size, input_size), requires_grad=False)
            self.weight.weight_loader = self._load
        else:
            self.quant_method.create_weights(self, input_size, list(output_sizes or [output_size]), self.params_dtype,
                                             weight_loader=self._load,
                                             full_input_size=full_input_size or input_size)
        if bias:
            self.bias = nn.Parameter(torch.empty(output_size), requires_grad=False)
            self.bias.weight_loader = self._load
        else:
            self.register_parameter("bias", None)
        # CPU: the oneDNN-reordered weight, made at the first forward. The dense weight's storage is then released
        # (as vLLM's CPU backend does: the model would otherwise take twice its memory) and comes back, exactly,
        # from the packed copy if anything needs it again (a weight reload, a grad-mode call, another device).
        self._packed: torch.Tensor | None = None
        self._pack_tried = False
        # enable_lora: this layer's resident adapters (pagedllm/lora/layers.py LoRASlots), set by the worker's
        # LoRAManager; a step's ForwardBatch.lora_step says which one each token runs with.
        self.lora = None

    def _load(self, param: torch.Tensor, loaded: torch.Tensor, *args) -> None:
        self.unpack()
        self.weight_loader(param, loaded, *args)

    def weight_loader(self, param: torch.Tensor, loaded: torch.Tensor) -> None:
        default_weight_loader(param, loaded)

    def unpack(self) -> None:
        """Give the weight its dense storage back (no-op unless packed)."""
        if self._packed is not None:
            with torch.inference_mode(False):    # a normal tensor: later in-place loads work outside inference mode
                self.weight.data = self._packed.to_dense()
            self._packed = None
        self._pack_tried = False

    def forward(self, x: torch.Tensor, lora_step=None) -> torch.Tensor:
        return self.add_lora(x, self.linear(x, self.bias), lora_step)

    def lora_shard(self, a: torch.Tensor, b: torch.Tensor, shard_id=None) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's part of a LoRA adapter's A [r, in] and B [out, r] for this layer (or for part ``shard_id`` of
        a fused one), cut as the layer cuts its weight: a replicated layer keeps both whole."""
        return a, b

    def add_lora(self, x: torch.Tensor, y: torch.Tensor, lora_step) -> torch.Tensor:
        """``y`` plus the LoRA delta of each token's adapter (``lora_step``: pagedllm/lora/layers.py LoRAStep, None:
        no adapter in the step)."""
        if lora_step is None or self.lora is None:
            return y
        return self.lora.add_delta(x, y, lora_step)

    def linear(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if self.quant_method is not None:
            return self.quant_method.apply(self, x, bias)
        if x.is_cuda:
            return cuda_linear(x, self.weight, bias)
        if not self._pack_tried:
            self._pack_tried = True
            with torch.inference_mode(False):
                self._packed = onednn_pack(self.weight)
                if self._packed is not None:
                    self.weight.data = self.weight.data.new_empty(0)
        if self._packed is not None:
            if x.dtype == self._packed.dtype and not (torch.is_grad_enabled() and x.requires_grad):
                return onednn_linear(x, self._packed, bias)
            self.unpack()
            self._pack_tried = True    # this module's inputs do not fit the packed path: stay dense
        return F.linear(x, self.weight, bias)

    def _apply(self, fn, *args, **kwargs):
        self.unpack()   # .to(device / dtype): move the dense weight, pack again (if it applies) at the next forward
        return super()._apply(fn, *args, **kwargs)


class ReplicatedLinear(LinearBase):
    pass


def shard_of(loaded: torch.Tensor, dim: int, index: int, size: int, num_shards: int) -> torch.Tensor:
    """Shard ``index`` (of ``size`` along ``dim``) of a whole checkpoint tensor; the whole must be ``num_shards``
    shards (a checkpoint of another shape is an error, not a silent slice)."""
    if num_shards == 1:
        return loaded
    if loaded.dim() <= dim or loaded.shape[dim] != size * num_shards:
        raise ValueError(f"Weight shape mismatch: checkpoint {tuple(loaded.shape)} is not {num_shards} shards of "
                         f"{size} along dim {dim}")
    return loaded.narrow(dim, index * size, size)


def _divide(total: int, world_size: int, what: str) -> int:
    if total % world_size:
        raise ValueError(f"{what} ({total}) must be divisible by tensor parallel size ({world_size}).")
    return total // world_size


class ColumnParallelLinear(LinearBase):
    """Tensor parallel: each rank holds a contiguous block of the output rows (and of the bias); the output stays
    sharded (a RowParallelLinear takes it as its sharded input)."""

    def __init__(self, input_size: int, output_size: int, bias: bool = False, quant_config=None, prefix: str = ""):
        self.tp_rank, self.tp_size = get_tp_rank(), get_tp_size()
        super().__init__(input_size, _divide(output_size, self.tp_size, "Output size"), bias, quant_config, prefix)

    def weight_loader(self, param: torch.Tensor, loaded: torch.Tensor) -> None:
        dim = _output_dim(param)
        if dim is None:
            return default_weight_loader(param, loaded)
        default_weight_loader(param, shard_of(loaded, dim, self.tp_rank, param.shape[dim], self.tp_size))

    def lora_shard(self, a: torch.Tensor, b: torch.Tensor, shard_id=None) -> tuple[torch.Tensor, torch.Tensor]:
        return a, shard_of(b, 0, self.tp_rank, self.output_size, self.tp_size)     # B's rows: this rank's outputs


class RowParallelLinear(LinearBase):
    """Tensor parallel: each rank holds a block of the input columns, multiplies its shard of the input and the
    partial outputs are summed over the ranks (the bias is added once, by rank 0)."""

    def __init__(self, input_size: int, output_size: int, bias: bool = False, quant_config=None, prefix: str = ""):
        self.tp_rank, self.tp_size = get_tp_rank(), get_tp_size()
        super().__init__(_divide(input_size, self.tp_size, "Input size"), output_size, bias, quant_config, prefix,
                         full_input_size=input_size)

    def weight_loader(self, param: torch.Tensor, loaded: torch.Tensor) -> None:
        dim = _input_dim(param)
        if dim is None:     # the bias (and per-column scales): whole on every rank
            return default_weight_loader(param, loaded)
        default_weight_loader(param, shard_of(loaded, dim, self.tp_rank, param.shape[dim], self.tp_size))

    def lora_shard(self, a: torch.Tensor, b: torch.Tensor, shard_id=None) -> tuple[torch.Tensor, torch.Tensor]:
        # A's columns: this rank's inputs; each rank's partial delta joins the all-reduce with its partial output.
        return shard_of(a, 1, self.tp_rank, self.input_size, self.tp_size), b

    def forward(self, x: torch.Tensor, lora_step=None) -> torch.Tensor:
        if self.tp_size == 1:
            return self.add_lora(x, self.linear(x, self.bias), lora_step)
        return tp_all_reduce(self.add_lora(x, self.linear(x, self.bias if self.tp_rank == 0 else None), lora_step))


class MergedColumnParallelLinear(LinearBase):
    """Several projections of the same input stacked on the output dim (e.g. gate_proj + up_proj). Tensor
    parallel: each projection is sharded on its own, so a rank holds [its gate rows | its up rows]."""

    def __init__(self, input_size: int, output_sizes: list[int], bias: bool = False, quant_config=None,
                 prefix: str = ""):
        self.tp_rank, self.tp_size = get_tp_rank(), get_tp_size()
        self.full_output_sizes = list(output_sizes)
        self.output_sizes = [_divide(n, self.tp_size, "Output size") for n in output_sizes]
        super().__init__(input_size, sum(self.output_sizes), bias, quant_config, prefix, self.output_sizes)
        # PAGEDLLM_GATE_UP_SILU, read when the model is built: silu_and_mul in the skinny GEMM's epilogue.
        self.silu_epilogue = envs.PAGEDLLM_GATE_UP_SILU

    def weight_loader(self, param: torch.Tensor, loaded: torch.Tensor, shard_id: int | None = None) -> None:
        dim, pack = _output_dim(param), _output_pack(param)
        if dim is None:       # not cut along the outputs: the same for every part
            return default_weight_loader(param, loaded)
        if shard_id is None:
            if self.tp_size == 1:
                return default_weight_loader(param, loaded)
            sizes = [_units(n, pack, "Output size") for n in self.full_output_sizes]
            for i, part in enumerate(loaded.split(sizes, dim=dim)):    # a fused checkpoint tensor
                self.weight_loader(param, part, i)
            return
        offset = _units(sum(self.output_sizes[:shard_id]), pack, "Output offset")
        size = _units(self.output_sizes[shard_id], pack, "Output size")
        default_weight_loader(param.data.narrow(dim, offset, size),
                              shard_of(loaded, dim, self.tp_rank, size, self.tp_size))

    def lora_shard(self, a: torch.Tensor, b: torch.Tensor, shard_id=None) -> tuple[torch.Tensor, torch.Tensor]:
        return a, shard_of(b, 0, self.tp_rank, self.output_sizes[shard_id], self.tp_size)

    def fused_forward(self, x: torch.Tensor, lora_step=None) -> torch.Tensor | None:
        """``silu(gate) * up`` of this [gate | up] layer's output (PAGEDLLM_GATE_UP_SILU) in one skinny-GEMM
        kernel where that applies (dense weights, no adapter in the step); None elsewhere: the caller runs the layer
        and the activation."""
        if (not self.silu_epilogue or self.quant_method is not None or not x.is_cuda or len(self.output_sizes) != 2
                or self.output_sizes[0] != self.output_sizes[1] or (lora_step is not None and self.lora is not None)):
            return None
        return cuda_linear_silu(x, self.weight, self.bias)


class QKVParallelLinear(LinearBase):
    """Q, K and V projections in one matrix: rows [q (H*d) | k (Hkv*d) | v (Hkv*d)]. Tensor parallel: a rank holds
    H/tp query heads and the KV heads they attend with (replicated when there are fewer KV heads than ranks);
    ``num_heads`` / ``num_kv_heads`` are this rank's."""

    def __init__(self, hidden_size: int, head_dim: int, num_heads: int, num_kv_heads: int, bias: bool = False,
                 quant_config=None, prefix: str = ""):
        self.tp_rank, self.tp_size = get_tp_rank(), get_tp_size()
        self.head_dim = head_dim
        self.total_num_heads, self.total_num_kv_heads = num_heads, num_kv_heads
        self.num_heads = _divide(num_heads, self.tp_size, "Total number of attention heads")
        self.kv_head_start, self.num_kv_heads = kv_head_range(num_kv_heads, self.tp_rank, self.tp_size)
        self.q_size, self.kv_size = self.num_heads * head_dim, self.num_kv_heads * head_dim
        super().__init__(hidden_size, self.q_size + 2 * self.kv_size, bias, quant_config, prefix,
                         [self.q_size, self.kv_size, self.kv_size])

    def weight_loader(self, param: torch.Tensor, loaded: torch.Tensor, shard_id: str | None = None) -> None:
        dim, pack = _output_dim(param), _output_pack(param)
        if dim is None:       # not cut along the outputs: the same for every part
            return default_weight_loader(param, loaded)
        if shard_id is None:
            if self.tp_size == 1:
                return default_weight_loader(param, loaded)
            full_q, full_kv = self.total_num_heads * self.head_dim, self.total_num_kv_heads * self.head_dim
            sizes = [_units(n, pack, "Output size") for n in (full_q, full_kv, full_kv)]
            for sid, part in zip("qkv", loaded.split(sizes, dim=dim)):
                self.weight_loader(param, part, sid)
            return
        offset, size = {"q": (0, self.q_size), "k": (self.q_size, self.kv_size),
                        "v": (self.q_size + self.kv_size, self.kv_size)}[shard_id]
        offset, size = _units(offset, pack, "Output offset"), _units(size, pack, "Output size")
        if shard_id == "q":
            part = shard_of(loaded, dim, self.tp_rank, size, self.tp_size)
        else:     # KV heads may be replicated: this rank's head(s), from the whole checkpoint tensor
            part = shard_of(loaded, dim, self.kv_head_start // self.num_kv_heads, size,
                            self.total_num_kv_heads // self.num_kv_heads)
        default_weight_loader(param.data.narrow(dim, offset, size), part)

    def lora_shard(self, a: torch.Tensor, b: torch.Tensor, shard_id=None) -> tuple[torch.Tensor, torch.Tensor]:
        if shard_id == "q":
            return a, shard_of(b, 0, self.tp_rank, self.q_size, self.tp_size)
        # This rank's KV head(s), replicated when there are fewer KV heads than ranks (as the weight).
        return a, shard_of(b, 0, self.kv_head_start // self.num_kv_heads, self.kv_size,
                           self.total_num_kv_heads // self.num_kv_heads)
