"""GPTQ checkpoints (AutoGPTQ, GPTQModel, optimum): 4- or 8-bit weights, a scale and zero point per group.

The checkpoint, for a linear layer of K inputs and N outputs, ``pack = 32 / bits``, groups of G along K:
- ``qweight`` int32 ``[K / pack, N]``: packed along K (value ``k`` in bits ``bits * (k % pack)`` of word
  ``k // pack``: the canonical layout already);
- ``qzeros`` int32 ``[K / G, N / pack]``: zero points packed along N in the same bit order;
- ``scales`` ``[K / G, N]``; ``g_idx`` int32 ``[K]``: the group of each input row (``k // G`` unless the rows were
  quantized in activation order, ``desc_act``);
- ``W[k, n] = (q[k, n] - z[g_idx[k], n]) * s[g_idx[k], n]``, where the stored zero point is ``z - 1`` in the
  original ("gptq", v1) format and ``z`` in GPTQModel's ``checkpoint_format: "gptq_v2"``. The v1 ``+ 1`` is applied
  after unpacking, without wrapping (a stored 15 is 16): what AutoGPTQ's, exllama's and vLLM's kernels compute.
"""
from __future__ import annotations

import copy
import re
from typing import Any

import torch
from torch import nn

from pagedllm.kernels.quant.packed import PackedWeight, unpack_along_k
from pagedllm.model.quantization.base import QuantizationConfig
from pagedllm.model.quantization.int_weight import (PackedIntLinearMethod, PackedIntMoEMethod, add_checkpoint_param,
                                                    add_g_idx_param, extra_loader, group_count,
                                                    rows_in_group_order)


def unpack_along_n(packed: torch.Tensor, bits: int) -> torch.Tensor:
    """int32 ``[R, N / pack]`` packed along N (GPTQ's qzeros) -> values ``[R, N]`` (int32)."""
    return unpack_along_k(packed.t(), bits).t()


