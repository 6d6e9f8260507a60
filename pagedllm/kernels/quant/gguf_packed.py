"""GGUF quantized tensors -> the canonical packed form (packed.py), kept quantized for the packed kernels.

A GGUF weight of a linear layer with ``N`` output and ``K`` input features has ggml shape ``ne = [K, N]`` (fastest
first); ``GGUFReader`` gives its data as raw ``uint8`` blocks, one row of ``K // block * type_size`` bytes per output
feature (``[N, row_bytes]``). Each block holds ``block`` consecutive input features of one row. The canonical form
is transposed (``qweight [K // pack, N]``, ``scales / offsets [K // group_size, N]``), so a row of blocks becomes a
column here. Row operations on the checkpoint (llama.cpp's rotary interleave of Q/K rows, ``gguf_loader``'s
``_reverse_llama_permute``) can be applied to the ``[N, row_bytes]`` bytes before conversion: rows are whole.

Per type (``q`` unsigned as stored, ``d``/``dmin``/``m`` fp16 block fields, ``sc``/``mn`` the sub-block scales):

===========  ==========  =====  ======  ==========================  ==================================
type         block       bits   group   scale                       offset
===========  ==========  =====  ======  ==========================  ==================================
Q4_0         32          4      32      d                           -8 d             (w = d (q - 8))
Q4_1         32          4      32      d                           m                (w = d q + m)
Q8_0         32          8      32      d                           -128 d           (q + 128 of int8)
Q4_K         256         4      32      d sc  (6-bit)               -dmin mn (6-bit)
Q5_K         256         8      32      d sc                        -dmin mn         (5-bit q)
Q6_K         256         8      16      d sc  (int8)                -32 d sc         (6-bit q)
===========  ==========  =====  ======  ==========================  ==================================

Exactness: ``packed.dequantize`` of the result equals ``gguf.quants.dequantize`` of the bytes bit for bit for
Q4_0, Q4_1, Q8_0, Q4_K and Q5_K when ``scale_dtype`` is float32 (every product is exact in float32); Q6_K's
``q * (d sc) - 32 (d sc)`` can round once where gguf's ``(d sc) (q - 32)`` does not (<= 1 ulp of float32).
``scale_dtype=torch.float16`` halves the scale bytes the kernels read and stays exact for Q4_0/Q4_1/Q8_0 (``d`` is
fp16 and the offsets are ``d`` times a power of two) but rounds the K-quants' ``d * sc``.
"""
from __future__ import annotations

import numpy as np
import torch

from pagedllm.kernels.quant.packed import PackedWeight, pack_along_k, unpack_along_k

# GGML type id -> (name, elements per block, bytes per block); ids from ggml.h (stable across versions).
GGUF_PACKED_TYPES: dict[int, tuple[str, int, int]] = {
    2: ("Q4_0", 32, 18), 3: ("Q4_1", 32, 20), 8: ("Q8_0", 32, 34),
    12: ("Q4_K", 256, 144), 13: ("Q5_K", 256, 176), 14: ("Q6_K", 256, 210),
}
_BY_NAME = {name: type_id for type_id, (name, _, _) in GGUF_PACKED_TYPES.items()}
# GGML type id -> (bits, group_size) of its packed form (the table in the module docstring).
_PACKED_FORMAT: dict[int, tuple[int, int]] = {2: (4, 32), 3: (4, 32), 8: (8, 32), 12: (4, 32), 13: (8, 32),
                                              14: (8, 16)}

# Rows converted per chunk: the unpacked values pass through int64 in pack_along_k (8 bytes per weight), so a
# 7B gate_up (37,888 x 3,584) converted at once would briefly take ~1 GB; 4,096 rows keep it near 120 MB.
_ROWS_PER_CHUNK = 4096


def gguf_type_id(qtype) -> int:
    """A ``gguf.GGMLQuantizationType``, its name ("Q4_K") or its integer id -> the integer id."""
    if isinstance(qtype, str):
        if qtype not in _BY_NAME:
            raise ValueError(f"GGUF type {qtype!r} cannot be kept quantized; supported: {', '.join(_BY_NAME)}")
        return _BY_NAME[qtype]
    return int(qtype)


