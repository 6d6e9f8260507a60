"""FP8 (float8_e4m3fn) W8A8 matmul pieces: weight quantization, dynamic per-token activation quantization, the
``torch._scaled_mm`` GEMM (decode batches read the fp8 weight through the skinny GEMM, kernels/triton_gemv.py).

Convention (vLLM's): a scale multiplies, ``x ~= q.float() * scale``, and a dynamic scale is ``amax / 448`` (448 is
e4m3's largest finite value), so the largest element maps to +-448. Computed as ``amax * (1/448)`` in fp32 (what
torch's CUDA division by a Python scalar does), and ``x / scale`` as an IEEE division, so the Triton kernel and these
references agree bit for bit.

The torch functions here are the references; the Triton kernels (imported only where Triton is) are checked
against them in tests/gpu/test_quant_fp8_kernels.py.
"""
from __future__ import annotations

import torch

FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = 448.0
# A floor on dynamic activation scales so an all-zero row gives finite values (vLLM: 1 / (448 * 512)).
MIN_SCALE = 1.0 / (FP8_MAX * 512.0)


def quantize_to_fp8(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``x / scale`` saturated to e4m3's range, as float8_e4m3fn (``scale`` broadcasts against ``x``)."""
    return (x.float() / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)


def per_tensor_quantize(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One scale for the whole tensor (``amax / 448``): the fp8 tensor and its fp32 scalar scale."""
    scale = (w.abs().max().float() * (1.0 / FP8_MAX)).clamp(min=MIN_SCALE)
    return quantize_to_fp8(w, scale), scale


def per_channel_quantize(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One scale per output row of ``w [N, K]``: the fp8 tensor and fp32 scales ``[N, 1]``."""
    scale = (w.abs().amax(dim=1, keepdim=True).float() * (1.0 / FP8_MAX)).clamp(min=MIN_SCALE)
    return quantize_to_fp8(w, scale), scale


def per_token_quant_fp8_torch(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Dynamic per-token (per-row) quantization of ``x [M, K]``: fp8 ``[M, K]`` and fp32 scales ``[M, 1]``."""
    return per_channel_quantize(x)


def block_dequantize(weight: torch.Tensor, scale_inv: torch.Tensor, block: tuple[int, int],
                     dtype: torch.dtype) -> torch.Tensor:
    """A block-scaled fp8 weight ``[N, K]`` (DeepSeek / Qwen3-FP8 ``weight_scale_inv [ceil(N/bn), ceil(K/bk)]``,
    one scale per ``bn x bk`` tile, multiplied) back to ``dtype``."""
    bn, bk = block
    n, k = weight.shape
    expanded = scale_inv.float().repeat_interleave(bn, dim=0)[:n].repeat_interleave(bk, dim=1)[:, :k]
    return (weight.float() * expanded).to(dtype)


def fp8_dequantize(weight: torch.Tensor, scale: torch.Tensor, block: tuple[int, int] | None,
                   dtype: torch.dtype) -> torch.Tensor:
    """An e4m3 ``weight [N, K]`` times its fp32 ``scale`` in ``dtype``: one scale per ``block`` tile, or (``block``
    None) a scale that broadcasts against the weight (one value, or ``[N, 1]``: one per row)."""
    if block is not None:
        return block_dequantize(weight, scale, block, dtype)
    return (weight.float() * scale).to(dtype)


def scaled_mm_supported(n: int, k: int) -> bool:
    """``torch._scaled_mm`` needs both matrix dims of the weight to be multiples of 16 (cuBLASLt FP8)."""
    return n % 16 == 0 and k % 16 == 0


def fp8_scaled_mm(qx: torch.Tensor, x_scale: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor,
                  bias: torch.Tensor | None, out_dtype: torch.dtype) -> torch.Tensor:
    """``(qx * x_scale) @ (weight * weight_scale)^T (+ bias)`` on FP8 tensor cores.

    ``qx [M, K]`` fp8 row-major, ``x_scale [M, 1]`` fp32; ``weight [N, K]`` fp8 row-major (its transpose is the
    column-major operand ``_scaled_mm`` wants, no copy), ``weight_scale`` fp32 scalar or ``[N]``/``[N, 1]``.
    Row-wise scaling (``[M, 1]`` x ``[1, N]``, sm_89+) needs a bf16 output: fp16 / fp32 callers get a cast.
    """
    m, n = qx.shape[0], weight.shape[0]
    scale_b = weight_scale.float().reshape(-1)
    scale_b = (scale_b.expand(n) if scale_b.numel() == 1 else scale_b).reshape(1, n).contiguous()
    scale_a = x_scale.float().reshape(m, 1).contiguous()
    y = torch._scaled_mm(qx, weight.t(), scale_a=scale_a, scale_b=scale_b, out_dtype=torch.bfloat16)
    if bias is not None:
        y = y + bias.to(y.dtype)
    return y if out_dtype == torch.bfloat16 else y.to(out_dtype)


def fp8_linear_reference(x: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor,
                         bias: torch.Tensor | None, quantize_input: bool = True) -> torch.Tensor:
    """What the GPU path computes, in fp32: per-token quantize-dequantize of ``x`` (when ``quantize_input``), times
    the dequantized weight."""
    xf = x.float()
    if quantize_input:
        qx, sx = per_token_quant_fp8_torch(xf)
        xf = qx.float() * sx
    w = weight.float() * weight_scale.float().reshape(-1, 1) if weight_scale.numel() > 1 \
        else weight.float() * weight_scale.float()
    y = xf @ w.t()
    if bias is not None:
        y = y + bias.float()
    return y


try:  # Triton kernels: on the GPU machine (and the CPU interpreter, for tests)
    import triton
    import triton.language as tl
except ImportError:  # CPU installs without Triton: the torch references above are all they use
    triton = None

if triton is not None:
    # K (the row length) is a compile-time constant in both kernels: a model has two or three distinct K, and the
    # loop bounds and masks fold. (It also keeps the loops runnable in Triton 3.6's interpreter, which cannot use a
    # run-time scalar as a range bound with numpy >= 2.)
    @triton.jit
    def _per_token_quant_kernel(X, Q, S, stride_x, stride_q, min_scale, K: tl.constexpr,
                                FP8_MAXV: tl.constexpr, BLOCK_K: tl.constexpr, ONE_TILE: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        offs = tl.arange(0, BLOCK_K)
        x_row = X + row * stride_x
        q_row = Q + row * stride_q
        if ONE_TILE:
            # The whole row in registers: x is read once.
            mask = offs < K
            x = tl.load(x_row + offs, mask=mask, other=0.0).to(tl.float32)
            # div_rn: IEEE division, as torch's tensor division; Triton's `/` on fp32 is the approximate div.full
            # (2 ulp), which moved ~0.1% of fp16 inputs one fp8 step off torch's rounding on the H200.
            scale = tl.maximum(tl.max(tl.abs(x), axis=0) * (1.0 / FP8_MAXV), min_scale)
            q = tl.clamp(tl.math.div_rn(x, scale), -FP8_MAXV, FP8_MAXV)
            tl.store(q_row + offs, q.to(Q.dtype.element_ty, fp_downcast_rounding="rtne"), mask=mask)
        else:
            # Long rows: amax pass, then quantize pass (the second read hits L2).
            amax = tl.zeros((BLOCK_K,), dtype=tl.float32)
            for k0 in range(0, K, BLOCK_K):
                mask = k0 + offs < K
                x = tl.load(x_row + k0 + offs, mask=mask, other=0.0).to(tl.float32)
                amax = tl.maximum(amax, tl.abs(x))
            scale = tl.maximum(tl.max(amax, axis=0) * (1.0 / FP8_MAXV), min_scale)
            for k0 in range(0, K, BLOCK_K):
                mask = k0 + offs < K
                x = tl.load(x_row + k0 + offs, mask=mask, other=0.0).to(tl.float32)
                q = tl.clamp(tl.math.div_rn(x, scale), -FP8_MAXV, FP8_MAXV)
                tl.store(q_row + k0 + offs, q.to(Q.dtype.element_ty, fp_downcast_rounding="rtne"), mask=mask)
        tl.store(S + row, scale)


# Rows up to this many elements are quantized from registers in one read (fp32: 32 KiB per program).
_ONE_TILE_MAX_K = 8192


def per_token_quant_fp8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Dynamic per-token quantization of a contiguous ``x [M, K]`` by the Triton kernel (one program per row):
    fp8 ``[M, K]`` and fp32 scales ``[M, 1]``."""
    m, k = x.shape
    q = torch.empty((m, k), dtype=FP8_DTYPE, device=x.device)
    s = torch.empty((m, 1), dtype=torch.float32, device=x.device)
    if m == 0:
        return q, s
    one_tile = k <= _ONE_TILE_MAX_K
    block_k = triton.next_power_of_2(k) if one_tile else 2048
    num_warps = 4 if block_k <= 1024 else 8 if block_k <= 4096 else 16
    _per_token_quant_kernel[(m,)](x, q, s, x.stride(0), q.stride(0), MIN_SCALE, K=k,
                                  FP8_MAXV=FP8_MAX, BLOCK_K=block_k, ONE_TILE=one_tile, num_warps=num_warps)
    return q, s
