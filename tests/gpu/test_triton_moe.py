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


@pytest.mark.skipif(not INTERPRET, reason="tests/gpu/test_gpt_oss_gpu.py covers this on a GPU")
def test_gpt_oss_mxfp4_experts_kept_equal_hf(tmp_path, monkeypatch, caplog):
    """An MXFP4 checkpoint whose experts stay MXFP4 (what CUDA does; here on CPU tensors under the interpreter,
    fp32) through the fused kernels: HF fp32's greedy tokens from the dense checkpoint of the same values, i.e. the
    dequantized-at-load run's; the start-up line gives the experts' MXFP4 bytes."""
    import sys
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[2]))
    from tests.models.test_gpt_oss import GptOssTiny, write_mxfp4_pair
    from tests.models.test_models_vs_hf import _assert_matches_hf, _generate, _prompts

    from pagedllm import LLM
    from pagedllm.model.models.gpt_oss import GptOssExperts
    from pagedllm.model.quantization import mxfp4
    hf = GptOssTiny(str(tmp_path / "seed"), seed=1).hf
    write_mxfp4_pair(hf, tmp_path / "dense", tmp_path / "mx")
    dense = GptOssTiny(str(tmp_path / "dense"), hf)
    monkeypatch.setattr(mxfp4, "KEEP_MXFP4_ON_CPU", True)
    monkeypatch.setattr(GptOssExperts, "forward", GptOssExperts.fused)       # the GPU path, on CPU tensors
    with caplog.at_level("INFO", logger="pagedllm"):
        llm = LLM(str(tmp_path / "mx"), skip_tokenizer_init=True, dtype="float32", seed=0)
    # 2 layers x 4 experts x (gate/up 64 x 64 + down 64 x 32 values): 4.25 bits a value, 16 KiB in fp32
    assert "(mxfp4 experts kept in MXFP4: 0.00 GiB (0.00 GiB dequantized))" in caplog.text
    assert "gpt-oss: MXFP4 experts kept in MXFP4 on cpu" in caplog.text
    kinds = llm.apply_model(lambda model: sorted({f"{n.rpartition('.')[2]} {p.dtype}" for n, p in
                                                   model.named_parameters() if ".experts." in n}))
    assert kinds == [["b13 torch.float32", "b2 torch.float32", "w13 torch.uint8", "w13_scale torch.uint8",
                      "w2 torch.uint8", "w2_scale torch.uint8"]]
    kept = llm.apply_model(lambda model: sum(p.numel() for p in model.parameters() if p.dtype == torch.uint8))
    assert kept == [2 * 4 * (64 * 64 + 64 * 32) * 17 // 32]        # 4.25 bits a value (fp32: 32)
    prompts = _prompts((3, 17, 40))
    _assert_matches_hf(dense, prompts, _generate(llm, prompts))


def _random_mxfp4(num_experts, rows, cols, gen):
    """Random MXFP4 weights ``[E, rows, cols]``: bytes ``[E, rows, cols / 2]`` (every e2m1 code, both signs of zero)
    and e8m0 scale bytes ``[E, rows, cols / 32]`` around ``2 ** -5``; and the weights they stand for, dequantized
    as the load-time path does (model/quantization/mxfp4.py), in float64."""
    from pagedllm.model.quantization.mxfp4 import dequantize_mxfp4
    blocks = torch.randint(0, 256, (num_experts, rows, cols // 32, 16), generator=gen, dtype=torch.uint8)
    scales = torch.randint(120, 126, (num_experts, rows, cols // 32), generator=gen, dtype=torch.uint8)
    dense = dequantize_mxfp4(blocks, scales, torch.float64)
    return blocks.flatten(-2).to(DEVICE), scales.to(DEVICE), dense.to(DEVICE)


@pytest.mark.parametrize("dtype", [torch.float32, HALF])
@pytest.mark.parametrize("tokens, num_experts, top_k, hidden, inter, skew", [
    (1, 8, 2, 96, 160, False),       # decode; K of gate_up not a whole 128 tile (3 of 4 groups), I tails of N tiles
    (1, 32, 4, 64, 96, False),       # gpt-oss's batch-1 decode (top 4 of 32): the 32-wide N tiles of _tiles
    (7, 16, 4, 64, 96, False),       # top-4
    (45, 4, 2, 96, 64, False),       # ~22 rows an expert (the 32-row tile, 64-wide K tiles)
    (299, 8, 4, 64, 32, True),       # prefill: long runs on a few experts (the 64-row tile), I = one group
])
def test_mxfp4_experts_equal_the_loop_over_their_dequantized_weights(dtype, tokens, num_experts, top_k, hidden,
                                                                     inter, skew):
    """gpt-oss's experts kept in MXFP4 (e2m1 codes and e8m0 scales unpacked inside the kernels' K loop), with the
    experts' biases and the clamped SwiGLU: the eager loop of model/models/gpt_oss.py over the dequantized-at-load
    weights (fp32: to rounding; fp16 under the interpreter, bf16 on a GPU: the activations' rounding)."""
    from pagedllm.model.models.gpt_oss import GptOssExperts
    gen = torch.Generator().manual_seed(tokens * 7 + hidden)
    q13, s13, d13 = _random_mxfp4(num_experts, 2 * inter, hidden, gen)
    q2, s2, d2 = _random_mxfp4(num_experts, hidden, inter, gen)
    reference = GptOssExperts(num_experts, hidden, inter, alpha=1.702, limit=0.7).to(DEVICE).double()
    with torch.no_grad():
        reference.w13.copy_(d13), reference.w2.copy_(d2)
        reference.b13.copy_(torch.randn(num_experts, 2 * inter, generator=gen) * 0.5)
        reference.b2.copy_(torch.randn(num_experts, hidden, generator=gen) * 0.5)
    x = torch.randn(tokens, hidden, generator=gen).to(DEVICE, dtype)
    ids, weights = _routing(tokens, num_experts, top_k, gen, skew)
    expected = reference.expert_loop(x.double(), ids, weights.double())
    out = fused_moe(x, q13, q2, ids, weights.to(dtype), w13_scale=s13, w2_scale=s2, mxfp4=True,
                    w13_bias=reference.b13.to(dtype), w2_bias=reference.b2.to(dtype),
                    swiglu_limits=(reference.alpha, reference.limit))
    assert out.shape == x.shape and out.dtype == dtype
    err = ((out.double() - expected).norm() / expected.norm()).item()
    assert err < (1e-5 if dtype == torch.float32 else 1.5e-2), err


def test_mxfp4_experts_of_the_wrong_shape_are_refused():
    gen = torch.Generator().manual_seed(0)
    q13, s13, _ = _random_mxfp4(4, 64, 64, gen)
    q2, s2, _ = _random_mxfp4(4, 64, 32, gen)
    x = torch.randn(3, 48, generator=gen).to(DEVICE, HALF)
    ids, weights = _routing(3, 4, 2, gen)
    with pytest.raises(ValueError, match=r"MXFP4 experts take uint8 w13 \[E, 2I, H / 2\].* for H = 48"):
        fused_moe(x, q13, q2, ids, weights.to(HALF), w13_scale=s13, w2_scale=s2, mxfp4=True)
