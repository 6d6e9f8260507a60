"""The fused MoE kernels (``pagedllm.kernels.triton_moe``) against the eager expert loop of model/layers/moe.py.

Runs on a CUDA GPU, or under ``TRITON_INTERPRET=1`` on CPU tensors (see tests/gpu/conftest.py).
"""
from __future__ import annotations

import pytest
import torch
from kernel_env import DEVICE, HALF, INTERPRET, NEEDS_GPU_OR_INTERPRETER

triton = pytest.importorskip("triton")
pytestmark = NEEDS_GPU_OR_INTERPRETER

from pagedllm.kernels.triton_moe import align_to_experts, fused_moe  # noqa: E402
from pagedllm.model.layers.moe import MoEExperts  # noqa: E402


def _routing(tokens, num_experts, top_k, gen, skew=False):
    logits = torch.randn(tokens, num_experts, generator=gen)
    if skew:      # most tokens to a few experts: long runs, many idle experts
        logits[:, :3] += 4.0
    weights, ids = torch.topk(torch.softmax(logits, -1), top_k, dim=-1)
    return ids.to(DEVICE), (weights / weights.sum(-1, keepdim=True)).to(DEVICE)


def _eager(x, w13, w2, ids, weights):
    experts = MoEExperts(w13.shape[0], x.shape[1], w2.shape[2])
    experts.w13.data, experts.w2.data = w13, w2
    return experts.expert_loop(x, ids, weights)


@pytest.mark.parametrize("tokens, num_experts, top_k, block_m", [(1, 8, 2, 16), (5, 4, 4, 16), (37, 16, 2, 32),
                                                                  (200, 60, 4, 64), (3, 128, 8, 16)])
def test_align_groups_every_slot_once_under_its_expert(tokens, num_experts, top_k, block_m):
    gen = torch.Generator().manual_seed(tokens)
    ids, _ = _routing(tokens, num_experts, top_k, gen)
    sorted_slots, block_experts = align_to_experts(ids, num_experts, block_m)
    slots = tokens * top_k
    assert sorted_slots.numel() == block_experts.numel() * block_m
    assert sorted_slots.numel() >= slots + num_experts * (block_m - 1)     # room for every expert's padding
    real = sorted_slots[sorted_slots < slots].long().cpu()
    assert sorted(real.tolist()) == list(range(slots))                    # each slot exactly once
    flat = ids.reshape(-1).cpu()
    block_of = block_experts.long().cpu().repeat_interleave(block_m)
    pos = (sorted_slots < slots).cpu()
    assert torch.equal(block_of[pos], flat[real])                          # each slot in a block of its expert
    used = block_experts[block_experts >= 0].cpu()
    assert torch.all(used[1:] > used[:-1])                                  # one run per expert, ascending
    assert block_experts.cpu()[len(used):].eq(-1).all()                     # the tail is idle


@pytest.mark.parametrize("dtype", [torch.float32, HALF])
@pytest.mark.parametrize("tokens, num_experts, top_k, hidden, inter, skew", [
    (1, 8, 2, 64, 96, False),        # decode: one token, odd intermediate (tile tails)
    (7, 16, 4, 80, 48, False),       # hidden not a multiple of the tiles
    (300, 8, 2, 64, 64, True),       # prefill: long runs on a few experts (the 64-row tile)
    (40, 4, 2, 48, 32, False),       # ~20 rows an expert (the 32-row tile)
])
def test_fused_moe_equals_the_eager_expert_loop(dtype, tokens, num_experts, top_k, hidden, inter, skew):
    gen = torch.Generator().manual_seed(tokens * 31 + hidden)
    x = torch.randn(tokens, hidden, generator=gen).to(DEVICE, dtype)
    w13 = (torch.randn(num_experts, 2 * inter, hidden, generator=gen) / hidden ** 0.5).to(DEVICE, dtype)
    w2 = (torch.randn(num_experts, hidden, inter, generator=gen) / inter ** 0.5).to(DEVICE, dtype)
    ids, weights = _routing(tokens, num_experts, top_k, gen, skew)
    weights = weights.to(dtype)
    out = fused_moe(x, w13, w2, ids, weights)
    assert out.shape == x.shape and out.dtype == dtype
    expected = _eager(x.double(), w13.double(), w2.double(), ids, weights.double())
    err = ((out.double() - expected).norm() / expected.norm()).item()
    assert err < (1e-5 if dtype == torch.float32 else 1.5e-2), err


