"""compressed-tensors checkpoints (llm-compressor's format): ``quantization_config`` lists ``config_groups``, each a
scheme (weights / input_activations settings) with the modules it ``targets``, and the modules to ``ignore``.

This module reads the integer schemes: int8 stored ``int-quantized`` (W8A8, W8A16: ``Int8LinearMethod``) and the
weight-only ones stored ``pack-quantized`` (W4A16, W8A16; ``group`` or ``channel``
strategy; symmetric, or asymmetric with ``weight_zero_point``). For a linear layer of K inputs and N outputs,
``pack = 32 / bits``, groups of G along K:
- ``weight_packed`` int32 ``[N, K / pack]``: each output row's values packed along K (value ``k`` in bits
  ``bits * (k % pack)`` of word ``k // pack``), stored as ``q + 2**(bits - 1)`` for the signed ``q``;
- ``weight_scale`` ``[N, K / G]``; ``weight_zero_point`` (asymmetric only) the signed zero points ``[N, K / G]``
  stored the same way but packed along N: int32 ``[N / pack, K / G]``; ``weight_shape``: ``[N, K]``;
- ``W[n, k] = (q[n, k] - zp[n, k // G]) * s[n, k // G]``.
Other schemes (FP8 weights and activations, ...) come from ``register_compressed_tensors_scheme``.
"""
from __future__ import annotations

import importlib
import logging
import re
from typing import Any

import torch
from torch import nn

from pagedllm.kernels.quant.packed import PackedWeight, pack_along_k, unpack_along_k
from pagedllm.model.quantization.base import LinearMethod, MoEMethod, QuantizationConfig
from pagedllm.model.quantization.int_weight import (PackedIntLinearMethod, PackedIntMoEMethod, add_checkpoint_param,
                                                    add_g_idx_param, extra_loader, group_count, rows_in_group_order)

logger = logging.getLogger(__name__)

# Scheme handlers besides pack-quantized integers, as "module:function": each is called with
# (weights: dict, input_activations: dict | None, format: str) and returns a LinearMethod, or None when the scheme
# is not one it handles. FP8 (issue 13) registers "pagedllm.model.quantization.fp8:compressed_tensors_fp8_method".
_SCHEME_HANDLERS: list[str] = ["pagedllm.model.quantization.fp8:compressed_tensors_fp8_method"]


def register_compressed_tensors_scheme(target: str) -> None:
    """Add a handler (``"module:function"``, see ``_SCHEME_HANDLERS``) for compressed-tensors schemes."""
    if target not in _SCHEME_HANDLERS:
        _SCHEME_HANDLERS.append(target)


def _matches(name: str, pattern: str) -> bool:
    if pattern.startswith("re:"):
        return re.match(pattern[3:], name) is not None
    return name == pattern or name.endswith("." + pattern)