class GPTQConfig(QuantizationConfig):
    """``dynamic`` (GPTQModel's per-module settings, read as vLLM reads them): regular expressions matched with
    ``re.match`` against a layer's name, in order; the first that matches decides. ``-:PATTERN`` leaves the layer
    unquantized (its checkpoint tensor is a dense ``weight``); ``+:PATTERN`` or a bare pattern overrides ``bits``,
    ``group_size``, ``desc_act`` and ``sym`` for it. ``modules_in_block_to_quantize`` (a list, or GPTQModel's list
    of lists) names the quantized modules by substring; without it, the modules with a ``qweight`` in the
    checkpoint's safetensors are (``maybe_update_config``; vLLM reads the files' dtypes the same way), so layers a
    checkpoint kept in 16 bits load dense."""
    name = "gptq"

    def __init__(self, weight_bits: int, group_size: int, desc_act: bool, sym: bool, checkpoint_format: str = "gptq",
                 lm_head: bool = False, dynamic: dict | None = None,
                 modules_in_block_to_quantize: list | None = None):
        if checkpoint_format not in ("gptq", "gptq_v2"):
            raise ValueError(f"GPTQ checkpoint_format must be 'gptq' or 'gptq_v2', got {checkpoint_format!r}.")
        self.lm_head_quantized = lm_head
        self.checkpoint_format = checkpoint_format
        self.dynamic = dict(dynamic or {})
        if not all(isinstance(v, dict) for v in self.dynamic.values()):
            raise ValueError(f"GPTQ dynamic must map module patterns to dicts of settings, got {self.dynamic}.")
        for pattern, override in self.dynamic.items():
            try:
                re.compile(pattern[2:] if pattern[:2] in ("+:", "-:") else pattern)
            except re.error as e:
                raise ValueError(f"GPTQ dynamic pattern {pattern!r} is not a regular expression: {e}.") from None
            unknown = set(override) - _DYNAMIC_KEYS if not pattern.startswith("-:") else set()
            if unknown:
                raise ValueError(f"GPTQ dynamic override {pattern!r} sets {sorted(unknown)}; pagedllm takes "
                                 f"{sorted(_DYNAMIC_KEYS)} (as vLLM).")
        modules = modules_in_block_to_quantize or []
        if modules and all(isinstance(m, list) for m in modules):
            modules = [name for block in modules for name in block]
        self.quantized_modules = [str(m) for m in modules]
        self.checkpoint_dense: set[str] = set()      # maybe_update_config
        self._set(weight_bits, group_size, desc_act, sym)

    def _set(self, weight_bits: int, group_size: int, desc_act: bool, sym: bool) -> None:
        if weight_bits not in (4, 8):
            raise ValueError(f"Currently, only 4/8-bit weight quantization is supported for GPTQ, but got "
                             f"{weight_bits} bits.")
        if group_size != -1 and group_size <= 0:
            raise ValueError(f"GPTQ group_size must be positive or -1 (one group per column), got {group_size}.")
        self.weight_bits, self.group_size, self.desc_act, self.sym = weight_bits, group_size, desc_act, sym
        self.pack_factor = 32 // weight_bits

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "GPTQConfig":
        meta = config.get("meta") or {}
        checkpoint_format = config.get("checkpoint_format") or meta.get("checkpoint_format") or "gptq"
        return cls(int(config.get("bits", 4)), int(config.get("group_size", 128)), bool(config.get("desc_act", False)),
                   bool(config.get("sym", True)), str(checkpoint_format), bool(config.get("lm_head", False)),
                   config.get("dynamic"), config.get("modules_in_block_to_quantize"))

    def maybe_update_config(self, model_dir: str | None) -> None:
        """Without ``modules_in_block_to_quantize``: the modules whose checkpoint tensor is a plain ``weight`` with no
        ``qweight`` beside it stay dense (the checkpoint kept them in 16 bits)."""
        if self.quantized_modules or not model_dir:
            return
        from safetensors import safe_open

        from pagedllm.model.weight_files import safetensors_files
        names: set[str] = set()
        for path in safetensors_files(model_dir):
            with safe_open(path, "pt") as f:
                names.update(f.keys())
        quantized = {n[:-len(".qweight")] for n in names if n.endswith(".qweight")}
        if quantized:      # none at all: not a GPTQ checkpoint (its layers then fail to load, naming the tensor)
            self.checkpoint_dense = {n[:-len(".weight")] for n in names if n.endswith(".weight")} - quantized

    def _is_quantized(self, name: str) -> bool:
        if self.quantized_modules:
            return any(m in name for m in self.quantized_modules)
        # The checkpoint's names may carry a prefix ours lack (an image-text checkpoint's language_model.) or the
        # reverse; a name the checkpoint does not hold dense stays quantized.
        return not any(d == name or d.endswith("." + name) or name.endswith("." + d) for d in self.checkpoint_dense)

    def _override(self, name: str) -> dict | None:
        """The first ``dynamic`` rule matching ``name``: None (no rule), {} plus "skip" for a ``-:`` rule, else its
        settings."""
        for pattern, override in self.dynamic.items():
            if pattern.startswith("-:"):
                if re.match(pattern[2:], name):
                    return {"skip": True}
            elif re.match(pattern[2:] if pattern.startswith("+:") else pattern, name):
                return override
        return None

    def get_linear_method(self, layer: nn.Module, prefix: str) -> "GPTQLinearMethod | None":
        parts = self.checkpoint_prefixes(prefix)
        override = self._override(prefix)
        if override is None:
            rules = [self._override(part) for part in parts]
            if any(r != rules[0] for r in rules):
                raise ValueError(f"GPTQ dynamic: the parts of the fused layer {prefix} ({', '.join(parts)}) match "
                                 f"different rules; all shards of fused layers must have the same precision.")
            override = rules[0]
        quantized = [self._is_quantized(part) for part in parts]
        if not self.quantized_modules and not self._is_quantized(prefix):
            quantized = [False] * len(parts)         # a fused tensor the checkpoint holds dense (Phi-3's qkv_proj)
        if any(quantized) and not all(quantized):
            raise ValueError(f"Detected some but not all shards of {prefix} are quantized. All shards of fused "
                             f"layers must have the same precision.")
        if (override or {}).get("skip") or not all(quantized):
            return None
        if not override:
            return GPTQLinearMethod(self)
        config = copy.copy(self)
        config._set(int(override.get("bits", self.weight_bits)), int(override.get("group_size", self.group_size)),
                    bool(override.get("desc_act", self.desc_act)), bool(override.get("sym", self.sym)))
        return GPTQLinearMethod(config)

    def get_embedding_method(self, layer: nn.Module, prefix: str) -> "GPTQLinearMethod | None":
        """``lm_head: true`` (GPTQModel's option): the LM head's weight is GPTQ too (qweight / qzeros / scales / g_idx
        under ``lm_head.``), multiplied as a linear layer's (vLLM's ParallelLMHead takes the GPTQ method the same
        way); the embedding stays dense, as do dynamic rules' ``-:`` heads."""
        if not (self.lm_head_quantized and getattr(layer, "multiplies_weight", False)):
            return None
        if layer.tp_size > 1:
            raise ValueError("GPTQ checkpoints with a quantized lm_head (lm_head: true) are not supported with "
                             "tensor_parallel_size > 1 yet.")
        return self.get_linear_method(layer, prefix)

    def get_moe_method(self, experts: nn.Module, prefix: str) -> PackedIntMoEMethod:
        if self.dynamic:
            raise ValueError(f"GPTQ dynamic (per-module settings) is not supported yet for mixture-of-experts "
                             f"layers ({prefix}).")
        return PackedIntMoEMethod(self)

    def weight_bytes_note(self) -> str:
        group = "per channel" if self.group_size == -1 else f"group {self.group_size}"
        return (f"gptq int{self.weight_bits}, {group}" + (", desc_act" if self.desc_act else "")
                + (", per-module overrides" if self.dynamic else ""))


