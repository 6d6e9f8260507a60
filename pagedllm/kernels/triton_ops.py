"""Fused elementwise Triton ops for the model layers: RMSNorm (+ residual add) and SiLU-and-mul.

Both are memory-bound: the fusion saves whole passes over the activations (the eager PyTorch versions launch
4-8 kernels each, reading and writing the tensor every time). Math is fp32; outputs are in the input dtype.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from pagedllm.kernels.pdl import pdl_launch_args, pdl_wait


@triton.jit
def _rms_norm_kernel(X, Res, W, Out, ResOut, stride_x, stride_r, stride_o, stride_ro, eps,
                     N: tl.constexpr, BLOCK: tl.constexpr, HAS_RES: tl.constexpr, PDL: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < N
    w = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)   # a constant: read before waiting
    pdl_wait(PDL)
    x = tl.load(X + row * stride_x + cols, mask=mask, other=0.0)
    if HAS_RES:
        r = tl.load(Res + row * stride_r + cols, mask=mask, other=0.0)
        # Round the sum to the activation dtype before normalising: the residual stream is stored in that dtype
        # (as in the eager model, ``hidden = residual + hidden``), so the norm must see the same values.
        x = (x.to(tl.float32) + r.to(tl.float32)).to(X.dtype.element_ty)
        tl.store(ResOut + row * stride_ro + cols, x, mask=mask)
    xf = x.to(tl.float32)
    rstd = 1.0 / tl.sqrt(tl.sum(xf * xf, 0) / N + eps)
    tl.store(Out + row * stride_o + cols, (xf * rstd * w).to(Out.dtype.element_ty), mask=mask)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float,
             residual: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(rmsnorm(x') * weight, x')`` with ``x' = x + residual`` if a residual is given, else ``x' = x``.

    Shapes ``[..., hidden]``; the returned residual is a new tensor when ``residual`` is given (``x`` itself
    otherwise), so callers write ``hidden, residual = rms_norm(hidden, w, eps, residual)`` at every layer.
    """
    shape = x.shape
    n = shape[-1]
    x2 = x.reshape(-1, n)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    rows = x2.shape[0]
    out = torch.empty((rows, n), dtype=x.dtype, device=x.device)
    if residual is not None:
        r2 = residual.reshape(-1, n)
        if r2.stride(-1) != 1:
            r2 = r2.contiguous()
        res_out = torch.empty_like(out)
    else:
        r2, res_out = x2, out            # unused by the kernel
    if rows > 0:
        block = triton.next_power_of_2(n)
        # ~8 elements (16 bytes of bf16) per thread and load: hidden 4096 -> 16 warps... capped at 16.
        warps = max(1, min(16, block // 256))
        _rms_norm_kernel[(rows,)](x2, r2, weight, out, res_out, x2.stride(0), r2.stride(0), out.stride(0),
                                  res_out.stride(0), eps, N=n, BLOCK=block, HAS_RES=residual is not None,
                                  num_warps=warps, **pdl_launch_args(x.device))
    out = out.view(shape)
    if residual is None:
        return out, x
    return out, res_out.view(shape)


@triton.jit
def _silu_and_mul_kernel(X, Out, stride_x, stride_o, D: tl.constexpr, BLOCK: tl.constexpr, PDL: tl.constexpr):
    pdl_wait(PDL)
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < D
    a = tl.load(X + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
    b = tl.load(X + row * stride_x + D + cols, mask=mask, other=0.0).to(tl.float32)
    y = a / (1.0 + tl.exp(-a)) * b
    tl.store(Out + row * stride_o + cols, y.to(Out.dtype.element_ty), mask=mask)


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """``x`` ``[..., 2d]`` -> ``silu(x[..., :d]) * x[..., d:]`` ``[..., d]`` (the gated MLP activation)."""
    two_d = x.shape[-1]
    d = two_d // 2
    x2 = x.reshape(-1, two_d)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    rows = x2.shape[0]
    out = torch.empty((rows, d), dtype=x.dtype, device=x.device)
    if rows > 0 and d > 0:
        block = min(1024, triton.next_power_of_2(d))
        _silu_and_mul_kernel[(rows, triton.cdiv(d, block))](x2, out, x2.stride(0), out.stride(0), D=d,
                                                             BLOCK=block, num_warps=4,
                                                             **pdl_launch_args(x.device))
    return out.view(*x.shape[:-1], d)