class CompressedTensorsConfig(QuantizationConfig):
    name = "compressed-tensors"

    def __init__(self, config_groups: dict[str, dict], ignore: list[str], fmt: str | None):
        self.config_groups, self.ignore, self.format = config_groups, list(ignore), fmt
        for group in config_groups.values():     # reject what cannot load at start, not at the first layer
            self._method_for(group)

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "CompressedTensorsConfig":
        # Sparse weights (2:4, bitmask-compressed) and online rotations (QuIP / SpinQuant transforms) change what the
        # tensors mean: refused by name here rather than failing on a tensor name or, worse, loading without them.
        sparsity = config.get("sparsity_config") or {}
        if sparsity.get("format") not in (None, "dense"):
            raise ValueError(f"compressed-tensors sparsity_config format {sparsity.get('format')!r} (structure "
                             f"{sparsity.get('sparsity_structure')!r}) is not supported: pagedllm reads dense and "
                             f"quantized compressed-tensors checkpoints, not sparse-compressed weights.")
        if config.get("transform_config"):
            raise ValueError("compressed-tensors transform_config (online rotations: QuIP / SpinQuant) is not "
                             "supported yet.")
        groups = config.get("config_groups") or {}
        if not groups:
            raise ValueError("compressed-tensors quantization_config has no config_groups.")
        return cls(groups, config.get("ignore") or [], config.get("format"))

    def _method_for(self, group: dict) -> LinearMethod:
        weights, activations = group.get("weights"), group.get("input_activations")
        fmt = group.get("format") or self.format or "pack-quantized"
        if weights is not None and activations is None and fmt == "pack-quantized" and weights.get("type") == "int":
            return WNA16LinearMethod(weights)
        if weights is not None and weights.get("type") == "int" and fmt in ("int-quantized", "naive-quantized") \
                and (activations is None or activations.get("type") == "int"):
            return Int8LinearMethod(weights, activations)
        for target in _SCHEME_HANDLERS:
            module_name, _, func = target.partition(":")
            method = getattr(importlib.import_module(module_name), func)(weights, activations, fmt)
            if method is not None:
                return method
        raise ValueError(f"compressed-tensors scheme not supported: format {fmt!r}, weights {weights}, "
                         f"input_activations {activations} (supported: pack-quantized int4/int8 weight-only, "
                         f"int-quantized int8 W8A8 / W8A16, float-quantized FP8).")

    def _group_for(self, name: str) -> dict | None:
        for group in self.config_groups.values():
            targets = group.get("targets") or []
            if any(t == "Linear" or _matches(name, t) for t in targets):
                return group
        return None

    def get_linear_method(self, layer: nn.Module, prefix: str) -> LinearMethod | None:
        names = self.checkpoint_prefixes(prefix)
        ignored = [any(_matches(n, pattern) for pattern in self.ignore) for n in names]
        groups = [self._group_for(n) for n in names]
        if all(ignored) or all(g is None for g in groups):
            return None
        if any(ignored) or any(g is not groups[0] for g in groups):
            raise ValueError(f"compressed-tensors: the parts of the fused layer {prefix} ({', '.join(names)}) must "
                             f"share one scheme; found different ones.")
        return self._method_for(groups[0])

    def get_moe_method(self, experts: nn.Module, prefix: str) -> MoEMethod | None:
        """Experts whose scheme is pack-quantized int weight-only (W4A16 / W8A16) stay packed (PackedIntMoEMethod,
        each expert's projections layers of that scheme); a scheme whose method has experts of its own (FP8 per
        tensor or per channel: ``moe_method``) takes those; ignored experts stay dense; other schemes are refused."""
        name = f"{prefix}.0.gate_proj"
        group = self._group_for(name)
        if group is None or any(_matches(name, pattern) for pattern in self.ignore):
            return None
        method = self._method_for(group)
        if isinstance(method, WNA16LinearMethod):
            return PackedIntMoEMethod(self)
        if hasattr(method, "moe_method"):
            return method.moe_method()
        raise ValueError(f"compressed-tensors: mixture-of-experts layers ({prefix}) take the pack-quantized int "
                         "weight-only schemes (W4A16 / W8A16) and FP8 only, not this checkpoint's.")

    def weight_bytes_note(self) -> str:
        notes = []
        for group in self.config_groups.values():
            w = group.get("weights") or {}
            strategy = f"group {w.get('group_size')}" if w.get("strategy") == "group" else w.get("strategy")
            notes.append(f"int{w.get('num_bits')}, {strategy}" if w.get("type") == "int" else str(w.get("type")))
        return "compressed-tensors " + "; ".join(notes)


def _no_load(param: torch.Tensor, loaded: torch.Tensor, *args) -> None:
    """``weight_shape`` is known from the layer already (and differs between a fused layer's parts)."""


