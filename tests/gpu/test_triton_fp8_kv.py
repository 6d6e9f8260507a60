"""Triton kernels over an fp8 KV cache (kv_cache_dtype="fp8" / "fp8_e5m2"): the KV writers (store kernel and the
rotary kernel that also stores) round like torch's ``.to(float8)``, and the decode / extend kernels read fp8, convert
and match the torch reference over the same fp8 cache (which dequantizes on read).

Runs on a CUDA GPU (fp8 conversions need sm89+: H100/H200/L40); under ``TRITON_INTERPRET=1`` on the CPU where the
interpreter handles float8, else skipped there."""
from __future__ import annotations

import pytest
import torch
from kernel_env import DEVICE, INTERPRET, NEEDS_GPU_OR_INTERPRETER

triton = pytest.importorskip("triton")

pytestmark = NEEDS_GPU_OR_INTERPRETER
# Under the interpreter bf16 is mis-converted (see test_triton_attention.py): fp16 queries there.
QDTYPE = torch.float16 if INTERPRET else torch.bfloat16
FP8 = [torch.float8_e4m3fn, torch.float8_e5m2]

from pagedllm.kernels import torch_attention as ref  # noqa: E402
from pagedllm.kernels import triton_attention as tri  # noqa: E402


def _skip_without_fp8(run):
    try:
        return run()
    except Exception as e:      # noqa: BLE001 - the interpreter / an old GPU lacking float8 conversions
        if INTERPRET or (torch.cuda.is_available() and torch.cuda.get_device_capability() < (8, 9)):
            pytest.skip(f"float8 not supported here: {type(e).__name__}: {str(e)[:200]}")
        raise


@pytest.mark.parametrize("kv_dtype", FP8, ids=["e4m3", "e5m2"])
def test_store_kv_fp8_rounds_like_torch(kv_dtype):
    torch.manual_seed(0)
    num_blocks, block_size, heads, head_dim, num_tokens = 12, 16, 2, 64, 40
    slots = torch.randperm(num_blocks * block_size)[:num_tokens]
    slots[:5] = -1
    key = torch.randn(num_tokens, heads, head_dim).to(QDTYPE).to(DEVICE)
    value = torch.randn(num_tokens, heads, head_dim).to(QDTYPE).to(DEVICE)
    shape = (num_blocks, block_size, heads, head_dim)
    k1, v1 = torch.zeros(shape, dtype=kv_dtype, device=DEVICE), torch.zeros(shape, dtype=kv_dtype, device=DEVICE)
    k2, v2 = k1.clone(), v1.clone()
    ref.store_kv(key, value, k1, v1, slots.to(DEVICE))
    _skip_without_fp8(lambda: tri.store_kv(key, value, k2, v2, slots.to(DEVICE)))
    # Round-to-nearest-even in both; compare as values (a tie may round differently across implementations:
    # allow one ulp on a handful of elements).
    for a, b in ((k1, k2), (v1, v2)):
        diff = (a.float() - b.float()).abs()
        assert (diff > 0).float().mean().item() < 0.01
        assert diff.max().item() <= a.float().abs().max().item() * 2 ** -2


@pytest.mark.parametrize("kv_dtype", FP8, ids=["e4m3", "e5m2"])
@pytest.mark.parametrize("specs", [[(70, 1), (33, 1), (129, 1)], [(90, 90), (60, 7), (45, 1)]],
                         ids=["decode", "extend"])
def test_attention_over_fp8_cache_matches_reference(kv_dtype, specs):
    g = torch.Generator().manual_seed(1)
    heads, kv_heads, head_dim, block_size = 8, 2, 64, 16
    need = [(s + block_size - 1) // block_size for s, _ in specs]
    num_blocks = sum(need) + 3
    perm = torch.randperm(num_blocks, generator=g)
    tables = torch.zeros((len(specs), max(need)), dtype=torch.int32)
    used = 0
    for i, n in enumerate(need):
        tables[i, :n] = perm[used:used + n].to(torch.int32)
        used += n
    shape = (num_blocks, block_size, kv_heads, head_dim)
    k_cache = torch.randn(shape, generator=g).to(kv_dtype).to(DEVICE)
    v_cache = torch.randn(shape, generator=g).to(kv_dtype).to(DEVICE)
    q_lens = [q for _, q in specs]
    qsl = torch.tensor([0] + torch.tensor(q_lens).cumsum(0).tolist(), dtype=torch.int32, device=DEVICE)
    query = torch.randn(sum(q_lens), heads, head_dim, generator=g).to(QDTYPE).to(DEVICE)
    seq_lens = torch.tensor([s for s, _ in specs], dtype=torch.int32, device=DEVICE)
    tables = tables.to(DEVICE)
    expected = ref.paged_attention(query.float(), k_cache, v_cache, qsl, seq_lens, tables, 0.125)
    max_q = max(q_lens)
    workspace = tri.DecodeWorkspace.allocate(len(specs), heads, kv_heads, head_dim, device=DEVICE) if max_q == 1 else None
    out = _skip_without_fp8(lambda: tri.paged_attention(query, k_cache, v_cache, qsl, seq_lens, tables, 0.125,
                                                        max_q, workspace))
    err = ((out.double() - expected.double()).norm() / expected.double().norm()).item()
    assert err < 1e-2        # the same fp8 values on both sides: only the query's bf16/fp16 rounding differs
