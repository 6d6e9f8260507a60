"""FP8 (e4m3) linear layers: ``quantization="fp8"`` on a 16/32-bit checkpoint (quantized at load, vLLM's online
mode) and FP8 checkpoints (config.json ``quantization_config`` with ``quant_method: "fp8"``).

Weights are float8_e4m3fn with a per-tensor scale (one per fused part in the checkpoint; vLLM's layout), a
per-channel scale, or a ``[128, 128]``-block scale (``weight_block_size``, DeepSeek-V3 / Qwen3-FP8's
``weight_scale_inv``). Scales multiply: ``W = weight.float() * scale``.

The matmul, by device and batch:
- CUDA, sm_89+: activations quantized per token (dynamic, a Triton kernel) or with the checkpoint's static
  ``input_scale``, then ``torch._scaled_mm`` with row-wise scales on the FP8 tensor cores; at decode batch sizes
  (M <= ``GEMV_MAX_M``) a Triton skinny GEMV reads the fp8 weight (half bf16's bytes) and multiplies the unquantized
  activations (weight-only: at M = 1 the weight read is the whole cost).
- CUDA, block-scaled checkpoints: dequantized to the model dtype at load (logged): no block-scaled GEMM yet, so
  these run at bf16 speed and memory.
- CPU: for correctness, ``x @ (weight * scale)^T`` in ``x``'s dtype; the activation quantize-dequantize of the
  GPU path is skipped (it would only add rounding; the CPU has no FP8 GEMM to feed).
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from pagedllm import envs
from pagedllm.kernels import settings as kernel_settings
from pagedllm.kernels.quant.fp8 import (FP8_DTYPE, block_dequantize, fp8_dequantize, fp8_scaled_mm,
                                        per_channel_quantize, per_tensor_quantize, quantize_to_fp8,
                                        scaled_mm_supported)
from pagedllm.model.quantization.base import LinearMethod, MoEMethod, QuantizationConfig

logger = logging.getLogger(__name__)

ACTIVATION_SCHEMES = ("static", "dynamic")
# FP8 tensor-core GEMMs: Ada (8.9) and Hopper (9.0) and later.
FP8_MIN_CAPABILITY = (8, 9)
# Batch-1 decode takes the skinny GEMM (kernels/triton_gemv.py) with the fp8 weight on CUDA: the weight read
# dominates and fp8 is half bf16's bytes; no activation rounding (weight-only). Measured on an H200 (7B): bs1 268.9
# -> 370.4 tok/s against the previous fp8 GEMV.
GEMV_MAX_M = 1
# 2 <= M <= 128 rows (PAGEDLLM_SKINNY_MAX_M; above 64 only on the shapes measured faster, triton_gemv.
# w8a8_preferred): x quantized per token as for torch._scaled_mm, then the skinny GEMM's fp8 x fp8 tensor-core path
# instead of _scaled_mm (H200, session 11, 7B, µs per call with the quantization at M = 8: qkv 11.5 vs 19.1, o 11.0
# vs 15.9, gate_up 38.9 vs 64.7, down 28.4 vs 53.6; latency_8x1024x1024 5.65 -> 3.51 s, sharegpt_like_1000 11,896
# -> 14,432 tok/s). Converting the fp8 weight to bf16 in registers (weight-only) lost at M = 8 (gate_up 69 µs): the
# conversion, not the read, bounds it; at M == 1 the FMA path does it faster than the dots.
W8A8_SKINNY_MAX_M = envs.PAGEDLLM_SKINNY_MAX_M


def _matches(name: str, pattern: str) -> bool:
    """An ignore-list entry: an exact module name, a ``re:`` regular expression (compressed-tensors), or a plain
    suffix (``lm_head``)."""
    if pattern.startswith("re:"):
        return re.fullmatch(pattern[3:], name) is not None
    return name == pattern or name.endswith("." + pattern)


def is_layer_skipped(config: QuantizationConfig, prefix: str, ignored: list[str],
                     matches: Callable[[str, str], bool] = _matches) -> bool:
    """Whether the linear layer at ``prefix`` stays dense. The list names the checkpoint's modules (``matches``
    says how an entry names one): a fused layer is skipped when its parts (``config.checkpoint_prefixes``) are; a
    list that skips some parts of a fused layer and not others cannot be honoured (one matmul) and is an error
    (vLLM's)."""
    if not ignored:
        return False
    if any(matches(prefix, p) for p in ignored):
        return True
    skipped = [any(matches(part, p) for p in ignored) for part in config.checkpoint_prefixes(prefix)]
    if any(skipped) and not all(skipped):
        raise ValueError(f"Detected some but not all shards of {prefix} are quantized. All shards of fused layers "
                         f"must have the same precision.")
    return all(skipped)


def _part_index(shard_id: int | str) -> int:
    return {"q": 0, "k": 1, "v": 2}[shard_id] if isinstance(shard_id, str) else int(shard_id)


def _dense_loader(layer: nn.Module) -> Callable[..., None]:
    """The layer's own loader (tensor-parallel sharding and fused-part placement along the output rows)."""
    def load(param: torch.Tensor, loaded: torch.Tensor, *shard_id: Any) -> None:
        layer.weight_loader(param, loaded, *shard_id)
    return load


def _part_scale_loader(param: torch.Tensor, loaded: torch.Tensor, shard_id: int | str | None = None) -> None:
    """Per-tensor scales, one slot per fused part: a part's scalar goes to its slot; a scale for the whole
    (already fused) tensor fills every slot."""
    loaded = loaded.reshape(-1).to(param.dtype)
    if shard_id is not None:
        param.data[_part_index(shard_id)] = loaded[0]
    elif loaded.numel() == 1:
        param.data.fill_(loaded[0].item())
    elif loaded.numel() == param.numel():
        param.data.copy_(loaded)
    else:
        raise ValueError(f"Weight shape mismatch: scale parameter {tuple(param.shape)} vs checkpoint "
                         f"{tuple(loaded.shape)}")


def _channel_scale_loader(layer: nn.Module) -> Callable[..., None]:
    """Per-output-channel scales (checkpoints store ``[N, 1]``): placed and sharded as the weight's rows."""
    def load(param: torch.Tensor, loaded: torch.Tensor, *shard_id: Any) -> None:
        layer.weight_loader(param, loaded.reshape(-1).to(param.dtype), *shard_id)
    return load


def _new_param(layer: nn.Module, name: str, data: torch.Tensor, loader: Callable[..., None] | None = None) -> None:
    param = nn.Parameter(data, requires_grad=False)
    if loader is not None:
        param.weight_loader = loader
    if name in layer._parameters or not hasattr(layer, name):
        layer.register_parameter(name, param)
    else:   # a plain attribute of that name (e.g. set by an earlier process_weights_after_loading)
        delattr(layer, name)
        layer.register_parameter(name, param)


def _cuda_capability(device: torch.device) -> tuple[int, int]:
    return torch.cuda.get_device_capability(device)


@dataclass
class Fp8Config(QuantizationConfig):
    """``is_checkpoint_fp8_serialized``: the checkpoint holds fp8 weights and scales (else 16/32-bit weights are
    quantized at load, per tensor, or per output channel with ``weight_per_channel``)."""
    is_checkpoint_fp8_serialized: bool = False
    activation_scheme: str = "dynamic"
    ignored_layers: list[str] = field(default_factory=list)
    weight_block_size: list[int] | None = None
    weight_per_channel: bool = False
    #: the block scales' checkpoint name: ``weight_scale_inv`` (DeepSeek / Qwen3-FP8), ``weight_scale``
    #: (compressed-tensors' block strategy)
    block_scale_name: str = "weight_scale_inv"

    name = "fp8"
    quantizes_at_load = True     # quantization="fp8" on a 16/32-bit checkpoint: from_config({}) is online FP8

    def __post_init__(self) -> None:
        if self.activation_scheme not in ACTIVATION_SCHEMES:
            raise ValueError(f"Unsupported activation scheme {self.activation_scheme}")
        if self.activation_scheme == "static" and not self.is_checkpoint_fp8_serialized:
            raise ValueError("FP8 activation_scheme 'static' needs the checkpoint's input_scale tensors; "
                             "online quantization (quantization='fp8' on a 16/32-bit checkpoint) is dynamic only.")
        if self.weight_block_size is not None:
            if not self.is_checkpoint_fp8_serialized:
                raise ValueError("The block-wise quantization only supports fp8-serialized checkpoint for now.")
            if len(self.weight_block_size) != 2:
                raise ValueError(f"The quantization block size of weight must have 2 dimensions, but got "
                                 f"{len(self.weight_block_size)} dimensions")
            if self.activation_scheme != "dynamic":
                raise ValueError(f"The block-wise quantization only supports dynamic activation scheme for now, "
                                 f"but got {self.activation_scheme} activation scheme.")
        self._block_warning_logged = False
        self._moe_input_scale_logged = False

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "Fp8Config":
        quant_method = str(config.get("quant_method", ""))      # {}: quantization="fp8" on a dense checkpoint
        fmt = config.get("fmt", "e4m3")
        if fmt not in ("e4m3", "float8_e4m3fn"):
            raise ValueError(f"Unsupported FP8 format fmt={fmt!r}; supported: 'e4m3'.")
        return cls(is_checkpoint_fp8_serialized="fp8" in quant_method,
                   activation_scheme=config.get("activation_scheme", "dynamic"),
                   ignored_layers=list(config.get("ignored_layers") or config.get("modules_to_not_convert") or []),
                   weight_block_size=config.get("weight_block_size"))

    @classmethod
    def online(cls) -> "Fp8Config":
        """``quantization="fp8"`` on a checkpoint without a ``quantization_config``."""
        return cls(is_checkpoint_fp8_serialized=False)

    def get_linear_method(self, layer: nn.Module, prefix: str) -> LinearMethod | None:
        if prefix.endswith("lm_head") or is_layer_skipped(self, prefix, self.ignored_layers):
            return None
        return Fp8LinearMethod(self)

    def get_moe_method(self, experts: nn.Module, prefix: str) -> MoEMethod | None:
        if is_layer_skipped(self, prefix, self.ignored_layers):
            return None
        return Fp8MoEMethod(self)

    def supported_act_dtypes(self) -> tuple[torch.dtype, ...]:
        return (torch.float16, torch.bfloat16, torch.float32)

    def verify_device(self, device: torch.device) -> None:
        if device.type != "cuda":
            return
        capability = _cuda_capability(device)
        if tuple(capability) < FP8_MIN_CAPABILITY:
            raise ValueError(f"The quantization method fp8 is not supported for the current GPU. Minimum "
                             f"capability: {FP8_MIN_CAPABILITY[0]}{FP8_MIN_CAPABILITY[1]}. Current capability: "
                             f"{capability[0]}{capability[1]}.")

    def weight_bytes_note(self) -> str:
        if self.weight_block_size is not None:
            return f"fp8 e4m3, {self.weight_block_size[0]}x{self.weight_block_size[1]} blocks"
        return "fp8 e4m3, per-channel" if self.weight_per_channel else "fp8 e4m3, per-tensor"


class Fp8LinearMethod(LinearMethod):
    def __init__(self, config: Fp8Config):
        self.config = config

    def moe_method(self) -> "Fp8MoEMethod":
        """The experts' method of the same scheme (compressed-tensors FP8 checkpoints: GLM-4.5-Air-FP8's)."""
        return Fp8MoEMethod(self.config)

    def create_weights(self, layer: nn.Module, input_size: int, output_sizes: list[int], params_dtype: torch.dtype,
                       **extra: Any) -> None:
        cfg = self.config
        n, k = sum(output_sizes), input_size
        layer.fp8_output_sizes = list(output_sizes)
        layer.fp8_params_dtype = params_dtype
        if not cfg.is_checkpoint_fp8_serialized:
            # Online: the checkpoint's 16/32-bit weight loads as a dense one; quantized after loading.
            _new_param(layer, "weight", torch.empty(n, k, dtype=params_dtype), _dense_loader(layer))
            return
        _new_param(layer, "weight", torch.empty(n, k, dtype=FP8_DTYPE), _dense_loader(layer))
        if cfg.weight_block_size is not None:
            bn, bk = cfg.weight_block_size
            _new_param(layer, cfg.block_scale_name,
                       torch.empty((n + bn - 1) // bn, (k + bk - 1) // bk, dtype=torch.float32), _dense_loader(layer))
            # One row per bn output rows: the layer's loaders place a fused part and cut a tensor-parallel shard in
            # units of bn rows, as they do for values packed along the outputs (linear.py, _output_pack).
            block_scale = getattr(layer, cfg.block_scale_name)
            block_scale.packed_dim, block_scale.pack_factor = 0, bn
        elif cfg.weight_per_channel:
            _new_param(layer, "weight_scale", torch.empty(n, dtype=torch.float32), _channel_scale_loader(layer))
        else:
            _new_param(layer, "weight_scale", torch.full((len(output_sizes),), float("nan"), dtype=torch.float32),
                       _part_scale_loader)
        if cfg.activation_scheme == "static":
            _new_param(layer, "input_scale", torch.full((len(output_sizes),), float("nan"), dtype=torch.float32),
                       _part_scale_loader)

    def process_weights_after_loading(self, layer: nn.Module) -> None:
        cfg = self.config
        weight = layer.weight.data
        input_scale = None
        layer.fp8_dense = False
        if not cfg.is_checkpoint_fp8_serialized:
            qweight, scale = (per_channel_quantize(weight) if cfg.weight_per_channel else per_tensor_quantize(weight))
            scale = scale.reshape(-1)
        elif cfg.weight_block_size is not None:
            scale = getattr(layer, cfg.block_scale_name).data
            delattr(layer, cfg.block_scale_name)
            bk = cfg.weight_block_size[1]
            if weight.is_cuda and (bk < 32 or bk & (bk - 1)):
                # The block GEMM's k tiles need a power-of-two column block of at least 32 (the fp8 MMA's k; a
                # 16-wide fp8 tl.dot does not compile): run such layers dense (said once per model, never
                # silently). Every published block checkpoint uses 128 x 128.
                if not cfg._block_warning_logged:
                    logger.warning("FP8 checkpoint with weight_block_size %s: the block-scaled FP8 GEMM takes column "
                                   "blocks of a power of two >= 32; its weights are dequantized to %s at load (no "
                                   "memory saving, bf16 speed).", cfg.weight_block_size, layer.fp8_params_dtype)
                    cfg._block_warning_logged = True
                _new_param(layer, "weight", block_dequantize(weight, scale, tuple(cfg.weight_block_size),
                                                             layer.fp8_params_dtype))
                layer.fp8_dense = True
                return
            qweight = weight
        elif cfg.weight_per_channel:
            qweight, scale = weight, layer.weight_scale.data
        else:
            scales = layer.weight_scale.data
            if torch.isnan(scales).any():
                raise ValueError("FP8 checkpoint is missing weight_scale for a part of a fused layer.")
            qweight, scale = weight, scales
            if scales.numel() > 1:
                # One matmul needs one scale: requantize every part to the largest scale (what vLLM does).
                max_scale = scales.max()
                if not torch.all(scales == max_scale):
                    qweight = torch.empty_like(weight)
                    start = 0
                    for size, part_scale in zip(layer.fp8_output_sizes, scales):
                        part = weight[start:start + size].float() * part_scale
                        qweight[start:start + size] = quantize_to_fp8(part, max_scale)
                        start += size
                scale = max_scale.reshape(1)
        if cfg.activation_scheme == "static":
            input_scale = layer.input_scale.data
            if torch.isnan(input_scale).any():
                raise ValueError("FP8 checkpoint with activation_scheme 'static' is missing input_scale.")
            input_scale = input_scale.max().reshape(1)     # one scale for the fused input (vLLM: the max)
        _new_param(layer, "weight", qweight.contiguous())
        _new_param(layer, "weight_scale", scale.float().contiguous())
        if cfg.activation_scheme == "static" and input_scale is not None:
            _new_param(layer, "input_scale", input_scale.float())
        elif "input_scale" in layer._parameters:
            del layer.input_scale

    def dequantized_weight(self, layer: nn.Module, dtype: torch.dtype) -> torch.Tensor:
        """``W`` as the reference defines it (what the CPU multiplies; tests build reference models from it)."""
        if layer.fp8_dense:
            return layer.weight.to(dtype)
        block = self.config.weight_block_size
        scale = layer.weight_scale
        if block is None:
            scale = scale.reshape(-1, 1) if scale.numel() > 1 else scale.reshape(())
        return fp8_dequantize(layer.weight, scale, tuple(block) if block else None, dtype)

    def apply(self, layer: nn.Module, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if layer.fp8_dense:
            return F.linear(x, layer.weight, bias)
        weight = layer.weight
        n, k = weight.shape
        if x.is_cuda and self.config.weight_block_size is not None:
            # one fp32 scale per 128 x 128 tile: the block GEMM (W8A8, x quantized per token and 128 columns)
            from pagedllm.kernels.quant.fp8_block import block_fp8_linear
            return block_fp8_linear(x, weight, layer.weight_scale, tuple(self.config.weight_block_size), bias)
        if not x.is_cuda or self.config.weight_block_size is not None \
                or not scaled_mm_supported(n, k) or x.dtype not in (torch.bfloat16, torch.float16, torch.float32):
            # CPU (and shapes cuBLASLt FP8 rejects): the dequantized weight in x's dtype; no activation rounding.
            return F.linear(x, self.dequantized_weight(layer, x.dtype), bias)
        x2 = x.reshape(-1, k)
        m = x2.shape[0]
        if 0 < m <= GEMV_MAX_M and x.dtype != torch.float32 and kernel_settings.current.triton_gemv:
            from pagedllm.kernels.triton_gemv import skinny_linear
            y = skinny_linear(x2.contiguous(), weight, bias, weight_scale=layer.weight_scale.reshape(-1))
            if y is not None:
                return y.reshape(*x.shape[:-1], n)
        input_scale = getattr(layer, "input_scale", None)
        if input_scale is not None:
            qx = quantize_to_fp8(x2, input_scale)
            sx = input_scale.float().expand(m, 1)
        else:
            from pagedllm.kernels.quant.fp8 import per_token_quant_fp8
            qx, sx = per_token_quant_fp8(x2.contiguous())
        if 1 < m <= W8A8_SKINNY_MAX_M and x.dtype != torch.float32 and kernel_settings.current.triton_gemv:
            from pagedllm.kernels.triton_gemv import skinny_linear
            y = skinny_linear(qx.contiguous(), weight, bias, weight_scale=layer.weight_scale.reshape(-1),
                              x_scale=sx.reshape(-1).contiguous(), out_dtype=x.dtype)
            if y is not None:
                return y.reshape(*x.shape[:-1], n)
        y = fp8_scaled_mm(qx, sx, weight, layer.weight_scale, bias, x.dtype)
        return y.reshape(*x.shape[:-1], n)




class Fp8MoEMethod(MoEMethod):
    """FP8 experts, weight-only: e4m3 weights with fp32 scales, scaled up to the activations' dtype inside the fused
    kernels (at decode a MoE layer reads its chosen experts' weights, so half the bytes is what counts). Three
    sources, one layout (``w13_scale [E, 2I / gn, H / gk]``, ``w2_scale [E, H / gn, I / gk]``; ``gk = 0``: a scale
    per output row):
    * online (``quantization="fp8"`` on a 16/32-bit checkpoint): each expert's rows quantized after loading, one
      scale per row;
    * an FP8 checkpoint with per-tensor scales (one per expert and projection): spread over the rows;
    * a block-quantized checkpoint (Qwen3-30B-A3B-FP8's ``weight_block_size`` 128 x 128 ``weight_scale_inv``);
    * a per-channel checkpoint (compressed-tensors ``strategy: channel``, GLM-4.5-Air-FP8: ``weight_scale``
      ``[N, 1]``, one per output row).
    A checkpoint's static ``input_scale`` is not used: the activations stay in the model dtype (as vLLM's
    weight-only FP8 path on GPUs without FP8 GEMMs)."""

    def __init__(self, config: Fp8Config):
        self.config = config
        # the scale tiles of a block checkpoint's experts; None: one scale per row
        self.block = (tuple(config.weight_block_size) if config.is_checkpoint_fp8_serialized
                      and config.weight_block_size is not None else None)

    def create_weights(self, experts: nn.Module, params_dtype: torch.dtype) -> None:
        cfg = self.config
        if not cfg.is_checkpoint_fp8_serialized:
            experts.create_dense_weights(params_dtype)    # the checkpoint's 16/32-bit experts; quantized after loading
            return
        num, hidden, shard = experts.num_experts, experts.hidden_size, experts.shard
        experts.w13 = nn.Parameter(torch.empty(num, 2 * shard, hidden, dtype=FP8_DTYPE), requires_grad=False)
        experts.w2 = nn.Parameter(torch.empty(num, hidden, shard, dtype=FP8_DTYPE), requires_grad=False)
        if cfg.weight_block_size is not None:
            bn, bk = cfg.weight_block_size
            if shard % bn or shard % bk or bk < 16 or bk & (bk - 1):
                raise ValueError(f"FP8 experts with weight_block_size {cfg.weight_block_size}: this rank's "
                                 f"intermediate size {shard} must be a multiple of both, and the column block a "
                                 "power of two of at least 16.")
            experts.w13_scale = nn.Parameter(torch.full((num, 2 * shard // bn, -(-hidden // bk)), float("nan")),
                                             requires_grad=False)
            experts.w2_scale = nn.Parameter(torch.full((num, -(-hidden // bn), shard // bk), float("nan")),
                                            requires_grad=False)
        elif cfg.weight_per_channel:      # one scale per output row, the layout the kernels take
            experts.w13_scale = nn.Parameter(torch.full((num, 2 * shard, 1), float("nan")), requires_grad=False)
            experts.w2_scale = nn.Parameter(torch.full((num, hidden, 1), float("nan")), requires_grad=False)
        else:     # per tensor: one scale per expert and projection (gate, up, down), spread over rows later
            experts.part_scales = nn.Parameter(torch.full((num, 3), float("nan")), requires_grad=False)

    def load(self, experts: nn.Module, expert: int, part: str, kind: str, tensor: torch.Tensor) -> bool:
        cfg = self.config
        if kind == "weight" or not cfg.is_checkpoint_fp8_serialized:
            return False          # weights: the layer's own copy (into fp8 or dense parameters); no scales online
        if kind == "input_scale":
            if not cfg._moe_input_scale_logged:
                logger.info("FP8 experts run weight-only: the checkpoint's input_scale (static activation scales) "
                            "is not used; activations stay in the model dtype.")
                cfg._moe_input_scale_logged = True
            return True
        with torch.no_grad():
            if kind == cfg.block_scale_name and cfg.weight_block_size is not None:
                bn, bk = cfg.weight_block_size
                cut = experts.shard_of(part, tensor, per_row=bn, per_col=bk)
                if part == "down":
                    experts.w2_scale.data[expert].copy_(cut)
                else:
                    row = 0 if part == "gate" else experts.shard // bn
                    experts.w13_scale.data[expert, row:row + cut.shape[0]].copy_(cut)
                return True
            if kind == "weight_scale" and cfg.weight_per_channel:       # [N, 1]: down's rows are all hidden
                if part == "down":
                    experts.w2_scale.data[expert].copy_(tensor.reshape(-1, 1))
                else:
                    row = 0 if part == "gate" else experts.shard
                    experts.w13_scale.data[expert, row:row + experts.shard].copy_(
                        experts.shard_of(part, tensor.reshape(-1, 1)))
                return True
            if kind == "weight_scale" and cfg.weight_block_size is None:
                experts.part_scales.data[expert, ("gate", "up", "down").index(part)] = tensor.reshape(-1)[0].float()
                return True
        return False

    def process_weights_after_loading(self, experts: nn.Module) -> None:
        cfg = self.config
        if not cfg.is_checkpoint_fp8_serialized:
            w13, w2 = experts.w13.data, experts.w2.data
            q13, q2 = torch.empty_like(w13, dtype=FP8_DTYPE), torch.empty_like(w2, dtype=FP8_DTYPE)
            s13 = torch.empty(w13.shape[:2] + (1,), dtype=torch.float32, device=w13.device)
            s2 = torch.empty(w2.shape[:2] + (1,), dtype=torch.float32, device=w2.device)
            for e in range(experts.num_experts):       # one expert at a time: no second full-size temporary
                q13[e], s13[e] = per_channel_quantize(w13[e])
                q2[e], s2[e] = per_channel_quantize(w2[e])
            experts.w13, experts.w2 = (nn.Parameter(q, requires_grad=False) for q in (q13, q2))
            experts.w13_scale, experts.w2_scale = (nn.Parameter(t, requires_grad=False) for t in (s13, s2))
            return
        if cfg.weight_per_channel and cfg.weight_block_size is None:
            if torch.isnan(experts.w13_scale).any() or torch.isnan(experts.w2_scale).any():
                raise ValueError("FP8 checkpoint is missing weight_scale for an expert's projection.")
        elif cfg.weight_block_size is None:
            scales = experts.part_scales.data
            if torch.isnan(scales).any():
                raise ValueError("FP8 checkpoint is missing weight_scale for an expert's gate, up or down projection.")
            shard, hidden = experts.shard, experts.hidden_size
            s13 = scales[:, :2].repeat_interleave(shard, dim=1).unsqueeze(-1).contiguous()
            s2 = scales[:, 2:].expand(-1, hidden).unsqueeze(-1).contiguous()
            del experts.part_scales
            experts.w13_scale, experts.w2_scale = (nn.Parameter(t, requires_grad=False) for t in (s13, s2))
        elif torch.isnan(experts.w13_scale).any() or torch.isnan(experts.w2_scale).any():
            raise ValueError("FP8 checkpoint is missing weight_scale_inv for an expert's projection.")

    def kernel_args(self, experts: nn.Module) -> dict[str, Any]:
        return {"w13": experts.w13, "w2": experts.w2, "w13_scale": experts.w13_scale, "w2_scale": experts.w2_scale,
                "scale_group": self.block or (1, 0)}

    def expert_matmuls(self, experts: nn.Module, expert: int, dtype: torch.dtype) -> tuple[Callable, Callable]:
        w13 = fp8_dequantize(experts.w13[expert], experts.w13_scale[expert], self.block, dtype)
        w2 = fp8_dequantize(experts.w2[expert], experts.w2_scale[expert], self.block, dtype)
        return (lambda x: F.linear(x, w13)), (lambda h: F.linear(h, w2))


def compressed_tensors_fp8_method(weights: dict | None, input_activations: dict | None,
                                  fmt: str) -> LinearMethod | None:
    """compressed-tensors' FP8 schemes (llm-compressor ``FP8`` / ``FP8_DYNAMIC``, format ``float-quantized``):
    e4m3 ``weight`` with ``weight_scale`` per tensor (``[1]``, one per fused part, requantized to their max) or per
    channel (``[N, 1]``); activations dynamic per token, or static per tensor with ``input_scale``. None for any other
    scheme (the compressed_tensors module then tries its other handlers).

    Weight-only FP8 (no ``input_activations``) runs as dynamic per-token W8A8 on the GPU (vLLM runs it weight-only
    through Marlin): only the activation rounding differs."""
    if not weights or weights.get("type") != "float" or weights.get("num_bits") != 8:
        return None
    strategy = weights.get("strategy", "tensor")
    if strategy not in ("tensor", "channel", "block"):
        raise ValueError(f"compressed-tensors FP8 weight strategy {strategy!r} is not supported "
                         f"(supported: 'tensor', 'channel', 'block').")
    if weights.get("dynamic"):
        raise ValueError("compressed-tensors FP8 with dynamic weight scales is not supported.")
    block = None
    if strategy == "block":
        # llm-compressor's FP8_BLOCK (Qwen3 / DeepSeek-style 128 x 128 tiles): weight_scale [N / bn, K / bk], the
        # activations dynamic per token and group of 128 (the block GEMM's own quantization).
        block = weights.get("block_structure")
        if not (isinstance(block, list) and len(block) == 2 and all(isinstance(b, int) and b > 0 for b in block)):
            raise ValueError(f"compressed-tensors FP8 block strategy needs block_structure [rows, columns], got "
                             f"{block!r}.")
    activation_scheme = "dynamic"
    if input_activations is not None:
        if input_activations.get("type") != "float" or input_activations.get("num_bits") != 8:
            return None
        if block is not None and not input_activations.get("dynamic", False):
            raise ValueError("compressed-tensors FP8 block weights take dynamic activations only (the block GEMM "
                             "quantizes them per token and group); this checkpoint's are static.")
        if not input_activations.get("dynamic", False):
            if input_activations.get("strategy", "tensor") != "tensor":
                raise ValueError(f"compressed-tensors FP8 static activations with strategy "
                                 f"{input_activations.get('strategy')!r} are not supported (supported: 'tensor').")
            activation_scheme = "static"
    return Fp8LinearMethod(Fp8Config(is_checkpoint_fp8_serialized=True, activation_scheme=activation_scheme,
                                     weight_per_channel=strategy == "channel", weight_block_size=block,
                                     block_scale_name="weight_scale"))
