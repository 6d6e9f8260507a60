"""MXFP4 checkpoints (``quant_method: "mxfp4"``): gpt-oss's published form, its MoE experts in the OCP
Microscaling format, every other tensor in bf16.

* CUDA: the experts stay MXFP4 (``Mxfp4MoEMethod``: the checkpoint's bytes and scale bytes, gate and up rows
  de-interleaved) and the fused MoE kernels (kernels/triton_moe.py) unpack them inside their K loop to the
  activations' dtype (weight-only: Hopper has no FP4 tensor-core MMA; fp32 accumulation), so gpt-oss-20b's experts
  hold 9.5 GiB instead of 35.6 GiB in bf16 (120b: 56.7 instead of 213.6 GiB), and a decode step reads 17 / 64 of
  their bytes (4.25 bits a value).
  Tensor parallel keeps them MXFP4 when each rank's intermediate share is a whole number of 32-value blocks;
  otherwise they are dequantized at load (logged, and said in the start-up line).
* CPU: dequantized to the model's dtype as they are read (gpt_oss.py's ``load_weights``): the experts take the
  dense model's memory and the CPU's expert loop runs HF's math on them. ``KEEP_MXFP4_ON_CPU`` is an internal switch
  for tests (the fused kernels under Triton's interpreter), not a user option.

The format (OCP Microscaling Formats v1.0, MXFP4): blocks of 32 values share one scale, an E8M0 byte ``s`` (the
power of two ``2 ** (s - 127)``); each value is FP4 E2M1 (1 sign, 2 exponent, 1 mantissa bits: 0, 0.5, 1, 1.5, 2, 3,
4, 6 and their negatives). A weight ``[..., N, K]`` is stored as ``*_blocks`` ``[..., N, K / 32, 16]`` uint8, two
values a byte, the lower-indexed value in the low nibble, and ``*_scales`` ``[..., N, K / 32]`` uint8.
"""
from __future__ import annotations

import logging
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from pagedllm.model.quantization.base import LinearMethod, MoEMethod, QuantizationConfig

logger = logging.getLogger(__name__)

#: Tests only: keep the experts MXFP4 on the CPU too (the default there is dequantize-at-load).
KEEP_MXFP4_ON_CPU = False
BLOCK = 32      # values per shared scale
# E2M1 by its 4 bits (sign bit 3): the values the OCP spec lists for each code.
E2M1_VALUES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0)
SCALE_BIAS = 127
_BYTE_PAIRS = torch.tensor([[E2M1_VALUES[b & 0x0F], E2M1_VALUES[b >> 4]] for b in range(256)])   # [256, 2]


