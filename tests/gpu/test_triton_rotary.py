"""The Triton rotary kernels against the eager rotary path and the separate KV-store kernel.

Runs on a CUDA GPU; without one it is skipped unless ``TRITON_INTERPRET=1`` (Triton's CPU interpreter, fp32 only).
"""
import os

import pytest
import torch

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
if not torch.cuda.is_available() and not INTERPRET:
    pytest.skip("needs CUDA", allow_module_level=True)
pytest.importorskip("triton")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [torch.float32] if INTERPRET else [torch.bfloat16, torch.float32]

from transformers import LlamaConfig  # noqa: E402

from pagedllm.kernels.triton_attention import store_kv  # noqa: E402
from pagedllm.kernels.triton_rotary import rotary_inplace, rotary_store_kv  # noqa: E402
from pagedllm.model.layers.rotary import RotaryEmbedding  # noqa: E402


def make_rope(hq, hkv, d, partial=1.0):
    cfg = LlamaConfig(hidden_size=hq * d, num_attention_heads=hq, num_key_value_heads=hkv, head_dim=d,
                      rope_theta=1e6)
    cfg.partial_rotary_factor = partial
    return RotaryEmbedding(cfg, d, 4096).to(DEVICE)


def fused_qkv(t, hq, hkv, d, dtype, seed=0):
    """q, k, v as strided views of one fused QKV output, as in the model."""
    g = torch.Generator().manual_seed(seed)
    qkv = torch.randn(t, (hq + 2 * hkv) * d, generator=g).to(DEVICE, dtype)
    return (qkv, qkv[:, :hq * d].view(t, hq, d), qkv[:, hq * d:(hq + hkv) * d].view(t, hkv, d),
            qkv[:, (hq + hkv) * d:].view(t, hkv, d))


@pytest.mark.parametrize("hq,hkv,d", [(28, 4, 128), (12, 2, 128), (9, 3, 64), (16, 16, 64)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_rotary_matches_eager(hq, hkv, d, dtype):
    rope = make_rope(hq, hkv, d)
    t = 77
    qkv, q, k, v = fused_qkv(t, hq, hkv, d, dtype)
    v_before = v.clone()
    pos = torch.randint(0, 4096, (t,), device=DEVICE)
    q_ref, k_ref = rope._rotate(q.float(), rope.cos[pos].unsqueeze(1), rope.sin[pos].unsqueeze(1)), \
        rope._rotate(k.float(), rope.cos[pos].unsqueeze(1), rope.sin[pos].unsqueeze(1))
    rotary_inplace(pos, q, k, rope.cos, rope.sin)
    tol = 1e-2 if dtype == torch.bfloat16 else 1e-5
    assert (q.float() - q_ref).norm() / q_ref.norm() < tol
    assert (k.float() - k_ref).norm() / k_ref.norm() < tol
    assert torch.equal(v, v_before)     # V untouched


@pytest.mark.parametrize("hq,hkv,d,partial", [(28, 4, 128, 1.0), (12, 2, 128, 1.0), (9, 3, 64, 1.0),
                                              (8, 2, 64, 0.5)])
@pytest.mark.parametrize("block_size", [16, 32])
@pytest.mark.parametrize("dtype", DTYPES)
def test_rotary_store_kv_matches_separate_kernels(hq, hkv, d, partial, block_size, dtype):
    """The fused rotate-and-store gives the same q and the same cache, bit for bit, as rotary_inplace followed by
    store_kv; padding slots (-1) write nothing; a partial rotary stores the unrotated tail of K too."""
    rope = make_rope(hq, hkv, d, partial)
    t, num_blocks = 45, 9
    pos = torch.randint(0, 4096, (t,), device=DEVICE)
    slots = torch.randperm(num_blocks * block_size)[:t].to(DEVICE)
    slots[torch.tensor([3, 17, 44])] = -1
    cache_shape = (num_blocks, block_size, hkv, d)
    results = []
    for fused in (False, True):
        qkv, q, k, v = fused_qkv(t, hq, hkv, d, dtype, seed=1)
        k_cache = torch.full(cache_shape, 7.0, device=DEVICE, dtype=dtype)
        v_cache = torch.full(cache_shape, 7.0, device=DEVICE, dtype=dtype)
        if fused:
            rotary_store_kv(pos, q, k, v, rope.cos, rope.sin, k_cache, v_cache, slots)
        else:
            rotary_inplace(pos, q, k, rope.cos, rope.sin)
            store_kv(k, v, k_cache, v_cache, slots)
        results.append((q.clone(), k_cache, v_cache))
    (q0, kc0, vc0), (q1, kc1, vc1) = results
    assert torch.equal(q0, q1) and torch.equal(kc0, kc1) and torch.equal(vc0, vc1)
    # The reference really wrote the live tokens and nothing else.
    written = torch.zeros(num_blocks * block_size, dtype=torch.bool, device=DEVICE)
    written[slots[slots >= 0]] = True
    flat = kc1.view(-1, hkv, d)
    assert (flat[~written] == 7.0).all() and not (flat[written] == 7.0).all()
    _, _, _, v_in = fused_qkv(t, hq, hkv, d, dtype, seed=1)
    live = slots >= 0
    assert torch.equal(vc1.view(-1, hkv, d)[slots[live]], v_in[live])
