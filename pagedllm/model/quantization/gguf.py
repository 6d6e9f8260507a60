"""GGUF files: linear layers kept quantized on CUDA, everything dequantized at load on the CPU.

On CUDA, a linear layer whose GGUF tensors (one, or the q/k/v and gate/up parts of a fused layer) are all of a type
``gguf_packed.supports_gguf_type`` takes (Q4_0, Q4_1, Q8_0, Q4_K, Q5_K, Q6_K) holds the canonical packed form
(``qweight`` int32 + scales/offsets in the model dtype) and multiplies through the packed Triton kernels; the loader
(pagedllm/model/gguf_loader.py) converts the raw blocks instead of dequantizing them. The parts of a fused layer may
be stored in different types (llama.cpp's Q4_K_M mixes Q4_K q/k with Q6_K v): the layer takes the widest storage and
the smallest group of its parts (Q4_K + Q6_K -> 8-bit, groups of 16) and each part is widened to it exactly
(``widen_packed``), so the layer stays one matmul and still holds about half the bf16 bytes. Embeddings, the LM head,
norms and any other type stay dequantized, and so does a layer whose (tensor-parallel) input share is not a whole
number of groups (logged).

On the CPU the default (float32, HF-exact) dequantizes at load. With ``dtype="bfloat16"`` the 4-bit layers (Q4_0,
Q4_1, Q4_K: 4-bit groups of 32) stay 4-bit and multiply through torch's int4 weight-only GEMM with bf16 activations
(``aten._weight_int4pack_mm_for_cpu``, kernels/quant/cpu.py): on the 2-core AVX512-BF16 EPYC it took a SmolLM2
projection at batch 1 from fbgemm fp16's 103-145 µs to 64 µs on one thread, 36-39 µs on two, where the same kernel
with fp32 activations takes 1.6 ms (docs/perf.md, issue 19, session 10) — so only bf16 keeps them. 8-bit and 5/6-bit
types stay dequantized there (their grouped form has no fast CPU kernel). ``KEEP_QUANTIZED_ON_CPU`` is an internal
switch for tests, not a user option: it keeps every supported type quantized on the CPU whatever the dtype.
"""
from __future__ import annotations

import logging
from collections import Counter
from typing import Any

import torch
from torch import nn

from pagedllm.kernels.quant.cpu import INT4PACK_GROUP_SIZES, int4pack_supported
from pagedllm.kernels.quant.gguf_packed import GGUF_PACKED_TYPES, gguf_packed_format, supports_gguf_type
from pagedllm.kernels.quant.packed import PackedWeight
from pagedllm.model.quantization.base import QuantizationConfig
from pagedllm.model.quantization.int_weight import (PackedIntLinearMethod, add_checkpoint_param, extra_loader,
                                                    group_count)

logger = logging.getLogger(__name__)

#: Tests only: keep supported GGUF layers quantized on the CPU too (the default there is dequantize-at-load).
KEEP_QUANTIZED_ON_CPU = False


def _type_name(type_id: int) -> str:
    if type_id in GGUF_PACKED_TYPES:
        return GGUF_PACKED_TYPES[type_id][0]
    try:
        from gguf import GGMLQuantizationType
        return GGMLQuantizationType(type_id).name
    except (ImportError, ValueError):
        return f"type {type_id}"