def dequantize_mxfp4(blocks: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``blocks [..., N, G, 16]`` uint8 and ``scales [..., N, G]`` uint8 -> the weight ``[..., N, G * 32]`` in
    ``dtype`` (exact: every MXFP4 value is a bf16 one unless its scale is outside bf16's range)."""
    if blocks.dtype != torch.uint8 or scales.dtype != torch.uint8:
        raise ValueError(f"MXFP4 blocks and scales are uint8; the checkpoint has {blocks.dtype} / {scales.dtype}.")
    if blocks.shape[:-1] != scales.shape or blocks.shape[-1] != BLOCK // 2:
        raise ValueError(f"MXFP4 blocks {tuple(blocks.shape)} do not match scales {tuple(scales.shape)} "
                         f"(expected blocks [..., N, G, {BLOCK // 2}] for scales [..., N, G]).")
    # Each byte's two values at once from a 256-entry table (low nibble first): 3.2x faster than a lookup per nibble
    # (gpt-oss-20b gate_up of one expert on one CPU thread: 85 vs 270 ms), the same values.
    pairs = _BYTE_PAIRS.to(blocks.device)
    values = pairs[blocks.int()].view(*blocks.shape[:-1], BLOCK)                # [..., N, G, 32] fp32
    values.mul_(torch.exp2(scales.float() - SCALE_BIAS).unsqueeze(-1))           # a power of two: exact in fp32
    return values.flatten(-2).to(dtype)


class Mxfp4Config(QuantizationConfig):
    """gpt-oss's MXFP4 checkpoints: the experts kept MXFP4 on CUDA (``Mxfp4MoEMethod``), dequantized at load on the
    CPU; every linear layer dense."""

    name = "mxfp4"

    def __init__(self):
        self.keep_mxfp4 = False           # verify_device: on CUDA
        self.kept: dict[str, tuple[int, int]] = {}     # experts' prefix -> their MXFP4 bytes, in the model dtype
        self.dense_reason: str | None = None

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "Mxfp4Config":
        return cls()

    def verify_device(self, device: torch.device) -> None:
        self.keep_mxfp4 = device.type == "cuda" or KEEP_MXFP4_ON_CPU

    def get_linear_method(self, layer: nn.Module, prefix: str) -> LinearMethod | None:
        return None          # the checkpoint's linear layers are bf16

    def get_moe_method(self, experts: nn.Module, prefix: str) -> MoEMethod | None:
        if not self.keep_mxfp4:
            return None      # dense experts, filled with the dequantized MXFP4 weights
        if experts.shard % BLOCK or experts.hidden_size % BLOCK:
            if self.dense_reason is None:
                self.dense_reason = (f"each rank's intermediate share ({experts.shard}) or the hidden size "
                                     f"({experts.hidden_size}) is not a multiple of {BLOCK}")
                logger.info("MXFP4 experts dequantized at load: %s (a rank's share of a row must be whole MXFP4 "
                            "blocks to stay MXFP4).", self.dense_reason)
            return None
        return Mxfp4MoEMethod(self)

    def weight_bytes_note(self) -> str:
        if self.kept:
            kept, dense = (sum(v) for v in zip(*self.kept.values()))
            return f"mxfp4 experts kept in MXFP4: {kept / 2**30:.2f} GiB ({dense / 2**30:.2f} GiB dequantized)"
        reason = f": {self.dense_reason}" if self.dense_reason else ""
        return f"mxfp4 experts dequantized at load{reason} (weights held in the model dtype)"

    def unsupported_model_message(self, model_name: str) -> str:
        return (f"Quantization (mxfp4) is supported for gpt-oss (GptOssForCausalLM) checkpoints only, not yet for "
                f"{model_name}.")


class Mxfp4MoEMethod(MoEMethod):
    """The experts as the checkpoint stores them, this rank's share: ``w13 [E, 2I, H / 2]`` and ``w2 [E, H, I / 2]``
    uint8 (two e2m1 values a byte, the lower-indexed one in the low nibble; gate rows then up rows, where the
    checkpoint interleaves them) and ``w13_scale [E, 2I, H / 32]`` / ``w2_scale [E, H, I / 32]`` e8m0 bytes. The
    checkpoint's ``*_blocks`` and ``*_scales`` come in as the kinds ``weight`` and ``weight_scale`` of each expert's
    gate / up / down (gpt_oss.py cuts them per expert)."""

    # A dummy load (load_format="dummy") fills the bytes at random and keeps this scale, 2 ** -11: |w| <= 0.003
    DUMMY_SCALE = 127 - 11

    def __init__(self, config: Mxfp4Config):
        self.config = config

    def create_weights(self, experts: nn.Module, params_dtype: torch.dtype) -> None:
        num, hidden, shard = experts.num_experts, experts.hidden_size, experts.shard
        shapes = {"w13": (2 * shard, hidden), "w2": (hidden, shard)}
        kept = dense = 0
        for name, (rows, cols) in shapes.items():
            setattr(experts, name, nn.Parameter(torch.empty(num, rows, cols // 2, dtype=torch.uint8),
                                                requires_grad=False))
            scale = nn.Parameter(torch.full((num, rows, cols // BLOCK), self.DUMMY_SCALE, dtype=torch.uint8),
                                 requires_grad=False)
            scale.keep_on_dummy = True
            setattr(experts, f"{name}_scale", scale)
            kept += num * rows * (cols // 2 + cols // BLOCK)
            dense += num * rows * cols * params_dtype.itemsize
        self.config.kept[experts.prefix] = (kept, dense)

    def load(self, experts: nn.Module, expert: int, part: str, kind: str, tensor: torch.Tensor) -> bool:
        """One expert's gate / up ``[I, H / 32, 16]`` / down ``[H, I / 32, 16]`` blocks (``weight``) or their
        ``[.., H / 32]`` / ``[.., I / 32]`` scales (``weight_scale``): this rank's share."""
        if kind not in ("weight", "weight_scale") or tensor.dtype != torch.uint8:
            raise ValueError(f"MXFP4 experts ({experts.prefix}) load from the checkpoint's uint8 *_blocks and "
                             f"*_scales; got {kind!r} {tensor.dtype} for expert {expert} {part}.")
        cut = experts.shard_of(part, tensor, per_col=BLOCK)          # down: whole blocks of this rank's columns
        if kind == "weight":
            cut = cut.flatten(1)
        param = getattr(experts, ("w2" if part == "down" else "w13") + ("_scale" if kind == "weight_scale" else ""))
        row = 0 if part != "up" else experts.shard
        dest = param.data[expert] if part == "down" else param.data[expert, row:row + experts.shard]
        if dest.shape != cut.shape:
            raise ValueError(f"MXFP4 experts ({experts.prefix}): expert {expert} {part} {kind} has shape "
                             f"{tuple(tensor.shape)}; this model takes {tuple(dest.shape)} as this rank's share.")
        with torch.no_grad():
            dest.copy_(cut)
        return True

    @staticmethod
    def required_kinds(experts: nn.Module) -> dict[str, list[str]]:
        return {"gate": ["weight_scale"], "up": ["weight_scale"], "down": ["weight_scale"]}

    def kernel_args(self, experts: nn.Module) -> dict[str, Any]:
        return {"w13": experts.w13, "w2": experts.w2, "w13_scale": experts.w13_scale, "w2_scale": experts.w2_scale,
                "mxfp4": True}

    @staticmethod
    def dequantized(experts: nn.Module, expert: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """Expert ``expert``'s ``w13 [2I, H]`` and ``w2 [H, I]`` in ``dtype`` (the fused kernels' values)."""
        return tuple(dequantize_mxfp4(w[expert].unflatten(-1, (-1, BLOCK // 2)), s[expert], dtype)
                     for w, s in ((experts.w13, experts.w13_scale), (experts.w2, experts.w2_scale)))

    def expert_matmuls(self, experts: nn.Module, expert: int, dtype: torch.dtype) -> tuple[Callable, Callable]:
        w13, w2 = self.dequantized(experts, expert, dtype)
        return (lambda x: F.linear(x, w13)), (lambda h: F.linear(h, w2))
