"""CPU linear layers and the LM head through oneDNN with a prepacked weight (pagedllm.model.layers.linear)."""
import pytest
import torch
import torch.nn.functional as F

from pagedllm.model.layers.embedding import ParallelLMHead, VocabParallelEmbedding
from pagedllm.kernels import settings as kernel_settings
from pagedllm.kernels.cpu_onednn import onednn_enabled
from pagedllm.model.layers.linear import MergedColumnParallelLinear, ReplicatedLinear

pytestmark = pytest.mark.skipif(not onednn_enabled(), reason="no oneDNN in this torch build")


def _layer(dtype=torch.float32, bias=True):
    torch.manual_seed(0)
    layer = ReplicatedLinear(64, 96, bias=bias).to(dtype)
    layer.weight.data.normal_(0, 0.05)
    if bias:
        layer.bias.data.normal_(0, 0.05)
    return layer


def _native_bf16() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
def test_packed_matches_dense_and_releases_the_weight(dtype, tol):
    if dtype == torch.bfloat16 and not _native_bf16():
        pytest.skip("oneDNN packs bf16 weights only on CPUs with native bf16 (AVX512-BF16 / AMX); this one has none")
    layer = _layer(dtype)
    w, b = layer.weight.detach().clone(), layer.bias.detach().clone()
    for shape in [(1, 64), (16, 64), (3, 5, 64)]:
        x = torch.randn(shape).to(dtype)
        with torch.inference_mode():
            out = layer(x)
        torch.testing.assert_close(out.float(), F.linear(x, w, b).float(), atol=tol, rtol=tol)
    assert layer._packed is not None and layer.weight.numel() == 0   # the dense copy is not kept twice
    layer.unpack()
    assert torch.equal(layer.weight, w)                               # and comes back exactly


def test_reload_after_packing_loads_the_new_weight():
    layer = MergedColumnParallelLinear(64, [48, 48])
    layer.weight.data.normal_(0, 0.05)
    x = torch.randn(4, 64)
    with torch.inference_mode():
        layer(x)
    new = torch.randn(48, 64)
    layer.weight.weight_loader(layer.weight, new, 1)       # shard 1 (up_proj) of a packed layer
    assert layer.weight.shape == (96, 64) and torch.equal(layer.weight[48:], new)
    with torch.inference_mode():
        torch.testing.assert_close(layer(x), F.linear(x, layer.weight.detach().clone() if layer._packed is None
                                                     else layer._packed.to_dense()), atol=1e-5, rtol=1e-5)


def test_grad_and_other_dtypes_fall_back_to_dense():
    layer = _layer()
    with torch.inference_mode():
        layer(torch.randn(2, 64))
    x = torch.randn(2, 64, dtype=torch.float64)
    layer.double()                                           # .to(dtype) unpacks, the next forward repacks or not
    assert layer._packed is None and layer.weight.dtype == torch.float64
    torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias))
    layer.float()
    x = torch.randn(2, 64, requires_grad=True)
    layer(x).sum().backward()
    assert x.grad is not None


def test_switch_off(monkeypatch):
    # What --no-cpu-onednn (or PAGEDLLM_CPU_ONEDNN=0) configures in the engine's process (ModelRunner).
    monkeypatch.setattr(kernel_settings, "current", kernel_settings.KernelSettings(cpu_onednn=False))
    layer = _layer()
    x = torch.randn(3, 64)
    with torch.inference_mode():
        out = layer(x)
    assert layer._packed is None and torch.equal(out, F.linear(x, layer.weight, layer.bias))


def test_lm_head_packed_tied_and_repacked_on_new_weight():
    emb = VocabParallelEmbedding(500, 64)
    emb.weight.data.normal_()
    head = ParallelLMHead(500, 64)
    head.tie_weights(emb)
    h = torch.randn(3, 64)
    with torch.inference_mode():
        torch.testing.assert_close(head.compute_logits(h), h @ emb.weight.T, atol=1e-4, rtol=1e-5)
    assert emb.weight.numel() == 500 * 64                      # the embedding keeps its weight
    emb.weight.data = torch.randn(500, 64)                     # replaced: the packed copy must follow
    head.tie_weights(emb)
    with torch.inference_mode():
        torch.testing.assert_close(head.compute_logits(h), h @ emb.weight.T, atol=1e-4, rtol=1e-5)
