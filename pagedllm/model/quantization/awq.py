"""AWQ checkpoints (AutoAWQ / llm-compressor "GEMM" version): 4-bit weights with a zero point per group.

The checkpoint, for a linear layer of K inputs and N outputs with groups of G along K:
- ``qweight`` int32 ``[K, N / 8]``: eight 4-bit values of one input row packed along N, in AWQ's interleaved order
  (nibble ``i`` of a word holds column ``[0, 2, 4, 6, 1, 3, 5, 7][i]`` of its eight);
- ``qzeros`` int32 ``[K / G, N / 8]``: the zero points, packed the same way;
- ``scales`` ``[K / G, N]`` (fp16); the weight is ``W[k, n] = (q[k, n] - z[k // G, n]) * s[k // G, n]``.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from pagedllm.kernels.quant.packed import PackedWeight, pack_along_k, unpack_along_k
from pagedllm.model.quantization.base import QuantizationConfig
from pagedllm.model.quantization.int_weight import (PackedIntLinearMethod, PackedIntMoEMethod, add_checkpoint_param,
                                                    extra_loader, group_count)

# Position ``i`` of the unpacked nibbles holds column AWQ_ORDER[i]; AWQ_REVERSE_ORDER puts them back in order.
AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)
AWQ_REVERSE_ORDER = (0, 4, 1, 5, 2, 6, 3, 7)


def unpack_awq(packed: torch.Tensor) -> torch.Tensor:
    """int32 ``[R, C]`` in AWQ's packing -> 4-bit values ``[R, 8 * C]`` (int32) in column order."""
    nibbles = unpack_along_k(packed.t(), 4).t()                  # [R, 8 * C], position 8c + i = column AWQ_ORDER[i]
    return nibbles.reshape(packed.shape[0], -1, 8)[..., list(AWQ_REVERSE_ORDER)].reshape(packed.shape[0], -1)


def pack_awq(values: torch.Tensor) -> torch.Tensor:
    """4-bit values ``[R, 8 * C]`` -> int32 ``[R, C]`` in AWQ's packing (AutoAWQ's packer; for tests and tools)."""
    R, N = values.shape
    interleaved = values.reshape(R, N // 8, 8)[..., list(AWQ_ORDER)].reshape(R, N)
    return pack_along_k(interleaved.t(), 4).t()


class AWQConfig(QuantizationConfig):
    name = "awq"

    def __init__(self, weight_bits: int, group_size: int, zero_point: bool, modules_to_not_convert: list[str]):
        if weight_bits != 4:
            raise ValueError(f"Currently, only 4-bit weight quantization is supported for AWQ, but got "
                             f"{weight_bits} bits.")
        if not zero_point:
            raise ValueError("AWQ without zero points (zero_point: false) is not supported.")
        if group_size != -1 and group_size <= 0:
            raise ValueError(f"AWQ group_size must be positive or -1 (one group per column), got {group_size}.")
        self.weight_bits, self.group_size, self.zero_point = weight_bits, group_size, zero_point
        self.modules_to_not_convert = list(modules_to_not_convert)

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "AWQConfig":
        version = str(config.get("version", "gemm")).lower()
        if version != "gemm":
            raise ValueError(f"AWQ version {version!r} is not supported: only the 'gemm' packing (AutoAWQ's default, "
                             f"what vLLM reads) is.")
        bits = config.get("w_bit", config.get("bits", 4))
        group_size = config.get("q_group_size", config.get("group_size", 128))
        return cls(int(bits), int(group_size), bool(config.get("zero_point", True)),
                   config.get("modules_to_not_convert") or [])

    def get_linear_method(self, layer: nn.Module, prefix: str) -> "AWQLinearMethod | None":
        if any(skip in part for part in self.checkpoint_prefixes(prefix) for skip in self.modules_to_not_convert):
            return None
        return AWQLinearMethod(self)

    def get_moe_method(self, experts: nn.Module, prefix: str) -> PackedIntMoEMethod:
        return PackedIntMoEMethod(self)

    def weight_bytes_note(self) -> str:
        group = "per channel" if self.group_size == -1 else f"group {self.group_size}"
        return f"awq int4, {group}"


class AWQLinearMethod(PackedIntLinearMethod):
    checkpoint_params = ("qweight", "qzeros", "scales")

    def __init__(self, config: AWQConfig):
        self.config = config

    def create_weights(self, layer: nn.Module, input_size: int, output_sizes: list[int], params_dtype: torch.dtype,
                       **extra: Any) -> None:
        loader = extra_loader(extra)
        for size in output_sizes:
            if size % 8:
                raise ValueError(f"The output size ({size}) is not aligned with the quantized weight shape: AWQ packs "
                                 f"8 columns to an int32 (with tensor parallel, this rank's share).")
        N = sum(output_sizes)
        group = input_size if self.config.group_size == -1 else self.config.group_size
        groups = group_count(input_size, group, "AWQ")
        # One group per column: the scales are not cut along K (each rank of a row-parallel layer needs them whole).
        group_dim = None if self.config.group_size == -1 else 0
        add_checkpoint_param(layer, "qweight", (input_size, N // 8), torch.int32, loader,
                             output_dim=1, input_dim=0, packed_dim=1, pack_factor=8)
        add_checkpoint_param(layer, "qzeros", (groups, N // 8), torch.int32, loader,
                             output_dim=1, input_dim=group_dim, packed_dim=1, pack_factor=8)
        # float32 while loading: the checkpoint's fp16 scales arrive unrounded whatever the model's dtype
        add_checkpoint_param(layer, "scales", (groups, N), torch.float32, loader, output_dim=1, input_dim=group_dim)
        layer.quant_group_size = group

    def to_packed(self, layer: nn.Module) -> PackedWeight:
        q = unpack_awq(layer.qweight.data)
        zeros = unpack_awq(layer.qzeros.data).to(torch.float32)
        scales = layer.scales.data.to(torch.float32)
        return PackedWeight(pack_along_k(q, 4), scales, -zeros * scales, 4, layer.quant_group_size)