def supports_gguf_type(qtype) -> bool:
    """Whether ``gguf_to_packed`` converts this GGUF type (otherwise dequantize it at load)."""
    try:
        return gguf_type_id(qtype) in GGUF_PACKED_TYPES
    except ValueError:
        return False


def gguf_packed_format(qtype) -> tuple[int, int]:
    """``(bits, group_size)`` of ``gguf_to_packed``'s result for this GGUF type."""
    type_id = gguf_type_id(qtype)
    if type_id not in _PACKED_FORMAT:
        raise ValueError(f"GGUF type {qtype!r} cannot be kept quantized; supported: {', '.join(_BY_NAME)}")
    return _PACKED_FORMAT[type_id]


def widen_packed(w: PackedWeight, bits: int, group_size: int) -> PackedWeight:
    """The same weight with ``bits``-bit storage and groups of ``group_size`` (exactly: 4-bit values fit 8 bits, and
    a group's scale and offset repeat over its sub-groups), so that parts of a fused layer stored in different GGUF
    types (Q4_K q/k with a Q6_K v) share one packed form. ``bits >= w.bits`` and ``group_size`` divides
    ``w.group_size``."""
    if bits < w.bits or w.group_size % group_size:
        raise ValueError(f"cannot widen a {w.bits}-bit group-{w.group_size} weight to {bits}-bit group {group_size}")
    qweight = w.qweight if bits == w.bits else pack_along_k(unpack_along_k(w.qweight, w.bits), bits)
    repeat = w.group_size // group_size
    scales, offsets = w.scales, w.offsets
    if repeat > 1:
        scales, offsets = scales.repeat_interleave(repeat, dim=0), offsets.repeat_interleave(repeat, dim=0)
    return PackedWeight(qweight=qweight, scales=scales, offsets=offsets, bits=bits, group_size=group_size)


def _f16(raw: torch.Tensor) -> torch.Tensor:
    """``[..., 2]`` little-endian bytes -> float32 ``[...]`` (the fp16 fields of a block)."""
    return raw.contiguous().view(torch.float16).squeeze(-1).to(torch.float32)


