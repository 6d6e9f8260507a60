"""What the weight-only integer formats (AWQ, GPTQ, compressed-tensors pack-quantized) share: checkpoint parameters
that carry their sharding, the conversion to the canonical ``PackedWeight`` once loaded, and the matmul.

A checkpoint parameter says how the linear layers' weight loaders shard it for tensor parallelism and cut the parts
of a fused layer out of it (pagedllm/model/layers/linear.py reads these attributes):
- ``output_dim`` / ``input_dim``: the dim that runs over the weight's output features N / input features K (or its
  groups of K); None when the parameter is not split that way (it is then loaded whole on every rank);
- ``packed_dim`` / ``pack_factor``: values packed ``pack_factor`` to an int32 along that dim, so offsets and sizes
  along it are in units of ``pack_factor`` features.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from pagedllm.kernels.quant.cpu import CpuPackedWeight, cpu_packed_matmul, prepare_cpu_weight
from pagedllm.kernels.quant.packed import PackedWeight, dequantize, pack_along_k, unpack_along_k
from pagedllm.model.quantization.base import ExpertLayersMoEMethod, LinearMethod

# Names of the buffers the converted weight lives in after loading (what the memory figure counts).
_CANONICAL = ("qweight", "scales", "offsets", "perm")


def add_checkpoint_param(layer: nn.Module, name: str, shape: tuple[int, ...], dtype: torch.dtype,
                         weight_loader: Callable, *, output_dim: int | None, input_dim: int | None,
                         packed_dim: int | None = None, pack_factor: int = 1, optional: bool = False,
                         fill: torch.Tensor | None = None) -> nn.Parameter:
    """Register a checkpoint tensor on ``layer``. ``optional``: the checkpoint may leave it out (it then keeps
    ``fill``); dummy weights also keep ``fill``."""
    data = torch.zeros(shape, dtype=dtype) if fill is None else fill.to(dtype)
    param = nn.Parameter(data, requires_grad=False)
    param.output_dim, param.input_dim = output_dim, input_dim
    param.packed_dim, param.pack_factor = packed_dim, pack_factor
    param.weight_loader = weight_loader
    param.optional_weight = optional
    param.keep_on_dummy = fill is not None
    layer.register_parameter(name, param)
    return param


def group_count(input_size: int, group_size: int, what: str) -> int:
    """Groups along this rank's K; ValueError when they do not divide it (vLLM's check)."""
    if group_size <= 0 or input_size % group_size:
        raise ValueError(f"The input size ({input_size}) is not aligned with the quantized weight shape: "
                         f"{what} group_size {group_size} must divide it (with tensor parallel, this rank's share).")
    return input_size // group_size


def add_g_idx_param(layer: nn.Module, name: str, input_size: int, group: int, loader: Callable, what: str) -> None:
    """The input rows' groups (``[K]``, optional: in order, ``k // group``, when the checkpoint leaves it out). The
    parts of a fused layer (q/k/v, gate/up) take the same input, so GPTQ gives them the same activation order: one
    g_idx, checked as each part's loads."""
    def load(param: torch.Tensor, loaded: torch.Tensor, *args: Any) -> None:
        before = param.data.clone() if getattr(layer, f"{name}_loaded") else None
        loader(param, loaded, *args)
        if before is not None and not torch.equal(before, param.data):
            raise ValueError(f"{what} {name} differs between the parts of the fused layer {layer.prefix!r}.")
        setattr(layer, f"{name}_loaded", True)

    setattr(layer, f"{name}_loaded", False)
    add_checkpoint_param(layer, name, (input_size,), torch.int32, load, output_dim=None, input_dim=0, optional=True,
                         fill=torch.arange(input_size, dtype=torch.int32) // group)


def rows_in_group_order(qweight: torch.Tensor, bits: int, g_idx: torch.Tensor, group: int,
                        what: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Activation-ordered checkpoints (GPTQ's desc_act, compressed-tensors' actorder 'group'): ``g_idx`` gives each
    input row's group. Returns the canonical ``qweight`` (packed along K) with its rows sorted by group, so groups are
    contiguous, and the permutation the layer applies to ``x``'s columns; (qweight, None) when the rows are in order
    already."""
    g_idx = g_idx.to(torch.int64)
    g_idx = g_idx - g_idx.min()          # a row-parallel rank's rows: its groups numbered from its first one
    in_order = torch.arange(g_idx.shape[0], device=g_idx.device) // group
    if torch.equal(g_idx, in_order):
        return qweight, None
    perm = torch.argsort(g_idx, stable=True)
    if not torch.equal(g_idx[perm], in_order):
        raise ValueError(f"{what} does not put {group} rows in each group: this checkpoint is not one GPTQ "
                         f"writes.")
    return pack_along_k(unpack_along_k(qweight, bits)[perm], bits), perm


class PackedIntLinearMethod(LinearMethod):
    """A weight-only integer method: ``create_weights`` (per format) registers the checkpoint's tensors;
    ``to_packed`` (per format) turns them into a ``PackedWeight``; the rest is shared."""

    #: the checkpoint parameter names ``to_packed`` consumes (dropped after the conversion)
    checkpoint_params: tuple[str, ...] = ()

    def to_packed(self, layer: nn.Module) -> PackedWeight:
        raise NotImplementedError

    @staticmethod
    def cpu_form(w: PackedWeight) -> bool:
        """Whether the weight takes the CPU kernels' form (torch's packed int4 / a dense copy) or stays canonical
        for the Triton kernels."""
        return w.qweight.device.type == "cpu"

    def process_weights_after_loading(self, layer: nn.Module) -> None:
        w = self.to_packed(layer)
        for name in self.checkpoint_params:
            if name in layer._parameters:
                delattr(layer, name)
        dtype = layer.params_dtype        # the model's dtype: scales and offsets in it, as the activations
        # Row-major, as the Triton kernels index them (GPTQ's offsets come out of its zero-point unpacking
        # transposed: read with a [groups, N] row stride they gave garbage on the GPU until session 22).
        w.qweight = w.qweight.contiguous()
        w.scales, w.offsets = w.scales.to(dtype).contiguous(), w.offsets.to(dtype).contiguous()
        if self.cpu_form(w):
            cpu = prepare_cpu_weight(w, dtype)
            layer.cpu_weight = cpu
            tensors = {f"quant_{k}": v for k, v in cpu.tensors().items()}
        else:
            layer.cpu_weight = None
            tensors = {f"quant_{k}": getattr(w, k) for k in _CANONICAL if getattr(w, k) is not None}
        layer.packed_bits, layer.packed_group_size = w.bits, w.group_size
        for name, tensor in tensors.items():
            layer.register_buffer(name, tensor, persistent=False)

    def apply(self, layer: nn.Module, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        cpu: CpuPackedWeight | None = layer.cpu_weight
        if cpu is not None:
            return cpu_packed_matmul(x, cpu, bias)
        w = PackedWeight(layer.quant_qweight, layer.quant_scales, layer.quant_offsets, layer.packed_bits,
                         layer.packed_group_size, getattr(layer, "quant_perm", None))
        shape = x.shape
        y = _gpu_packed_matmul()(x.reshape(-1, shape[-1]), w, bias)
        return y.reshape(*shape[:-1], y.shape[-1])


def _gpu_packed_matmul() -> Callable:
    """The Triton dequantize-GEMM (kernels/quant/triton_packed.py), imported on first use so that the CPU never
    imports Triton; where that module is absent, a dequantize-then-matmul (correct, slow, a dense temporary)."""
    try:
        from pagedllm.kernels.quant.triton_packed import packed_matmul
        return packed_matmul
    except ImportError:
        return _dequantized_matmul


def _dequantized_matmul(x: torch.Tensor, w: PackedWeight, bias: torch.Tensor | None) -> torch.Tensor:
    if w.perm is not None:
        x = x[:, w.perm]
    y = x @ dequantize(w, x.dtype)
    return y if bias is None else y + bias


def extra_loader(extra: dict[str, Any]) -> Callable:
    loader = extra.get("weight_loader")
    if loader is None:
        raise ValueError("create_weights needs the layer's weight_loader")
    return loader


class PackedIntMoEMethod(ExpertLayersMoEMethod):
    """AWQ / GPTQ / compressed-tensors experts: linear layers of the format (``ExpertLayersMoEMethod``); on the GPU
    they are stacked after conversion (``w13 [E, H / pack, 2I]``, ``w2 [E, I / pack, H]`` int32 words, scales and
    offsets per group) for the fused kernels; on the CPU the loop calls each expert's layers. GPTQ's ``desc_act``:
    each expert's rows stay sorted by group as its layer holds them, and the kernels read the activations through
    that expert's permutation (``w13_perm [E, H]``, ``w2_perm [E, I]``)."""

    def __init__(self, config: Any):
        super().__init__(config)
        self.bits = self.group = 0
        self.has_perm = False

    def process_weights_after_loading(self, experts: nn.Module) -> None:
        # The expert layers were converted first (the loader goes through children before parents).
        pairs = self.layer_pairs(experts)
        self.bits = pairs[0][0].packed_bits
        if pairs[0][0].cpu_weight is not None:
            return                           # the CPU loop calls the layers
        g13, g2 = pairs[0][0].packed_group_size, pairs[0][1].packed_group_size     # one format: every expert alike
        k13, k2 = experts.hidden_size, experts.shard
        # one group size for both kernels, or one group per column in both (per channel)
        self.group = g13 if g13 == g2 else 0 if (g13, g2) == (k13, k2) else -1
        if self.group < 0:
            raise ValueError(f"{self.config.name} experts: group sizes {g13} / {g2} of gate_up / down differ.")
        for name in ("qweight", "scales", "offsets"):
            experts.register_buffer(f"w13_{name}", torch.stack([getattr(up, f"quant_{name}") for up, _ in pairs]),
                                    persistent=False)
            experts.register_buffer(f"w2_{name}", torch.stack([getattr(down, f"quant_{name}") for _, down in pairs]),
                                    persistent=False)
        self.has_perm = any(getattr(layer, "quant_perm", None) is not None for pair in pairs for layer in pair)
        if self.has_perm:
            def perm(layer: nn.Module, k: int) -> torch.Tensor:     # rows already in order: the identity
                p = getattr(layer, "quant_perm", None)
                return p if p is not None else torch.arange(k, device=layer.quant_qweight.device)
            experts.register_buffer("w13_perm", torch.stack([perm(up, k13) for up, _ in pairs]).to(torch.int32),
                                    persistent=False)
            experts.register_buffer("w2_perm", torch.stack([perm(down, k2) for _, down in pairs]).to(torch.int32),
                                    persistent=False)
        del experts.expert_layers            # their tensors are in the stacks now

    def kernel_args(self, experts: nn.Module) -> dict[str, Any]:
        return {"w13": experts.w13_qweight, "w2": experts.w2_qweight, "w13_scale": experts.w13_scales,
                "w2_scale": experts.w2_scales, "w13_offset": experts.w13_offsets, "w2_offset": experts.w2_offsets,
                "bits": self.bits, "scale_group": (1, self.group),
                **({"w13_perm": experts.w13_perm, "w2_perm": experts.w2_perm} if self.has_perm else {})}
