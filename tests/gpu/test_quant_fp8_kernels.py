"""FP8 kernels (pagedllm/kernels/quant/fp8.py): the Triton per-token quantization, the skinny GEMM over fp8 weights, and the
``torch._scaled_mm`` path, against the torch references on random data (GPU, or TRITON_INTERPRET=1 on the CPU)."""
from __future__ import annotations

import pytest
import torch
from kernel_env import DEVICE, INTERPRET, NEEDS_GPU_OR_INTERPRETER

triton = pytest.importorskip("triton")

HAS_CUDA = torch.cuda.is_available()
pytestmark = NEEDS_GPU_OR_INTERPRETER
# Triton 3.6's interpreter mis-converts to bf16; fp16 there.
DTYPES = [torch.float16] if INTERPRET else [torch.bfloat16, torch.float16]
FP8_GPU = HAS_CUDA and torch.cuda.get_device_capability() >= (8, 9)

from pagedllm.kernels.quant.fp8 import (FP8_DTYPE, fp8_linear_reference, fp8_scaled_mm,  # noqa: E402
                                        per_channel_quantize, per_tensor_quantize, per_token_quant_fp8,
                                        per_token_quant_fp8_torch)

QUANT_SHAPES = [(1, 64), (3, 100), (17, 3584), (5, 9000)] if INTERPRET else \
    [(1, 64), (1, 3584), (4, 18944), (37, 4097), (256, 3584), (4096, 4096), (1000, 1001)]


def _assert_fp8_equal(q: torch.Tensor, ref: torch.Tensor) -> None:
    q, ref = q.cpu(), ref.cpu()
    diff = q.view(torch.uint8) != ref.view(torch.uint8)
    if INTERPRET and diff.any():
        # Triton 3.6's interpreter rounds to fp8 half-up (not to even: ties go one step off) and without carrying
        # into the exponent (a value that rounds up to the next power of two comes out as half of it: 124.3 -> 64,
        # not 128). Only those may differ there.
        got, want = q.float()[diff], ref.float()[diff]
        one_step = (got - want).abs() <= (2.0 ** (want.abs().log2().floor() - 3)).clamp(min=2.0 ** -9)  # subnormals: 2^-9
        no_carry = (got * 2 == want) & (want.abs().log2() == want.abs().log2().round())
        assert (one_step | no_carry).all()
        assert diff.float().mean() < 0.05
        return
    assert not diff.any(), f"{int(diff.sum())} of {diff.numel()} fp8 values differ"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m,k", QUANT_SHAPES)
def test_per_token_quant_matches_torch(m, k, dtype):
    torch.manual_seed(m * 7 + k)
    x = (torch.randn(m, k) * torch.logspace(-2, 2, m)[:, None]).to(dtype).to(DEVICE)
    x[0, : min(k, 3)] = 0.0
    if m > 2:
        x[2] = 0.0        # an all-zero row: the scale floor keeps it finite
    q, s = per_token_quant_fp8(x)
    q_ref, s_ref = per_token_quant_fp8_torch(x)
    assert q.dtype == FP8_DTYPE and s.shape == (m, 1) and s.dtype == torch.float32
    torch.testing.assert_close(s, s_ref, rtol=0, atol=0)
    _assert_fp8_equal(q, q_ref)


