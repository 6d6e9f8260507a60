"""Weight-only int4 / int8 matmuls on the CPU, from the canonical ``PackedWeight`` (packed.py).

Three forms, picked once per layer by ``prepare_cpu_weight``:
- ``int4pack``: torch's own 4-bit weight-only GEMM (``aten._weight_int4pack_mm_for_cpu``, groups of 32..256 along
  K). Its dequantized weight is ``(q - 8) * scale + zero``; the canonical ``q * s + o`` is that form exactly with
  ``scale = s, zero = o + 8 * s``. No dense copy is kept for GEMMs of many rows, where oneDNN's dense bf16 GEMM
  would be faster (SmolLM2 at 16 concurrent requests +10%, docs/perf.md, issue 19, session 11): it would take 2
  bytes a weight beside int4's ~0.6, more than the dequantized model that a quantized checkpoint is chosen to avoid.
- ``int8pack``: torch's 8-bit per-channel GEMM (``aten._weight_int8pack_mm``: ``x @ (w_int8 * scale)^T``) for
  8-bit weights with one group per column. ``q * s + o = (q - 128) * s + (o + 128 * s)``: the second term is a
  per-column constant, added as ``rowsum(x) * c`` (exact, so asymmetric zero points work too).
- ``dequant``: anything else (8-bit grouped, group sizes int4pack lacks): the weight is dequantized to ``x.dtype``
  at each call and multiplied by ``F.linear``; nothing dense is kept (the memory saving is the point).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from pagedllm.kernels.cpu_threads import gemm_for_rows
from pagedllm.kernels.quant.packed import PackedWeight, dequantize, unpack_along_k

INT4PACK_GROUP_SIZES = (32, 64, 128, 256)


@dataclass
class CpuPackedWeight:
    kind: str                            # "int4pack", "int8pack" or "dequant"
    group_size: int
    perm: torch.Tensor | None
    packed: PackedWeight | None = None   # "dequant": the canonical form itself
    weight: torch.Tensor | None = None   # int4pack: torch's packed uint8; int8pack: int8 [N, K]
    scales: torch.Tensor | None = None   # int4pack: [K // G, N, 2] (scale, zero); int8pack: [N]
    column_offsets: torch.Tensor | None = None   # int8pack: [N] times rowsum(x), None when symmetric

    def tensors(self) -> dict[str, torch.Tensor]:
        """Every tensor this form holds (for the weights' memory figure)."""
        found = {name: t for name in ("perm", "weight", "scales", "column_offsets")
                 if (t := getattr(self, name)) is not None}
        if self.packed is not None:
            found.update(qweight=self.packed.qweight, scales=self.packed.scales, offsets=self.packed.offsets)
        return found


def int4pack_supported() -> bool:
    return hasattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu") and \
        hasattr(torch.ops.aten, "_convert_weight_to_int4pack_for_cpu")


def prepare_cpu_weight(w: PackedWeight, dtype: torch.dtype) -> CpuPackedWeight:
    """The fastest CPU form of ``w`` for activations of ``dtype``."""
    K, N = w.in_features, w.out_features
    if w.bits == 4 and w.group_size in INT4PACK_GROUP_SIZES and int4pack_supported():
        q = unpack_along_k(w.qweight, 4).t().contiguous()           # [N, K], values 0..15
        try:
            packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1)
        except RuntimeError:     # a shape this torch's int4pack does not take: the generic path below
            packed = None
        if packed is not None:
            scales = w.scales.to(torch.float32)
            zeros = w.offsets.to(torch.float32) + 8 * scales
            return CpuPackedWeight("int4pack", w.group_size, w.perm, weight=packed,
                                   scales=torch.stack([scales, zeros], dim=-1).to(dtype).contiguous())
    if w.bits == 8 and w.group_size == K and hasattr(torch, "_weight_int8pack_mm"):
        q = unpack_along_k(w.qweight, 8)                              # [K, N], values 0..255
        weight = (q - 128).to(torch.int8).t().contiguous()
        scales = w.scales.to(torch.float32).reshape(N)
        offsets = w.offsets.to(torch.float32).reshape(N) + 128 * scales
        return CpuPackedWeight("int8pack", w.group_size, w.perm, weight=weight, scales=scales.to(dtype),
                               column_offsets=None if bool((offsets == 0).all()) else offsets.to(dtype))
    return CpuPackedWeight("dequant", w.group_size, w.perm, packed=w)


def cpu_packed_matmul(x: torch.Tensor, w: CpuPackedWeight, bias: torch.Tensor | None) -> torch.Tensor:
    """``x @ W (+ bias)`` for ``x`` ``[M, K]`` (any leading dims), in ``x.dtype``."""
    # Each reshape / cast below is skipped where it would be a no-op: dispatched ops all the same (360 of a 16-row
    # bf16 decode step's 2,019; with the norm's, +1.2% at batch 1 on the 2-core EPYC: issue 19, session 20).
    shape = x.shape
    if x.dim() != 2:
        x = x.reshape(-1, shape[-1])
    if w.perm is not None:
        x = x[:, w.perm]
    if w.kind == "int4pack":
        y = gemm_for_rows(torch.ops.aten._weight_int4pack_mm_for_cpu, x.shape[0], x.contiguous(), w.weight,
                          w.group_size, _as(w.scales, x.dtype))
    elif w.kind == "int8pack":
        y = torch._weight_int8pack_mm(x.contiguous(), w.weight, _as(w.scales, x.dtype))
        if w.column_offsets is not None:
            y = y + x.sum(dim=-1, keepdim=True) * _as(w.column_offsets, x.dtype)
    else:
        y = x @ dequantize(w.packed, x.dtype)
    if bias is not None:
        y = y + _as(bias, y.dtype)
    return y if len(shape) == 2 else y.reshape(*shape[:-1], y.shape[-1])


def _as(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return t if t.dtype == dtype else t.to(dtype)