@pytest.mark.parametrize("group", [(1, 0), (16, 32)], ids=["per_row", "block_16x32"])
@pytest.mark.parametrize("tokens", [1, 45])
def test_fp8_experts_equal_the_loop_over_their_dequantized_weights(group, tokens):
    """e4m3 experts with per-row or block scales, scaled up in the kernels: the eager loop over the dequantized
    weights (fp16 activations under the interpreter, bf16 on the GPU)."""
    from pagedllm.kernels.quant.fp8 import FP8_DTYPE, FP8_MAX, block_dequantize
    num_experts, top_k, hidden, inter = 8, 2, 64, 96
    gen = torch.Generator().manual_seed(tokens)

    def quantize(w):                   # [E, N, K] -> fp8, scales [E, N / gn, K / gk] (gk = 0: [E, N, 1])
        gn, gk = group
        e, n, k = w.shape
        tiles = w.reshape(e, n // gn, gn, k // (gk or k), gk or k)
        scale = tiles.abs().amax(dim=(2, 4)) / FP8_MAX
        q = (tiles / scale[:, :, None, :, None]).to(FP8_DTYPE).reshape(w.shape)
        return q, scale

    def dequantize(q, scale):
        gn, gk = group
        if gk:
            return torch.stack([block_dequantize(q[e], scale[e], group, torch.float64) for e in range(len(q))])
        return q.double() * scale.double()

    w13, s13 = quantize(torch.randn(num_experts, 2 * inter, hidden, generator=gen))
    w2, s2 = quantize(torch.randn(num_experts, hidden, inter, generator=gen))
    x = (torch.randn(tokens, hidden, generator=gen) / hidden ** 0.5).to(DEVICE, HALF)
    ids, weights = _routing(tokens, num_experts, top_k, gen)
    out = fused_moe(x, w13.to(DEVICE), w2.to(DEVICE), ids, weights.to(HALF), w13_scale=s13.to(DEVICE),
                    w2_scale=s2.to(DEVICE), scale_group=group)
    expected = _eager(x.double(), dequantize(w13, s13).to(DEVICE), dequantize(w2, s2).to(DEVICE), ids,
                      weights.double())
    err = ((out.double() - expected).norm() / expected.norm()).item()
    assert err < 1.5e-2, err


@pytest.mark.skipif(not INTERPRET, reason="the GPU engine test covers this on a GPU (tests/gpu/test_engine_gpu.py)")
@pytest.mark.parametrize("quantization", [None, "fp8", "gptq", "gptq_desc_act", "bitsandbytes"])
def test_the_engine_through_the_fused_kernels_equals_the_loop(tmp_path, monkeypatch, quantization):
    """The whole layer path on the CPU under the interpreter (fp32): MoEExperts hands the kernels its weights (and an
    FP8 method's scales and group; GPTQ experts stacked from their converted layers, with act order their rows'
    permutations too; bitsandbytes experts stacked, then dequantized by every forward) and the engine's tokens and
    log-probabilities equal those of HF's loop."""
    import sys
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1] / "models"))
    from test_moe import _int_formats, _rewrite, _run, _save

    from pagedllm.model.layers.moe import MoEExperts
    from pagedllm.model.quantization.int_weight import PackedIntLinearMethod
    path = _save(tmp_path / "m", wide=True, moe_intermediate_size=64)      # bitsandbytes: rows of a block at least
    kw = {"quantization": quantization}
    if quantization in ("gptq", "gptq_desc_act"):
        from safetensors.torch import load_file
        config, quant, _ = _int_formats()._gptq_checkpoint(load_file(next((tmp_path / "m").glob("*.safetensors"))),
                                                           4, 32, sym=False, desc_act=quantization != "gptq")
        path, kw = _rewrite(path, tmp_path / "q", quant, config), {}
    _, ref_tokens, ref_logprobs = _run(path, **kw)
    monkeypatch.setattr(MoEExperts, "forward", MoEExperts.fused)       # the GPU path, on CPU tensors
    convert = PackedIntLinearMethod.process_weights_after_loading

    def experts_canonical(method, layer):     # the experts' layers keep the canonical form and get stacked
        if ".experts." in layer.prefix:
            method.cpu_form = lambda w: False
        convert(method, layer)
    monkeypatch.setattr(PackedIntLinearMethod, "process_weights_after_loading", experts_canonical)
    if quantization == "bitsandbytes":
        from pagedllm.model.quantization.bitsandbytes import BitsAndBytesMoEMethod
        monkeypatch.setattr(BitsAndBytesMoEMethod, "process_weights_after_loading", BitsAndBytesMoEMethod.stack)
    _, tokens, logprobs = _run(path, **kw)
    assert tokens == ref_tokens
    torch.testing.assert_close(torch.tensor(logprobs), torch.tensor(ref_logprobs), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("bits, group, desc_act", [(4, 32, False), (8, 32, False), (4, 0, False), (4, 32, True)],
                         ids=["int4_g32", "int8_g32", "int4_per_channel", "int4_g32_desc_act"])
@pytest.mark.parametrize("tokens", [1, 45])
def test_packed_int_experts_equal_the_loop_over_their_dequantized_weights(bits, group, desc_act, tokens):
    """AWQ / GPTQ experts in the canonical packed form (int32 words along K, a scale and offset per group of K, or
    per column: ``group`` 0): the eager loop over the dequantized weights (kernels/quant/packed.py defines them).
    ``desc_act`` (GPTQ act order): each expert's rows sorted by group, read through its own permutation of the
    activations' columns."""
    from pagedllm.kernels.quant.packed import PackedWeight, dequantize, pack_along_k
    num_experts, top_k, hidden, inter = 8, 2, 96, 64
    gen = torch.Generator().manual_seed(tokens + bits)

    def stack(k, n):        # every expert's [K, N] weight packed; and dequantized as the loop reads it ([N, K])
        g = group or k
        words, scales, offsets, dense, perms = [], [], [], [], []
        for _ in range(num_experts):
            q = torch.randint(0, 2 ** bits, (k, n), generator=gen)
            s = torch.rand(k // g, n, generator=gen) * 0.02 + 0.005
            o = -s * (2 ** (bits - 1)) + torch.randn(k // g, n, generator=gen) * 0.01
            w = PackedWeight(pack_along_k(q, bits), s.to(HALF), o.to(HALF), bits, g)
            words.append(w.qweight), scales.append(w.scales), offsets.append(w.offsets)
            d = dequantize(w, torch.float64).t()          # [N, K]: column k multiplies x[:, perm[k]]
            perm = torch.randperm(k, generator=gen) if desc_act else torch.arange(k)
            dense.append(torch.empty_like(d).index_copy_(1, perm, d))     # back in the activations' order
            perms.append(perm.to(torch.int32))
        return [torch.stack(t).to(DEVICE) for t in (words, scales, offsets, dense, perms)]

    q13, s13, o13, d13, p13 = stack(hidden, 2 * inter)
    q2, s2, o2, d2, p2 = stack(inter, hidden)
    perms = dict(w13_perm=p13, w2_perm=p2) if desc_act else {}
    x = (torch.randn(tokens, hidden, generator=gen) / hidden ** 0.5).to(DEVICE, HALF)
    ids, weights = _routing(tokens, num_experts, top_k, gen)
    out = fused_moe(x, q13, q2, ids, weights.to(HALF), w13_scale=s13, w2_scale=s2, w13_offset=o13, w2_offset=o2,
                    bits=bits, scale_group=(1, group), **perms)
    expected = _eager(x.double(), d13, d2, ids, weights.double())
    err = ((out.double() - expected).norm() / expected.norm()).item()
    assert err < 1.5e-2, err


@pytest.mark.parametrize("dtype", [torch.float32, HALF])
@pytest.mark.parametrize("tokens, num_experts, top_k, hidden, inter", [(1, 8, 2, 64, 96), (45, 4, 2, 80, 48)])
def test_gpt_oss_experts_equal_their_loop(dtype, tokens, num_experts, top_k, hidden, inter):
    """gpt-oss's experts through the fused kernels (biases on both products, the clamped SwiGLU) equal the eager
    loop of model/models/gpt_oss.py (HF's math); the limit is small enough that gate and up cross it both ways."""
    from pagedllm.model.models.gpt_oss import GptOssExperts
    gen = torch.Generator().manual_seed(tokens + 3)
    x = torch.randn(tokens, hidden, generator=gen).to(DEVICE, dtype)
    experts = GptOssExperts(num_experts, hidden, inter, alpha=1.702, limit=0.7).to(DEVICE)
    with torch.no_grad():
        experts.w13.copy_(torch.randn(num_experts, 2 * inter, hidden, generator=gen) / hidden ** 0.5)
        experts.w2.copy_(torch.randn(num_experts, hidden, inter, generator=gen) / inter ** 0.5)
        experts.b13.copy_(torch.randn(num_experts, 2 * inter, generator=gen) * 0.5)
        experts.b2.copy_(torch.randn(num_experts, hidden, generator=gen) * 0.5)
    ids, weights = _routing(tokens, num_experts, top_k, gen)
    expected = experts.double().expert_loop(x.double(), ids, weights.double())
    experts.to(dtype)
    out = experts.fused(x, ids, weights.to(dtype))
    assert out.dtype == dtype
    unclamped = GptOssExperts(num_experts, hidden, inter, alpha=1.702, limit=100.0).to(DEVICE).double()
    unclamped.load_state_dict(experts.double().state_dict())
    assert ((unclamped.expert_loop(x.double(), ids, weights.double()) - expected).norm() / expected.norm()) > 0.05
    err = ((out.double() - expected).norm() / expected.norm()).item()
    assert err < (1e-5 if dtype == torch.float32 else 1.5e-2), err


@pytest.mark.skipif(not INTERPRET, reason="tests/gpu/test_gpt_oss_gpu.py covers this on a GPU")
def test_gpt_oss_engine_through_the_fused_kernels_equals_hf(tmp_path, monkeypatch):
    """gpt-oss's whole MoE path through the fused kernels on the CPU under the interpreter (fp32; the attention is
    the torch backend's): HF transformers fp32's greedy tokens, plain and with chunked prefill."""
    import sys
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[2]))
    from tests.models.test_gpt_oss import GptOssTiny
    from tests.models.test_models_vs_hf import _assert_matches_hf, _generate, _prompts

    from pagedllm.model.models.gpt_oss import GptOssExperts
    tiny = GptOssTiny(str(tmp_path))
    monkeypatch.setattr(GptOssExperts, "forward", GptOssExperts.fused)       # the GPU path, on CPU tensors
    prompts = _prompts((3, 17, 40))
    _assert_matches_hf(tiny, prompts, _generate(tiny.llm(), prompts))
    _assert_matches_hf(tiny, prompts, _generate(tiny.llm(max_num_batched_tokens=16), prompts))