class GGUFConfig(QuantizationConfig):
    name = "gguf"

    def __init__(self) -> None:
        # HF weight name -> GGML type id; empty until ``read_checkpoint`` decides to keep layers quantized.
        self.tensor_types: dict[str, int] = {}
        # HF weight name -> (bits, group_size) of the packed form of the layer it loads into.
        self.kept_quantized: dict[str, tuple[int, int]] = {}
        self.dense_reasons: Counter[str] = Counter()
        # CPU, bfloat16: only layers whose packed form torch's int4 GEMM takes stay quantized.
        self.int4pack_only = False

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "GGUFConfig":
        return cls()

    def read_checkpoint(self, gguf_path: str, device: torch.device, model_supports_quantization: bool,
                        dtype: torch.dtype | None = None) -> bool:
        """Decide whether this engine keeps GGUF layers quantized (CUDA; the CPU with bfloat16 activations, 4-bit
        layers only; the CPU test switch; and a model class whose layers take quantization) and, if so, read the
        file's tensor types. True when it does."""
        device = torch.device(device)
        if device.type == "cpu":
            if not KEEP_QUANTIZED_ON_CPU:
                if dtype != torch.bfloat16 or not int4pack_supported():
                    return False
                self.int4pack_only = True
        elif device.type != "cuda":
            return False
        if not model_supports_quantization:
            logger.info("GGUF weights are dequantized at load: this model's layers take no quantization.")
            return False
        from pagedllm.model.gguf_loader import gguf_tensor_types
        self.tensor_types = gguf_tensor_types(gguf_path)
        return True

    def get_moe_method(self, experts: nn.Module, prefix: str) -> None:
        """A GGUF MoE's experts are dequantized at load (the dense experts' fused kernels then run them); its
        attention projections may stay quantized."""
        return None

    def get_linear_method(self, layer: nn.Module, prefix: str) -> "GGUFLinearMethod | None":
        if not self.tensor_types:
            return None
        parts = [f"{p}.weight" for p in self.checkpoint_prefixes(prefix)]
        types = [self.tensor_types.get(p) for p in parts]
        if any(t is None for t in types):
            return None       # not a GGUF tensor (e.g. a layer the file does not hold): the loader reports it
        unsupported = sorted({_type_name(t) for t in types if not supports_gguf_type(t)})
        if unsupported:
            self.dense_reasons[f"{'/'.join(unsupported)} tensors have no packed form"] += 1
            return None
        formats = [gguf_packed_format(t) for t in types]
        bits, group = max(f[0] for f in formats), min(f[1] for f in formats)
        if self.int4pack_only and (bits != 4 or group not in INT4PACK_GROUP_SIZES):
            names = "/".join(sorted({_type_name(t) for t in types}))
            self.dense_reasons[f"{names} has no fast CPU kernel ({bits}-bit groups of {group})"] += 1
            return None
        if layer.input_size % group or layer.input_size % (32 // bits):
            self.dense_reasons[f"input share {layer.input_size} is not a whole number of groups of {group}"] += 1
            return None
        for part in parts:
            self.kept_quantized[part] = (bits, group)
        return GGUFLinearMethod(bits, group)

    def weight_bytes_note(self) -> str:
        if not self.kept_quantized:
            return "gguf, dequantized at load"
        kept = Counter(_type_name(self.tensor_types[name]) for name in self.kept_quantized)
        others = sorted({_type_name(t) for name, t in self.tensor_types.items() if name not in self.kept_quantized})
        note = "gguf " + "/".join(sorted(kept)) + f" kept quantized ({len(self.kept_quantized)} tensors)"
        if others:
            note += ", " + "/".join(others) + " dequantized"
        if self.dense_reasons:
            note += " (dense layers: " + "; ".join(f"{n} x {why}" for why, n in self.dense_reasons.items()) + ")"
        return note


class GGUFLinearMethod(PackedIntLinearMethod):
    """The layer holds the canonical packed form from the start (the loader converts each GGUF tensor to it), so
    the checkpoint parameters are ``qweight`` / ``scales`` / ``offsets`` themselves, cut by the int_weight base's
    rules: along N (dim 1) for column-parallel layers and fused parts, along K (dim 0) for row-parallel ones."""

    checkpoint_params = ("qweight", "scales", "offsets")

    def __init__(self, bits: int, group_size: int):
        self.bits, self.group_size = bits, group_size

    def create_weights(self, layer: nn.Module, input_size: int, output_sizes: list[int], params_dtype: torch.dtype,
                       **extra: Any) -> None:
        loader = extra_loader(extra)
        N, pack = sum(output_sizes), 32 // self.bits
        groups = group_count(input_size, self.group_size, "GGUF")
        add_checkpoint_param(layer, "qweight", (input_size // pack, N), torch.int32, loader,
                             output_dim=1, input_dim=0, packed_dim=0, pack_factor=pack)
        # float32 while loading: the K-quants' d * sc products arrive unrounded whatever the model's dtype
        add_checkpoint_param(layer, "scales", (groups, N), torch.float32, loader, output_dim=1, input_dim=0)
        add_checkpoint_param(layer, "offsets", (groups, N), torch.float32, loader, output_dim=1, input_dim=0)

    def to_packed(self, layer: nn.Module) -> PackedWeight:
        return PackedWeight(layer.qweight.data, layer.scales.data, layer.offsets.data, self.bits, self.group_size)