class WNA16LinearMethod(PackedIntLinearMethod):
    checkpoint_params = ("weight_packed", "weight_scale", "weight_zero_point", "weight_shape", "weight_g_idx")

    def __init__(self, weights: dict[str, Any]):
        bits, strategy = int(weights.get("num_bits", 0)), weights.get("strategy")
        if bits not in (4, 8):
            raise ValueError(f"compressed-tensors pack-quantized weights of {bits} bits are not supported "
                             f"(supported: 4, 8).")
        if strategy not in ("group", "channel"):
            raise ValueError(f"compressed-tensors weight strategy {strategy!r} is not supported for pack-quantized "
                             f"weights (supported: group, channel).")
        actorder = weights.get("actorder")
        if actorder not in (None, False, "weight", "static", "group", "dynamic"):
            raise ValueError(f"compressed-tensors actorder {actorder!r} is not supported (supported: weight / static, "
                             f"group / dynamic).")
        # 'weight' (alias 'static') changed only the calibration order; 'group' (alias 'dynamic') stores each input
        # row's group as weight_g_idx (GPTQ's desc_act, as vLLM's WNA16 reads it)
        self.has_g_idx = actorder in ("group", "dynamic")
        self.bits, self.pack = bits, 32 // bits
        self.group_size = int(weights["group_size"]) if strategy == "group" else -1
        self.symmetric = bool(weights.get("symmetric", True))

    def create_weights(self, layer: nn.Module, input_size: int, output_sizes: list[int], params_dtype: torch.dtype,
                       **extra: Any) -> None:
        loader, pack = extra_loader(extra), self.pack
        if input_size % pack:
            raise ValueError(f"The input size ({input_size}) is not aligned with the quantized weight shape: it must "
                             f"be a multiple of {pack} (with tensor parallel, this rank's share).")
        if not self.symmetric and any(size % pack for size in output_sizes):
            raise ValueError(f"The output sizes ({output_sizes}) are not aligned with the quantized zero points: "
                             f"{pack} are packed to an int32 along the outputs.")
        N = sum(output_sizes)
        group = input_size if self.group_size == -1 else self.group_size
        groups = group_count(input_size, group, "compressed-tensors")
        group_dim = None if self.group_size == -1 else 1
        add_checkpoint_param(layer, "weight_packed", (N, input_size // pack), torch.int32, loader,
                             output_dim=0, input_dim=1, packed_dim=1, pack_factor=pack)
        add_checkpoint_param(layer, "weight_scale", (N, groups), torch.float32, loader,
                             output_dim=0, input_dim=group_dim)
        if not self.symmetric:
            add_checkpoint_param(layer, "weight_zero_point", (N // pack, groups), torch.int32, loader,
                                 output_dim=0, input_dim=group_dim, packed_dim=0, pack_factor=pack)
        add_checkpoint_param(layer, "weight_shape", (2,), torch.int64, _no_load, output_dim=None, input_dim=None,
                             optional=True)
        if self.has_g_idx:
            if extra.get("full_input_size", input_size) != input_size and self.group_size != -1:
                raise ValueError("compressed-tensors actorder 'group' (weight_g_idx) is not supported with tensor "
                                 "parallel on row-parallel layers yet (a rank's rows would not hold whole groups).")
            add_g_idx_param(layer, "weight_g_idx", input_size, group, loader, "compressed-tensors")
        layer.quant_group_size = group

    def to_packed(self, layer: nn.Module) -> PackedWeight:
        # [N, K / pack] packed along K per output row: transposed, the canonical [K / pack, N] words as they are
        # (the stored values are the unsigned q + 2**(bits-1); the zero point below accounts for the shift).
        qweight = layer.weight_packed.data.t().contiguous()
        scales = layer.weight_scale.data.to(torch.float32).t()
        if self.symmetric:
            zeros = torch.full_like(scales, float(1 << (self.bits - 1)))
        else:
            zeros = unpack_along_k(layer.weight_zero_point.data, self.bits).to(torch.float32).t()
        perm = None
        if self.has_g_idx:      # rows sorted by group, x's columns permuted alike
            qweight, perm = rows_in_group_order(qweight, self.bits, layer.weight_g_idx.data, layer.quant_group_size,
                                                f"compressed-tensors weight_g_idx of {layer.prefix!r}")
        return PackedWeight(qweight, scales.contiguous(), (-zeros * scales).contiguous(),
                            self.bits, layer.quant_group_size, perm)


class Int8LinearMethod(PackedIntLinearMethod):
    """compressed-tensors ``int-quantized`` int8 weights (llm-compressor's W8A8 / SmoothQuant exports, and W8A16):
    ``weight`` int8 ``[N, K]``, ``weight_scale`` per output row (``[N, 1]``, strategy ``channel``) or one per
    checkpoint module (strategy ``tensor``); ``W = weight * scale`` (symmetric). They become the packed int8 form
    with one group per row (torch's int8 weight-only GEMM on the CPU, the int8 Triton kernels on the GPU).

    W8A8's activations (int8 per token, or static with ``input_scale`` / ``input_zero_point``) run unquantized in
    the model dtype: weight-only, as the FP8 path runs on the CPU; only the activations' rounding differs from
    vLLM's int8 GEMM (logged once)."""
    checkpoint_params = ("weight", "weight_scale", "weight_zero_point", "input_scale", "input_zero_point")
    _activations_logged = False

    def __init__(self, weights: dict[str, Any], activations: dict[str, Any] | None):
        bits, strategy = int(weights.get("num_bits", 0)), weights.get("strategy")
        if bits != 8:
            raise ValueError(f"compressed-tensors int-quantized weights of {bits} bits are not supported (supported: "
                             f"8; 4-bit weights come pack-quantized).")
        if strategy not in ("channel", "tensor"):
            raise ValueError(f"compressed-tensors int8 weight strategy {strategy!r} is not supported "
                             f"(supported: channel, tensor).")
        if not weights.get("symmetric", True):
            raise ValueError("compressed-tensors int8 weights with zero points (symmetric: false) are not supported "
                             "(vLLM's int8 W8A8 takes symmetric weights only).")
        if activations is not None and int(activations.get("num_bits", 8)) != 8:
            raise ValueError(f"compressed-tensors int activations of {activations.get('num_bits')} bits are not "
                             f"supported (supported: 8).")
        self.per_channel, self.activations = strategy == "channel", activations

    def create_weights(self, layer: nn.Module, input_size: int, output_sizes: list[int], params_dtype: torch.dtype,
                       **extra: Any) -> None:
        from pagedllm.model.quantization.fp8 import _part_scale_loader
        loader = extra_loader(extra)
        N = sum(output_sizes)
        layer.int8_output_sizes = list(output_sizes)
        add_checkpoint_param(layer, "weight", (N, input_size), torch.int8, loader, output_dim=0, input_dim=1)
        if self.per_channel:
            add_checkpoint_param(layer, "weight_scale", (N, 1), torch.float32, loader, output_dim=0, input_dim=None)
        else:      # one per fused part, spread over its rows after loading
            add_checkpoint_param(layer, "weight_scale", (len(output_sizes),), torch.float32, _part_scale_loader,
                                 output_dim=None, input_dim=None, fill=torch.full((len(output_sizes),), float("nan")))
            layer.weight_scale.keep_on_dummy = False

        def zero_point(param: torch.Tensor, loaded: torch.Tensor, *args: Any) -> None:
            if loaded.count_nonzero():
                raise ValueError(f"compressed-tensors int8 weights of {layer.prefix!r} have non-zero zero points; "
                                 "only symmetric int8 weights are supported.")

        def activation_setting(param: torch.Tensor, loaded: torch.Tensor, *args: Any) -> None:
            if not Int8LinearMethod._activations_logged:
                logger.info(
                    "compressed-tensors int8 W8A8: the activations run in the model dtype (weight-only int8), not "
                    "rounded to int8 as vLLM's int8 GEMM does; the checkpoint's input scales are not used.")
                Int8LinearMethod._activations_logged = True

        add_checkpoint_param(layer, "weight_zero_point", (0,), torch.int32, zero_point, output_dim=None,
                             input_dim=None, optional=True)
        for name in ("input_scale", "input_zero_point"):
            add_checkpoint_param(layer, name, (0,), torch.float32, activation_setting, output_dim=None,
                                 input_dim=None, optional=True)
        layer.quant_group_size = input_size

    def to_packed(self, layer: nn.Module) -> PackedWeight:
        scale = layer.weight_scale.data.to(torch.float32).reshape(-1)
        if not self.per_channel:
            if torch.isnan(scale).any():
                raise ValueError(f"compressed-tensors int8 checkpoint is missing weight_scale for a part of "
                                 f"{layer.prefix!r}.")
            scale = torch.repeat_interleave(scale, torch.tensor(layer.int8_output_sizes, device=scale.device))
        q = layer.weight.data.to(torch.int32).t() + 128                 # [K, N], the unsigned value
        scales = scale.reshape(1, -1)
        return PackedWeight(pack_along_k(q, 8), scales.contiguous(), (-128.0 * scales).contiguous(), 8,
                            layer.quant_group_size)
