"""Programmatic dependent launch (pagedllm.kernels.pdl): a decode-layer chain of our kernels launched early must give
the same bits as with PDL off, eagerly and replayed from a CUDA graph (Hopper GPUs; skipped elsewhere)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

triton = pytest.importorskip("triton")
pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

from pagedllm.kernels import pdl, settings  # noqa: E402
from pagedllm.kernels.triton_gemv import skinny_linear  # noqa: E402
from pagedllm.kernels.triton_ops import rms_norm, silu_and_mul  # noqa: E402


def _hopper() -> bool:
    return torch.cuda.get_device_capability()[0] >= 9


@pytest.fixture
def pdl_switch(monkeypatch):
    def set_pdl(on: bool) -> None:
        monkeypatch.setattr(settings, "current", settings.KernelSettings(pdl=on))   # what --[no-]pdl configures
    yield set_pdl


def _layers(hidden, inter, n_layers, dtype):
    g = torch.Generator(device="cuda").manual_seed(0)
    w = lambda *s: (torch.randn(*s, device="cuda", generator=g) / s[-1] ** 0.5).to(dtype)   # noqa: E731
    return [dict(norm1=1 + 0.1 * w(hidden), qkv=w(hidden + 256, hidden), qkv_b=w(hidden + 256), o=w(hidden, hidden),
                 norm2=1 + 0.1 * w(hidden), gate_up=w(2 * inter, hidden), down=w(hidden, inter))
            for _ in range(n_layers)]


def _chain(x, layers, linear):
    """A decode layer's kernels in order: norm, qkv, o, add+norm, gate_up, silu-mul, down (attention left out)."""
    residual = None
    for L in layers:
        h, residual = rms_norm(x, L["norm1"], 1e-6, residual)
        qkv = linear(h, L["qkv"], L["qkv_b"])
        x = linear(qkv[:, :h.shape[1]].contiguous(), L["o"], None)
        h, residual = rms_norm(x, L["norm2"], 1e-6, residual)
        x = linear(silu_and_mul(linear(h, L["gate_up"], None)), L["down"], None)
    return x + residual


def test_enabled_on_hopper_only(pdl_switch):
    pdl_switch(True)
    assert pdl.pdl_enabled(torch.device("cuda")) == _hopper()
    assert not pdl.pdl_enabled(torch.device("cpu"))
    pdl_switch(False)
    assert not pdl.pdl_enabled(torch.device("cuda"))


@pytest.mark.parametrize("m", [1, 4])
def test_chain_same_bits_with_and_without_pdl(pdl_switch, m):
    dtype = torch.bfloat16
    layers = _layers(1536, 2048, 6, dtype)
    x = torch.randn(m, 1536, device="cuda", dtype=dtype)
    linear = lambda a, w, b: skinny_linear(a, w, b)   # noqa: E731
    pdl_switch(False)
    off = _chain(x, layers, linear)
    pdl_switch(True)
    on = _chain(x, layers, linear)
    torch.testing.assert_close(on, off, rtol=0, atol=0)
    ref = _chain(x.float(), [{k: v.float() for k, v in L.items()} for L in layers], F.linear)
    assert ((on.float() - ref).norm() / ref.norm()).item() < 2e-2

    # Captured with PDL on, replayed on new inputs: the programmatic edges keep every kernel after its producer.
    static_x = x.clone()
    _chain(static_x, layers, linear)        # warm-up (compiles outside capture)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = _chain(static_x, layers, linear)
    for seed in range(3):
        new_x = torch.randn(m, 1536, device="cuda", dtype=dtype, generator=torch.Generator("cuda").manual_seed(seed))
        static_x.copy_(new_x)
        graph.replay()
        pdl_switch(False)
        expect = _chain(new_x, layers, linear)
        pdl_switch(True)
        torch.cuda.synchronize()
        torch.testing.assert_close(static_out, expect, rtol=0, atol=0)