GEMV_SHAPES = [(37, 50), (64, 256), (129, 1000)] if INTERPRET else \
    [(4608, 3584), (3584, 3584), (37888, 3584), (3584, 18944), (129, 1000), (4099, 3001)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("n,k", GEMV_SHAPES)
@pytest.mark.parametrize("m", [1, 2, 4, 16])
def test_fp8_skinny_gemm_matches_the_weight_only_reference(m, n, k, per_channel, dtype):
    from pagedllm.kernels.triton_gemv import skinny_linear
    torch.manual_seed(n + k + m)
    w = torch.randn(n, k)
    wq, ws = per_channel_quantize(w) if per_channel else per_tensor_quantize(w)
    x = torch.randn(m, k).to(dtype)
    bias = torch.randn(n).to(dtype)
    y = skinny_linear(x.to(DEVICE), wq.to(DEVICE), bias.to(DEVICE), weight_scale=ws.float().reshape(-1).to(DEVICE))
    ref = fp8_linear_reference(x, wq, ws, bias, quantize_input=False)
    assert y.dtype == dtype and y.shape == (m, n)
    rel = ((y.float().cpu() - ref).norm() / ref.norm()).item()
    assert rel < 2e-3, rel


@pytest.mark.skipif(not FP8_GPU, reason="torch._scaled_mm row-wise needs an sm_89+ GPU")
@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("m", [1, 3, 16, 257, 4096])
@pytest.mark.parametrize("n,k", [(4608, 3584), (3584, 18944), (1024, 4096), (4112, 1008)])
def test_scaled_mm_path_matches_the_w8a8_reference(m, n, k, per_channel):
    torch.manual_seed(m + n)
    x = torch.randn(m, k, device=DEVICE, dtype=torch.bfloat16)
    w = torch.randn(n, k, device=DEVICE)
    wq, ws = per_channel_quantize(w) if per_channel else per_tensor_quantize(w)
    bias = torch.randn(n, device=DEVICE, dtype=torch.bfloat16)
    qx, sx = per_token_quant_fp8(x)
    y = fp8_scaled_mm(qx, sx, wq, ws, bias, torch.bfloat16)
    ref = fp8_linear_reference(x, wq, ws, bias)
    assert y.dtype == torch.bfloat16
    assert ((y.float() - ref).norm() / ref.norm()).item() < 1e-2


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("n,k", GEMV_SHAPES)
@pytest.mark.parametrize("m", [1, 2, 5, 16, 17, 33, 64, 65, 128])
def test_w8a8_skinny_gemm_matches_the_w8a8_reference(m, n, k, per_channel, dtype):
    """fp8 x (per-token scales) times fp8 W on the skinny GEMM's tensor-core path: what the FP8 linear method runs
    for 2..64 rows, and up to 128 on the shapes where that measured faster (None elsewhere: _scaled_mm's rows)."""
    from pagedllm.kernels.triton_gemv import skinny_linear, w8a8_preferred
    torch.manual_seed(n + k + m + 1)
    w = torch.randn(n, k)
    wq, ws = per_channel_quantize(w) if per_channel else per_tensor_quantize(w)
    x = (torch.randn(m, k) * torch.logspace(-1, 1, m)[:, None]).to(dtype)
    bias = torch.randn(n).to(dtype)
    qx, sx = per_token_quant_fp8(x.to(DEVICE))
    y = skinny_linear(qx, wq.to(DEVICE), bias.to(DEVICE), weight_scale=ws.float().reshape(-1).to(DEVICE),
                      x_scale=sx.reshape(-1), out_dtype=dtype)
    if m > 64 and (n, k) not in [(4608, 3584), (3584, 3584), (3584, 18944)]:
        assert y is None and not w8a8_preferred(m, n, k)
        return
    ref = fp8_linear_reference(x, wq, ws, bias)
    assert y.dtype == dtype and y.shape == (m, n)
    rel = ((y.float().cpu() - ref).norm() / ref.norm()).item()
    assert rel < 2e-3, rel


def test_w8a8_table_configs_run():
    """Every W8A8 config in the measured table compiles and is right on its own shape at its bucket's largest M."""
    from pagedllm.kernels import triton_gemv
    for (n, k), per_m in triton_gemv._W8A8_TABLE.items():
        if INTERPRET and n * k > 4_000_000:
            continue
        wq, ws = per_channel_quantize(torch.randn(n, k, device=DEVICE))
        for bucket, cfg in per_m.items():
            x = torch.randn(bucket, k, device=DEVICE, dtype=DTYPES[0])
            qx, sx = per_token_quant_fp8(x)
            y = triton_gemv.skinny_linear_with_config(qx, wq, None, cfg, weight_scale=ws.reshape(-1),
                                                      x_scale=sx.reshape(-1), out_dtype=x.dtype)
            ref = fp8_linear_reference(x, wq, ws, None)
            assert ((y.float() - ref).norm() / ref.norm()).item() < 2e-3, (n, k, bucket, cfg)


def test_w8a8_declines():
    from pagedllm.kernels.triton_gemv import skinny_linear
    wq, ws = per_channel_quantize(torch.randn(32, 64, device=DEVICE))
    qx, sx = per_token_quant_fp8(torch.randn(65, 64, device=DEVICE, dtype=DTYPES[0]))
    ws = ws.reshape(-1)
    assert skinny_linear(qx, wq, weight_scale=ws, x_scale=sx.reshape(-1), out_dtype=DTYPES[0]) is None   # > 64 rows
    assert skinny_linear(qx[:4], wq, weight_scale=ws, x_scale=sx[:4].reshape(-1), out_dtype=torch.float32) is None
    assert skinny_linear(qx[:4], wq, weight_scale=ws, x_scale=sx[:3].reshape(-1), out_dtype=DTYPES[0]) is None
    assert skinny_linear(qx[:4], wq, x_scale=sx[:4].reshape(-1), out_dtype=DTYPES[0]) is None   # W not scaled fp8


@pytest.mark.skipif(not FP8_GPU, reason="the FP8 linear method's CUDA path needs an sm_89+ GPU")
@pytest.mark.parametrize("m", [1, 4, 5, 64, 65, 300])
def test_fp8_linear_method_on_cuda_matches_its_dequantized_weight(m, monkeypatch):
    """Batch-1 rows go weight-only through the skinny GEMM; larger M through per-token quantized activations (W8A8)
    and the skinny GEMM's fp8 dots up to 64 rows (this untabled shape), torch._scaled_mm above: each against the
    reference of what it computes, with the activation rounding where it applies (W8A8 against the weight-only
    reference is ~2.6% off on random data: the rounding of x itself)."""
    from pagedllm.kernels import triton_gemv
    from pagedllm.model.layers.linear import QKVParallelLinear
    from pagedllm.model.quantization.fp8 import GEMV_MAX_M, Fp8Config
    torch.manual_seed(m)
    with torch.device(DEVICE):
        layer = QKVParallelLinear(1024, 128, 8, 2, bias=True)
    method = Fp8Config.online().get_linear_method(layer, "model.layers.0.self_attn.qkv_proj")
    with torch.device(DEVICE):
        method.create_weights(layer, 1024, [1024, 256, 256], torch.bfloat16)
    layer.weight.weight_loader(layer.weight, torch.randn(1536, 1024, device=DEVICE, dtype=torch.bfloat16))
    layer.bias.data.copy_(torch.randn(1536, device=DEVICE))
    method.process_weights_after_loading(layer)
    assert layer.weight.dtype == FP8_DTYPE
    x = torch.randn(m, 1024, device=DEVICE, dtype=torch.bfloat16)
    calls = []
    real = triton_gemv.skinny_linear
    monkeypatch.setattr(triton_gemv, "skinny_linear", lambda *a, **kw: calls.append(a[0].dtype) or real(*a, **kw))
    y = method.apply(layer, x, layer.bias.to(torch.bfloat16))
    ref = fp8_linear_reference(x, layer.weight, layer.weight_scale, layer.bias, quantize_input=m > GEMV_MAX_M)
    assert ((y.float() - ref).norm() / ref.norm()).item() < 1e-2
    # skinny_linear is asked up to 128 rows (for this shape it declines above 64: _scaled_mm), not above
    assert calls == ([torch.bfloat16] if m == 1 else [FP8_DTYPE] if m <= 128 else [])
