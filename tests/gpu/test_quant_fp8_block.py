"""Block-scaled FP8 linears (pagedllm/kernels/quant/fp8_block.py) against the torch references on random data (GPU,
or TRITON_INTERPRET=1 on the CPU: see tests/gpu/conftest.py)."""
from __future__ import annotations

import pytest
import torch
from kernel_env import DEVICE, HALF, NEEDS_GPU_OR_INTERPRETER

triton = pytest.importorskip("triton")

HAS_CUDA = torch.cuda.is_available()
pytestmark = NEEDS_GPU_OR_INTERPRETER

from test_quant_fp8_kernels import _assert_fp8_equal  # noqa: E402

from pagedllm.kernels.quant.fp8 import FP8_DTYPE, FP8_MAX, block_dequantize  # noqa: E402
from pagedllm.kernels.quant.fp8_block import (block_fp8_linear, block_fp8_matmul,  # noqa: E402
                                              per_token_group_quant_fp8, per_token_group_quant_fp8_torch)


def _block_quantize(w: torch.Tensor, block: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """``w [N, K]`` -> e4m3 and ``weight_scale_inv [ceil(N / bn), ceil(K / bk)]`` as the checkpoints store them."""
    bn, bk = block
    n, k = w.shape
    padded = torch.nn.functional.pad(w, (0, -k % bk, 0, -n % bn))
    tiles = padded.reshape(padded.shape[0] // bn, bn, padded.shape[1] // bk, bk)
    scale = tiles.abs().amax(dim=(1, 3)).clamp(min=1e-8) / FP8_MAX
    q = (tiles / scale[:, None, :, None]).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE).reshape(padded.shape)[:n, :k]
    return q.contiguous(), scale


@pytest.mark.parametrize("m, k, group", [(1, 128, 128), (7, 320, 128), (33, 96, 32)])
def test_group_quant_matches_the_torch_reference(m, k, group):
    x = (torch.randn(m, k) * torch.linspace(0.01, 30, k)).to(DEVICE, HALF)
    q, s = per_token_group_quant_fp8(x, group)
    q_ref, s_ref = per_token_group_quant_fp8_torch(x, group)
    assert s.shape == (m, -(-k // group))
    torch.testing.assert_close(s, s_ref, rtol=1e-6, atol=0)
    _assert_fp8_equal(q, q_ref)      # bit for bit on the GPU (the interpreter's known fp8 rounding slips aside)


@pytest.mark.parametrize("block", [(128, 128), (64, 32)])
@pytest.mark.parametrize("m, n, k", [(1, 256, 256), (5, 96, 320), (40, 192, 128), (130, 320, 384)])
def test_block_fp8_matmul_equals_the_dequantized_product(block, m, n, k):
    gen = torch.Generator().manual_seed(m + n + k)
    w, w_scale = _block_quantize(torch.randn(n, k, generator=gen) * 0.05, block)
    x = torch.randn(m, k, generator=gen).to(DEVICE, HALF)
    bias = torch.randn(n, generator=gen).to(DEVICE, HALF)
    qx, sx = per_token_group_quant_fp8(x, block[1])
    y = block_fp8_matmul(qx, sx, w.to(DEVICE), w_scale.to(DEVICE), block, bias, HALF)
    x_deq = qx.double() * sx.double().repeat_interleave(block[1], dim=1)[:, :k]
    expected = x_deq @ block_dequantize(w, w_scale, block, torch.float64).to(DEVICE).t() + bias.double()
    err = ((y.double() - expected).norm() / expected.norm()).item()
    assert y.shape == (m, n) and err < 5e-3, err
    # and the layer's entry point: the same numbers from x itself
    y2 = block_fp8_linear(x.reshape(1, m, k), w.to(DEVICE), w_scale.to(DEVICE), block, bias)
    assert y2.shape == (1, m, n) and torch.equal(y2[0], y)
