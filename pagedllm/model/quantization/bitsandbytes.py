"""bitsandbytes linear layers, through the ``bitsandbytes`` library (its CPU backend runs them on the CPU too).

- ``quantization="bitsandbytes"`` on a 16/32-bit checkpoint: every linear weight is quantized to 4-bit NF4 (blocks of
  64, double-quantized absmax: vLLM's in-flight settings) as it loads, one checkpoint tensor (fused part) at a time,
  so the dense weights are never all in memory.
- Pre-quantized checkpoints (``quantization_config.quant_method == "bitsandbytes"``, as transformers saves them):
  ``load_in_4bit`` (``bnb_4bit_quant_type`` nf4 / fp4): ``weight`` packed uint8 plus ``weight.absmax``,
  ``weight.quant_map``, ``weight.nested_absmax`` / ``weight.nested_quant_map`` (double quantization) and
  ``weight.quant_state.bitsandbytes__nf4`` (the rest of the state, JSON in a uint8 tensor); ``load_in_8bit``
  (LLM.int8): ``weight`` int8 ``[N, K]`` and ``SCB`` (``[N]`` row scales, ``W = weight * SCB / 127``).

A fused layer (qkv, gate_up) keeps one 4-bit state per part, as the checkpoint has them, and multiplies them one
after the other (vLLM does the same). Checkpoint names with dots after ``weight`` are mapped to parameter names by
``checkpoint_name`` (``q_proj.weight.absmax`` -> ``q_proj.weight_absmax``): the loader applies it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from pagedllm.model.quantization.base import ExpertLayersMoEMethod, LinearMethod, QuantizationConfig
from pagedllm.model.quantization.fp8 import is_layer_skipped

BNB_MIN_VERSION = "0.45.0"
# vLLM's in-flight 4-bit settings (BitsAndBytesModelLoader): NF4, blocks of 64, compressed (double-quantized) stats.
INFLIGHT_BLOCKSIZE = 64
# 4-bit checkpoint tensors stored beside ``<module>.weight``, by their suffix after ``weight.``.
_STATE_SUFFIXES = ("absmax", "quant_map", "nested_absmax", "nested_quant_map", "quant_state.bitsandbytes__nf4",
                   "quant_state.bitsandbytes__fp4")


def import_bitsandbytes():
    try:
        import bitsandbytes
    except ImportError as e:
        raise ValueError(f"Please install bitsandbytes>={BNB_MIN_VERSION} via `pip install "
                         f"bitsandbytes>={BNB_MIN_VERSION}` to use bitsandbytes quantizer.") from e
    return bitsandbytes


def _param_name(suffix: str) -> str:
    return "weight_" + suffix.replace(".", "_")


def _part_index(shard_id: int | str | None) -> int:
    if shard_id is None:
        return 0
    return {"q": 0, "k": 1, "v": 2}[shard_id] if isinstance(shard_id, str) else int(shard_id)


def skip_entry_matches(name: str, entry: str) -> bool:
    """An ``llm_int8_skip_modules`` entry names a module or a run of its dotted path, as transformers applies the
    list when it quantizes (``self_attn`` skips every ``...self_attn.*_proj``, ``model.layers.0.mlp`` that MLP's
    projections, ``mlp.gate`` the router but not ``mlp.gate_proj``)."""
    return f".{entry}." in f".{name}."


def _placeholder(layer: nn.Module, name: str, loader: Callable[..., None], optional: bool = False) -> None:
    """A parameter the checkpoint fills through ``loader`` (which keeps what it needs on the layer): its shape is
    only known from the checkpoint (packed bytes, blocks of absmax, a JSON state)."""
    # float32: the loader converts floating checkpoint tensors to the parameter's dtype, and absmax / quant_map
    # must keep theirs (an empty float32 tensor also takes load_format="dummy"'s fill)
    param = nn.Parameter(torch.empty(0, dtype=torch.float32), requires_grad=False)
    param.weight_loader = loader
    param.optional_weight = optional
    layer.register_parameter(name, param)


@dataclass
class BitsAndBytesConfig(QuantizationConfig):
    load_in_4bit: bool = True
    load_in_8bit: bool = False
    bnb_4bit_quant_type: str = "nf4"
    bnb_4bit_use_double_quant: bool = True
    llm_int8_threshold: float = 6.0
    llm_int8_skip_modules: list[str] = field(default_factory=list)
    #: the checkpoint holds bitsandbytes tensors (else a dense checkpoint is quantized as it loads)
    pre_quantized: bool = False

    name = "bitsandbytes"
    quantizes_at_load = True     # quantization="bitsandbytes" on a dense checkpoint: from_config({}) is in-flight NF4

    def __post_init__(self) -> None:
        if self.load_in_4bit == self.load_in_8bit:
            raise ValueError("bitsandbytes quantization_config must set exactly one of load_in_4bit and "
                             f"load_in_8bit (got load_in_4bit={self.load_in_4bit}, load_in_8bit={self.load_in_8bit}).")
        if self.bnb_4bit_quant_type not in ("nf4", "fp4"):
            raise ValueError(f"bnb_4bit_quant_type must be 'nf4' or 'fp4', got {self.bnb_4bit_quant_type!r}.")
        if self.load_in_8bit and not self.pre_quantized:
            raise ValueError("bitsandbytes 8-bit (load_in_8bit) needs a pre-quantized checkpoint; quantizing at load "
                             "is 4-bit only (as vLLM).")
        import_bitsandbytes()

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "BitsAndBytesConfig":
        if not config:     # quantization="bitsandbytes" on a dense checkpoint
            return cls()
        return cls(load_in_4bit=bool(config.get("load_in_4bit", False)),
                   load_in_8bit=bool(config.get("load_in_8bit", False)),
                   bnb_4bit_quant_type=config.get("bnb_4bit_quant_type", "nf4"),
                   bnb_4bit_use_double_quant=bool(config.get("bnb_4bit_use_double_quant", False)),
                   llm_int8_threshold=float(config.get("llm_int8_threshold", 6.0)),
                   llm_int8_skip_modules=list(config.get("llm_int8_skip_modules") or []),
                   pre_quantized=True)

    def get_linear_method(self, layer: nn.Module, prefix: str) -> LinearMethod | None:
        if prefix.endswith("lm_head") or is_layer_skipped(self, prefix, self.llm_int8_skip_modules,
                                                          skip_entry_matches):
            return None
        return BitsAndBytes8bitLinearMethod(self) if self.load_in_8bit else BitsAndBytes4bitLinearMethod(self)

    def get_moe_method(self, experts: nn.Module, prefix: str) -> "BitsAndBytesMoEMethod | None":
        if is_layer_skipped(self, prefix, self.llm_int8_skip_modules, skip_entry_matches):
            return None          # the checkpoint left these experts in 16 bits
        return BitsAndBytesMoEMethod(self)

    def checkpoint_name(self, name: str) -> str:
        """A checkpoint tensor's name as our parameters spell it (no dots after ``weight``)."""
        for suffix in _STATE_SUFFIXES:
            if name.endswith(".weight." + suffix):
                return name[:-len("weight." + suffix)] + _param_name(suffix)
        return name

    def eager_reason(self) -> str | None:
        # bitsandbytes' int8 matmul finds its outlier columns on the host (LLM.int8()): not capturable. vLLM
        # falls back to eager mode for 8-bit checkpoints too.
        return "bitsandbytes 8-bit weights run eagerly" if self.load_in_8bit else None

    def weight_bytes_note(self) -> str:
        if self.load_in_8bit:
            return "bitsandbytes int8"
        return f"bitsandbytes {self.bnb_4bit_quant_type}" + (" (quantized at load)" if not self.pre_quantized else "")