def _nibbles(qs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return qs & 0x0F, qs >> 4


def _k_scale_min(scales: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Q4_K / Q5_K: 12 bytes -> eight 6-bit sub-block scales and eight 6-bit mins (``get_scale_min`` in gguf)."""
    d, m, m_d = scales[:, 0:4], scales[:, 4:8], scales[:, 8:12]
    sc = torch.cat([d & 0x3F, (m_d & 0x0F) | ((d >> 2) & 0x30)], dim=-1)
    mn = torch.cat([m & 0x3F, (m_d >> 4) | ((m >> 2) & 0x30)], dim=-1)
    return sc.to(torch.float32), mn.to(torch.float32)


def _decode_blocks(name: str, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int, int]:
    """``b`` uint8 ``[n_blocks, type_size]`` -> (q ``[n_blocks, block]`` uint8 unsigned, scales and offsets
    ``[n_blocks, block // group]`` float32, bits, group)."""
    nb = b.shape[0]
    if name in ("Q4_0", "Q4_1"):
        d = _f16(b[:, 0:2].reshape(nb, 1, 2))
        first = 4 if name == "Q4_1" else 2
        lo, hi = _nibbles(b[:, first:first + 16])
        q = torch.cat([lo, hi], dim=-1)                              # elements 0..15 low nibbles, 16..31 high
        offset = _f16(b[:, 2:4].reshape(nb, 1, 2)) if name == "Q4_1" else -8.0 * d
        return q, d, offset, 4, 32
    if name == "Q8_0":
        d = _f16(b[:, 0:2].reshape(nb, 1, 2))
        q = (b[:, 2:34].view(torch.int8).to(torch.int16) + 128).to(torch.uint8)
        return q, d, -128.0 * d, 8, 32
    if name in ("Q4_K", "Q5_K"):
        d = _f16(b[:, 0:2].reshape(nb, 1, 2))
        dmin = _f16(b[:, 2:4].reshape(nb, 1, 2))
        sc, mn = _k_scale_min(b[:, 4:16])
        if name == "Q4_K":
            qs, qh = b[:, 16:144], None
        else:
            qh, qs = b[:, 16:48], b[:, 48:176]
        # 128 bytes = 4 chunks of 32: chunk c holds sub-block 2c in its low nibbles and 2c + 1 in its high ones.
        lo, hi = _nibbles(qs.reshape(nb, 4, 32))
        q = torch.stack([lo, hi], dim=2).reshape(nb, 8, 32)
        bits = 4
        if qh is not None:     # bit i of qh[j] is the fifth bit of element j of sub-block i
            shifts = torch.arange(8, dtype=torch.uint8, device=b.device).view(1, 8, 1)
            q = q | (((qh.reshape(nb, 1, 32) >> shifts) & 1) << 4)
            bits = 8
        return q.reshape(nb, 256), d * sc, -(dmin * mn), bits, 32
    if name == "Q6_K":
        ql, qh, scales, d = b[:, 0:128], b[:, 128:192], b[:, 192:208], b[:, 208:210]
        d = _f16(d.reshape(nb, 1, 2))
        scale = d * scales.contiguous().view(torch.int8).to(torch.float32)      # [nb, 16]
        lo, hi = _nibbles(ql.reshape(nb, 2, 1, 64))
        low4 = torch.cat([lo, hi], dim=2).reshape(nb, 8, 32)
        shifts = torch.tensor([0, 2, 4, 6], dtype=torch.uint8, device=b.device).view(1, 1, 4, 1)
        high2 = ((qh.reshape(nb, 2, 1, 32) >> shifts) & 3).reshape(nb, 8, 32)
        q = (low4 | (high2 << 4)).reshape(nb, 256)
        return q, scale, -32.0 * scale, 8, 16
    raise ValueError(f"GGUF type {name!r} cannot be kept quantized; supported: {', '.join(_BY_NAME)}")


def gguf_to_packed(data, qtype, scale_dtype: torch.dtype = torch.float32) -> PackedWeight:
    """Raw GGUF blocks of a 2-D weight -> ``PackedWeight`` of ``W [K, N]`` (``y = x @ W``).

    ``data``: uint8 ``[N, row_bytes]`` (``GGUFReader``'s ``tensor.data`` for a quantized type; numpy or torch), the
    ``N`` rows being output features. ``qtype``: ``gguf.GGMLQuantizationType``, its name, or its id. The result is
    on ``data``'s device (CPU for numpy input); scales and offsets in ``scale_dtype``.
    """
    type_id = gguf_type_id(qtype)
    if type_id not in GGUF_PACKED_TYPES:
        raise ValueError(f"GGUF type {qtype!r} cannot be kept quantized; supported: {', '.join(_BY_NAME)}")
    name, block, type_size = GGUF_PACKED_TYPES[type_id]
    if isinstance(data, np.ndarray):       # GGUFReader's arrays are read-only views of the memory-mapped file
        raw = torch.from_numpy(np.array(data, copy=not data.flags.writeable or not data.flags.c_contiguous))
    else:
        raw = data
    if raw.dtype != torch.uint8 or raw.dim() != 2 or raw.shape[1] % type_size:
        raise ValueError(f"{name} data must be uint8 [rows, blocks * {type_size}] bytes, got {tuple(raw.shape)} "
                         f"{raw.dtype}")
    n_rows, row_bytes = raw.shape
    k = row_bytes // type_size * block
    parts = [], [], []
    bits = group = 0
    for start in range(0, n_rows, _ROWS_PER_CHUNK):
        rows = raw[start:start + _ROWS_PER_CHUNK]
        q, scale, offset, bits, group = _decode_blocks(name, rows.reshape(-1, type_size))
        r = rows.shape[0]
        parts[0].append(pack_along_k(q.reshape(r, k).t(), bits))                     # [K // pack, r]
        parts[1].append(scale.reshape(r, k // group).t().to(scale_dtype))
        parts[2].append(offset.reshape(r, k // group).t().to(scale_dtype))
    qweight, scales, offsets = (torch.cat(p, dim=1).contiguous() for p in parts)
    return PackedWeight(qweight=qweight, scales=scales, offsets=offsets, bits=bits, group_size=group)
