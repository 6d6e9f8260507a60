"""Fused RMSNorm / SiLU-and-mul Triton ops vs PyTorch references (GPU, or TRITON_INTERPRET=1 on CPU)."""
from __future__ import annotations

import pytest
import torch
from kernel_env import DEVICE, INTERPRET, NEEDS_GPU_OR_INTERPRETER

triton = pytest.importorskip("triton")

pytestmark = NEEDS_GPU_OR_INTERPRETER
# Triton 3.6's interpreter mis-converts to bf16; test fp16 there instead.
DTYPES = [torch.float16, torch.float32] if INTERPRET else [torch.bfloat16, torch.float16, torch.float32]

from pagedllm.kernels import triton_ops  # noqa: E402


def ref_rms_norm(x, weight, eps, residual=None):
    if residual is not None:
        x = (x.float() + residual.float()).to(x.dtype)
    xf = x.float()
    out = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps) * weight.float()
    return out.to(x.dtype), x


def ref_silu_and_mul(x):
    d = x.shape[-1] // 2
    xf = x.float()
    return (torch.nn.functional.silu(xf[..., :d]) * xf[..., d:]).to(x.dtype)


def rel_err(a, b):
    a, b = a.double(), b.double()
    assert torch.isfinite(a).all()
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 576), (37, 896), (5, 3, 4096), (128, 3584), (0, 64)])
@pytest.mark.parametrize("with_residual", [False, True])
def test_rms_norm(dtype, shape, with_residual):
    torch.manual_seed(0)
    x = (torch.randn(shape) * 3).to(dtype).to(DEVICE)
    w = (1 + 0.1 * torch.randn(shape[-1])).to(dtype).to(DEVICE)
    res = torch.randn(shape).to(dtype).to(DEVICE) if with_residual else None
    out, new_res = triton_ops.rms_norm(x, w, 1e-6, res)
    exp_out, exp_res = ref_rms_norm(x, w, 1e-6, res)
    assert out.shape == x.shape and out.dtype == dtype
    assert torch.equal(new_res, exp_res)
    if x.numel():
        assert rel_err(out, exp_out) < (1e-5 if dtype == torch.float32 else 1e-2)


def test_rms_norm_strided_input():
    x = torch.randn(16, 2, 512).to(DEVICE)[:, 0]          # non-contiguous rows
    w = torch.randn(512).to(DEVICE)
    out, _ = triton_ops.rms_norm(x, w, 1e-5)
    assert rel_err(out, ref_rms_norm(x, w, 1e-5)[0]) < 1e-5


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 2 * 4864), (33, 2 * 18944), (2, 3, 2 * 1536), (7, 2 * 100), (0, 8)])
def test_silu_and_mul(dtype, shape):
    torch.manual_seed(1)
    x = (torch.randn(shape) * 2).to(dtype).to(DEVICE)
    out = triton_ops.silu_and_mul(x)
    assert out.shape == (*shape[:-1], shape[-1] // 2) and out.dtype == dtype
    if x.numel():
        assert rel_err(out, ref_silu_and_mul(x)) < (1e-5 if dtype == torch.float32 else 1e-2)
