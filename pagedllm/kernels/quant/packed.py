"""The canonical packed form of a weight-only integer-quantized matrix, shared by every format and kernel.

Every integer format (AWQ, GPTQ, compressed-tensors pack-quantized, GGUF Q4_0/Q4_1/Q8_0/K-quants) is converted to
this form once, after loading, so there is one family of kernels (torch on the CPU, Triton on the GPU):

- ``qweight``: int32 ``[K // pack, N]`` with ``pack = 32 // bits`` (bits 4 or 8); the value of input row ``k`` and
  output column ``n`` is ``(qweight[k // pack, n] >> (bits * (k % pack))) & (2**bits - 1)`` (unsigned; GPTQ's
  order along K). ``K`` is a multiple of ``pack``.
- ``scales``, ``offsets``: ``[K // group_size, N]``, floating point; the dequantized weight is
  ``W[k, n] = q[k, n] * scales[k // group_size, n] + offsets[k // group_size, n]`` (a zero point ``z`` becomes
  ``offsets = -z * scales``; GGUF's ``d * q + m`` is ``scales = d, offsets = m``). ``group_size`` divides ``K``
  (``group_size == K``: one group per column, i.e. per-channel).
- ``perm`` (optional): int64 ``[K]``; the layer multiplies ``x[:, perm]`` (GPTQ ``desc_act``: the rows were sorted
  by group at load so that groups are contiguous).

``y = x @ W (+ bias)`` for ``x`` ``[M, K]``: the matmul every kernel computes and ``reference_matmul`` defines.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class PackedWeight:
    qweight: torch.Tensor
    scales: torch.Tensor
    offsets: torch.Tensor
    bits: int
    group_size: int
    perm: torch.Tensor | None = None

    @property
    def in_features(self) -> int:
        return self.qweight.shape[0] * (32 // self.bits)

    @property
    def out_features(self) -> int:
        return self.qweight.shape[1]


def pack_along_k(q: torch.Tensor, bits: int) -> torch.Tensor:
    """Unsigned integers ``q`` ``[K, N]`` (each < 2**bits) -> int32 ``[K // pack, N]``."""
    if bits not in (4, 8):
        raise ValueError(f"bits must be 4 or 8, got {bits}")
    pack = 32 // bits
    K, N = q.shape
    if K % pack:
        raise ValueError(f"K ({K}) must be a multiple of {pack} to pack {bits}-bit values along it")
    q = q.to(torch.int64).reshape(K // pack, pack, N)
    shifts = (torch.arange(pack, device=q.device, dtype=torch.int64) * bits).view(1, pack, 1)
    words = (q << shifts).sum(dim=1)            # < 2**32: fits int64, then wraps into int32's range
    return (words - ((words >> 31) << 32)).to(torch.int32)


def unpack_along_k(qweight: torch.Tensor, bits: int) -> torch.Tensor:
    """int32 ``[K // pack, N]`` -> unsigned values ``[K, N]`` (int32)."""
    pack = 32 // bits
    shifts = (torch.arange(pack, device=qweight.device, dtype=torch.int32) * bits).view(1, pack, 1)
    q = (qweight.unsqueeze(1) >> shifts) & ((1 << bits) - 1)
    return q.reshape(qweight.shape[0] * pack, qweight.shape[1])


def dequantize(w: PackedWeight, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The dense ``W`` ``[K, N]`` that ``w`` stands for, in ``dtype`` (computed in float32)."""
    q = unpack_along_k(w.qweight, w.bits).to(torch.float32)
    scales = w.scales.to(torch.float32).repeat_interleave(w.group_size, dim=0)
    offsets = w.offsets.to(torch.float32).repeat_interleave(w.group_size, dim=0)
    return (q * scales + offsets).to(dtype)


def reference_matmul(x: torch.Tensor, w: PackedWeight, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ W (+ bias)`` through the dense float32 ``W``: the definition every kernel is tested against."""
    if w.perm is not None:
        x = x[:, w.perm]
    y = x.to(torch.float32) @ dequantize(w)
    if bias is not None:
        y = y + bias.to(torch.float32)
    return y.to(x.dtype)


# How a kernel tile of ``block_k`` unpacked rows reads the scales and offsets (a constexpr of the Triton kernels):
# gathered per packed row, one ``[N]`` row per tile (the tile lies inside one group), or one row for the whole
# matmul (one group: per-channel).
SCALE_GATHER, SCALE_PER_TILE, SCALE_ONE_GROUP = 0, 1, 2


def scale_mode(group_size: int, k: int, block_k: int, pack: int) -> int:
    if group_size >= k:
        return SCALE_ONE_GROUP
    if group_size % block_k == 0:
        return SCALE_PER_TILE
    if group_size % pack:
        raise ValueError(f"group_size ({group_size}) must be a multiple of {pack} for {32 // pack}-bit packed "
                         f"weights")
    return SCALE_GATHER