# The settings a dynamic rule may override (vLLM's override_config).
_DYNAMIC_KEYS = frozenset({"bits", "group_size", "desc_act", "sym"})


class GPTQLinearMethod(PackedIntLinearMethod):
    checkpoint_params = ("qweight", "qzeros", "scales", "g_idx")

    def __init__(self, config: GPTQConfig):
        self.config = config

    def create_weights(self, layer: nn.Module, input_size: int, output_sizes: list[int], params_dtype: torch.dtype,
                       **extra: Any) -> None:
        loader, pack = extra_loader(extra), self.config.pack_factor
        for size in output_sizes:
            if size % pack:
                raise ValueError(f"The output size ({size}) is not aligned with the quantized weight shape: GPTQ packs "
                                 f"{pack} zero points to an int32 (with tensor parallel, this rank's share).")
        if input_size % pack:
            raise ValueError(f"The input size ({input_size}) is not aligned with the quantized weight shape: it must "
                             f"be a multiple of {pack} (with tensor parallel, this rank's share).")
        input_is_sharded = extra.get("full_input_size", input_size) != input_size
        if self.config.desc_act and input_is_sharded and self.config.group_size != -1:
            raise ValueError("GPTQ checkpoints with desc_act=True are not supported with tensor parallel on "
                             "row-parallel layers yet (a rank's rows would not hold whole groups).")
        N = sum(output_sizes)
        group = input_size if self.config.group_size == -1 else self.config.group_size
        groups = group_count(input_size, group, "GPTQ")
        group_dim = None if self.config.group_size == -1 else 0
        add_checkpoint_param(layer, "qweight", (input_size // pack, N), torch.int32, loader,
                             output_dim=1, input_dim=0, packed_dim=0, pack_factor=pack)
        add_checkpoint_param(layer, "qzeros", (groups, N // pack), torch.int32, loader,
                             output_dim=1, input_dim=group_dim, packed_dim=1, pack_factor=pack)
        add_checkpoint_param(layer, "scales", (groups, N), torch.float32, loader, output_dim=1, input_dim=group_dim)
        # Older exports leave g_idx out when the rows are in order: it then stays k // G.
        add_g_idx_param(layer, "g_idx", input_size, group, loader, "GPTQ")
        layer.quant_group_size = group

    def to_packed(self, layer: nn.Module) -> PackedWeight:
        bits, group = self.config.weight_bits, layer.quant_group_size
        qweight = layer.qweight.data             # packed along K in the canonical order already
        zeros = unpack_along_n(layer.qzeros.data, bits).to(torch.float32)
        if self.config.checkpoint_format == "gptq":
            zeros = zeros + 1
        scales = layer.scales.data.to(torch.float32)
        # desc_act: the rows sorted by group; the layer multiplies x[:, perm].
        qweight, perm = rows_in_group_order(qweight, bits, layer.g_idx.data, group, f"GPTQ g_idx of {layer.prefix!r}")
        return PackedWeight(qweight, scales, -zeros * scales, bits, group, perm)