class BitsAndBytes4bitLinearMethod(LinearMethod):
    """Per part: a packed uint8 tensor and its bitsandbytes ``QuantState``, kept on ``layer.bnb_parts``."""

    def __init__(self, config: BitsAndBytesConfig):
        self.config = config

    def create_weights(self, layer: nn.Module, input_size: int, output_sizes: list[int], params_dtype: torch.dtype,
                       **extra: Any) -> None:
        layer.bnb_output_sizes = list(output_sizes)
        layer.bnb_input_size = input_size
        layer.bnb_params_dtype = params_dtype
        layer.bnb_parts = [None] * len(output_sizes)       # (packed, QuantState) per part
        layer.bnb_checkpoint = {}                           # pre-quantized: part -> {suffix: tensor}
        if self.config.pre_quantized:
            _placeholder(layer, "weight", self._stash_loader(layer, "weight"))
            for suffix in _STATE_SUFFIXES:      # absmax and quant_map always; the rest as the state has them
                _placeholder(layer, _param_name(suffix), self._stash_loader(layer, suffix),
                             optional=suffix not in ("absmax", "quant_map"))
        else:
            _placeholder(layer, "weight", self._quantizing_loader(layer))

    def _quantizing_loader(self, layer: nn.Module) -> Callable[..., None]:
        def load(param: torch.Tensor, loaded: torch.Tensor, *shard_id: Any) -> None:
            import bitsandbytes.functional as bnbf
            sizes = layer.bnb_output_sizes
            # The layer's own loader places (and shards, under tensor parallelism) the part in a dense buffer of
            # the layer's shape; only that part's rows are quantized, then the buffer is dropped.
            dense = torch.zeros(sum(sizes), layer.bnb_input_size, dtype=layer.bnb_params_dtype, device=param.device)
            layer.weight_loader(dense, loaded.to(dense.dtype), *shard_id)
            parts = [_part_index(shard_id[0])] if shard_id and shard_id[0] is not None else range(len(sizes))
            for i in parts:
                rows = dense[sum(sizes[:i]):sum(sizes[:i + 1])]
                layer.bnb_parts[i] = bnbf.quantize_4bit(rows.contiguous(), blocksize=INFLIGHT_BLOCKSIZE,
                                                        compress_statistics=self.config.bnb_4bit_use_double_quant,
                                                        quant_type=self.config.bnb_4bit_quant_type)
        return load

    def _stash_loader(self, layer: nn.Module, suffix: str) -> Callable[..., None]:
        def load(param: torch.Tensor, loaded: torch.Tensor, shard_id: int | str | None = None) -> None:
            if getattr(layer, "tp_size", 1) > 1:
                raise ValueError("Pre-quantized bitsandbytes checkpoints with tensor_parallel_size > 1 are not "
                                 "supported yet; use tensor_parallel_size=1.")
            if shard_id is None and len(layer.bnb_output_sizes) > 1:
                key = "fused"      # the checkpoint's tensor is already the fused layer's: one state for all rows
            else:
                key = _part_index(shard_id)
            layer.bnb_checkpoint.setdefault(key, {})[suffix] = loaded.to(param.device)
        return load

    def process_weights_after_loading(self, layer: nn.Module) -> None:
        import bitsandbytes.functional as bnbf
        if self.config.pre_quantized:
            stored = layer.bnb_checkpoint
            if "fused" in stored:
                layer.bnb_output_sizes = [sum(layer.bnb_output_sizes)]
                layer.bnb_parts = [None]
                stored = {0: stored["fused"]}
            for i, tensors in stored.items():
                packed = tensors.pop("weight")
                state = bnbf.QuantState.from_dict({k: v for k, v in tensors.items()}, device=packed.device)
                layer.bnb_parts[i] = (packed, state)
            layer.bnb_checkpoint = {}
        if all(p is None for p in layer.bnb_parts):
            # load_format="dummy": no checkpoint went through the loader; random small weights, quantized.
            gen = torch.Generator(device="cpu").manual_seed(0)
            for i, size in enumerate(layer.bnb_output_sizes):
                w = (torch.rand(size, layer.bnb_input_size, generator=gen) * 2e-3 - 1e-3)
                layer.bnb_parts[i] = bnbf.quantize_4bit(
                    w.to(device=layer.weight.device, dtype=layer.bnb_params_dtype), blocksize=INFLIGHT_BLOCKSIZE,
                    compress_statistics=self.config.bnb_4bit_use_double_quant,
                    quant_type=self.config.bnb_4bit_quant_type)
        missing = [i for i, p in enumerate(layer.bnb_parts) if p is None]
        if missing:
            raise ValueError(f"Checkpoint is missing weights for parts {missing} of {getattr(layer, 'prefix', '')}.")
        # The packed bytes now live in bnb_parts: the placeholders go (named_parameters stays what is used).
        for name in ["weight"] + [_param_name(s) for s in _STATE_SUFFIXES]:
            if name in layer._parameters:
                del layer._parameters[name]
        layer.bnb_packed = nn.ParameterList([nn.Parameter(p, requires_grad=False) for p, _ in layer.bnb_parts])

    def dequantized_weight(self, layer: nn.Module, dtype: torch.dtype) -> torch.Tensor:
        """``W`` as bitsandbytes dequantizes it (the tests' reference)."""
        import bitsandbytes.functional as bnbf
        return torch.cat([bnbf.dequantize_4bit(p, s).to(dtype) for p, s in layer.bnb_parts])

    def apply(self, layer: nn.Module, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        import bitsandbytes as bnb
        outs = [bnb.matmul_4bit(x, packed.t(), quant_state=state) for packed, state in layer.bnb_parts]
        y = outs[0] if len(outs) == 1 else torch.cat(outs, dim=-1)
        if bias is not None:
            y = y + bias
        return y


class BitsAndBytes8bitLinearMethod(LinearMethod):
    """LLM.int8: int8 ``weight [N, K]`` with ``SCB [N]`` row scales; activations with a column above
    ``llm_int8_threshold`` take that column in 16-bit (bitsandbytes' mixed-precision decomposition)."""

    def __init__(self, config: BitsAndBytesConfig):
        self.config = config

    def create_weights(self, layer: nn.Module, input_size: int, output_sizes: list[int], params_dtype: torch.dtype,
                       **extra: Any) -> None:
        n = sum(output_sizes)
        dense = lambda param, loaded, *shard_id: layer.weight_loader(param, loaded, *shard_id)  # noqa: E731
        weight = nn.Parameter(torch.empty(n, input_size, dtype=torch.int8), requires_grad=False)
        weight.weight_loader = dense
        layer.register_parameter("weight", weight)
        scb = nn.Parameter(torch.empty(n, dtype=torch.float32), requires_grad=False)
        scb.weight_loader = dense
        layer.register_parameter("SCB", scb)
        _placeholder(layer, "weight_format", lambda param, loaded, *shard_id: None, optional=True)

    def process_weights_after_loading(self, layer: nn.Module) -> None:
        import bitsandbytes as bnb
        if "weight_format" in layer._parameters:
            del layer._parameters["weight_format"]
        layer.bnb_state = bnb.MatmulLtState()
        layer.bnb_state.CB, layer.bnb_state.SCB = layer.weight.data, layer.SCB.data
        layer.bnb_state.threshold = self.config.llm_int8_threshold
        layer.bnb_state.has_fp16_weights = False
        layer.bnb_state.is_training = False

    def dequantized_weight(self, layer: nn.Module, dtype: torch.dtype) -> torch.Tensor:
        return (layer.weight.float() * (layer.SCB.float() / 127.0)[:, None]).to(dtype)

    def apply(self, layer: nn.Module, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if not x.is_cuda:
            # bitsandbytes' own CPU choice (MatMul8bitFp): the dequantized weight times x; its int8 path has no
            # fast CPU kernels (and rounds the activations too).
            return torch.nn.functional.linear(x, self.dequantized_weight(layer, x.dtype), bias)
        import bitsandbytes as bnb
        y = bnb.matmul(x, layer.weight, bias=None, state=layer.bnb_state)
        if bias is not None:
            y = y + bias.to(y.dtype)
        return y.to(x.dtype)


class BitsAndBytesMoEMethod(ExpertLayersMoEMethod):
    """bitsandbytes experts: each expert's gate/up and down are bitsandbytes linear layers (``ExpertLayersMoEMethod``:
    quantized as they load, or the checkpoint's 4-bit / 8-bit tensors), which the CPU's loop calls. On the GPU, as
    vLLM's bitsandbytes MoE method, every forward dequantizes the layer's experts into 16-bit stacks for the fused
    kernels: weights stay at 4 / 8 bits in memory, and the step needs one layer's dense experts at a time. For that
    the experts' 4-bit blocks are concatenated at load (every part of every expert has the same shape, block size and
    codebook) with their absmax already dequantized (double quantization keeps a second level and an offset per
    part), so a forward is two dequantize kernels a layer, not one per expert and part. 8-bit experts are dequantized
    too (``W = int8 * SCB / 127``): LLM.int8's outlier threshold, a detail of bitsandbytes' int8 matmul, does not
    apply to them (as in vLLM and on the CPU)."""

    def create_weights(self, experts: nn.Module, params_dtype: torch.dtype) -> None:
        self.dtype = params_dtype            # what the GPU's forward dequantizes to
        super().create_weights(experts, params_dtype)

    def process_weights_after_loading(self, experts: nn.Module) -> None:
        # The expert layers were converted first (the loader goes through children before parents).
        if next(experts.expert_layers[0].down_proj.parameters()).is_cuda:
            self.stack(experts)

    def stack(self, experts: nn.Module) -> None:
        """Replace the expert layers by the stacks ``kernel_args`` dequantizes (the GPU's form)."""
        import bitsandbytes.functional as bnbf
        pairs = self.layer_pairs(experts)
        for name, layers in (("w13", [up for up, _ in pairs]), ("w2", [down for _, down in pairs])):
            if self.config.load_in_8bit:
                experts.register_buffer(f"{name}_int8", torch.stack([layer.weight.data for layer in layers]),
                                        persistent=False)
                experts.register_buffer(f"{name}_row_scale", torch.stack([layer.SCB.data for layer in layers]) / 127.0,
                                        persistent=False)
                continue
            parts = [part for layer in layers for part in layer.bnb_parts]
            state = parts[0][1]
            if any(s.blocksize != state.blocksize or s.quant_type != state.quant_type for _, s in parts):
                raise ValueError(f"bitsandbytes experts of {experts.prefix}: their parts were quantized with "
                                 "different block sizes or types.")
            if any(s.shape.numel() % s.blocksize for _, s in parts):
                raise ValueError(f"bitsandbytes experts of {experts.prefix}: a part's {state.shape.numel()} "
                                 f"weights are not a whole number of {state.blocksize}-weight blocks, which the "
                                 "GPU's stacked form needs.")
            absmax = [bnbf.dequantize_blockwise(s.absmax, s.state2) + s.offset if s.nested else s.absmax
                      for _, s in parts]
            experts.register_buffer(f"{name}_packed", torch.cat([p.reshape(-1) for p, _ in parts]), persistent=False)
            experts.register_buffer(f"{name}_absmax", torch.cat([a.float().reshape(-1) for a in absmax]),
                                    persistent=False)
            setattr(self, f"{name}_format", (state.blocksize, state.quant_type))
        del experts.expert_layers            # their tensors are in the stacks now

    def _dequantized(self, experts: nn.Module, name: str, shape: tuple[int, int, int],
                     dtype: torch.dtype) -> torch.Tensor:
        if self.config.load_in_8bit:
            w8, scale = getattr(experts, f"{name}_int8"), getattr(experts, f"{name}_row_scale")
            # in the model's dtype: no fp32 temporary twice the size of the result (int8 values are exact in it)
            return w8.to(dtype) * scale[..., None].to(dtype)
        import bitsandbytes.functional as bnbf
        blocksize, quant_type = getattr(self, f"{name}_format")
        # One block a row: the blocks run through the weights in order whatever their rows (bitsandbytes 0.50's
        # CPU dequantization mishandles rows shorter than a block; the CUDA kernel reads the tensor flat).
        state = bnbf.QuantState(absmax=getattr(experts, f"{name}_absmax"), shape=torch.Size(
            (shape[0] * shape[1] * shape[2] // blocksize, blocksize)), blocksize=blocksize, quant_type=quant_type,
            dtype=dtype)
        return bnbf.dequantize_4bit(getattr(experts, f"{name}_packed"), state).view(shape)

    def kernel_args(self, experts: nn.Module) -> dict[str, Any]:
        e, h, i = experts.num_experts, experts.hidden_size, experts.shard
        return {"w13": self._dequantized(experts, "w13", (e, 2 * i, h), self.dtype),
                "w2": self._dequantized(experts, "w2", (e, h, i), self.dtype)}
