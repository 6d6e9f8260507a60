"""The Triton attention backend against the torch backend through the AttentionBackend interface (build_metadata,
write_kv with rotary, attend) on a random paged batch: decode-only, and mixed (decodes first, split between the two
kernels).

Runs on a CUDA GPU; without one it is skipped unless ``TRITON_INTERPRET=1`` (Triton's CPU interpreter, fp32).
"""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
if not torch.cuda.is_available() and not INTERPRET:
    pytest.skip("needs CUDA", allow_module_level=True)
pytest.importorskip("triton")
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
DTYPE = torch.float32 if INTERPRET else torch.bfloat16

from transformers import LlamaConfig  # noqa: E402

from pagedllm.attention.backends.base import CommonAttentionMetadata  # noqa: E402
from pagedllm.attention.registry import attention_backend_class  # noqa: E402
from pagedllm.model.layers.rotary import RotaryEmbedding  # noqa: E402

HQ, HKV, D, BLOCK = 4, 2, 64, 16


def backend(name: str):
    return attention_backend_class(name)(num_heads=HQ, num_kv_heads=HKV, head_dim=D, block_size=BLOCK,
                                         max_num_seqs=8, max_num_batched_tokens=256, dtype=DTYPE, device=DEVICE)


def paged_step(specs, seed=0):
    """``specs``: (context length incl. new tokens, new tokens) per request, decodes first. Returns the common
    metadata, a KV cache with each request's cached prefix filled, positions, and the new q / k / v."""
    g = torch.Generator().manual_seed(seed)
    need = [-(-s // BLOCK) for s, _ in specs]
    num_blocks = sum(need) + 3
    perm = torch.randperm(num_blocks, generator=g).numpy()
    tables = np.zeros((len(specs), max(need)), dtype=np.int32)
    used = 0
    for i, n in enumerate(need):
        tables[i, :n] = perm[used:used + n]
        used += n
    seq_lens = np.array([s for s, _ in specs], dtype=np.int32)
    q_lens = np.array([q for _, q in specs])
    qsl = np.concatenate([[0], np.cumsum(q_lens)]).astype(np.int32)
    positions = np.concatenate([np.arange(s - q, s) for s, q in specs])
    req = np.repeat(np.arange(len(specs)), q_lens)
    slots = tables[req, positions // BLOCK].astype(np.int64) * BLOCK + positions % BLOCK
    cache = torch.randn(2, num_blocks, BLOCK, HKV, D, generator=g).to(DTYPE)
    t = int(qsl[-1])
    q, k, v = (torch.randn(t, h, D, generator=g).to(DTYPE) for h in (HQ, HKV, HKV))
    dev = lambda a: torch.from_numpy(a).to(DEVICE)  # noqa: E731
    common = CommonAttentionMetadata(
        query_start_loc=dev(qsl), seq_lens=dev(seq_lens), block_tables=dev(tables), slot_mapping=dev(slots),
        max_query_len=int(q_lens.max()), max_seq_len=int(seq_lens.max()), num_decodes=int((q_lens == 1).sum()),
        query_start_loc_cpu=qsl, seq_lens_cpu=seq_lens, block_tables_cpu=tables)
    return common, cache.to(DEVICE), dev(positions), q.to(DEVICE), k.to(DEVICE), v.to(DEVICE)


@pytest.mark.parametrize("specs", [
    [(37, 1), (20, 1), (5, 1)],                       # decode only: the split-KV decode kernel
    [(37, 1), (20, 1), (50, 13), (9, 9)],             # mixed: decode kernel + extend kernel
], ids=["decode", "mixed"])
@pytest.mark.parametrize("host_copies", [True, False], ids=["host", "device-only"])
def test_triton_backend_matches_torch_backend(specs, host_copies):
    common, cache, positions, q, k, v = paged_step(specs)
    if not host_copies:     # as in graph capture: the backend derives everything on the device
        common.query_start_loc_cpu = common.seq_lens_cpu = common.block_tables_cpu = None
    cfg = LlamaConfig(hidden_size=HQ * D, num_attention_heads=HQ, num_key_value_heads=HKV, head_dim=D)
    rope = RotaryEmbedding(cfg, D, 256).to(DEVICE)
    results = {}
    for name in ("torch", "triton"):
        be = backend(name)
        kv = cache.clone()
        metadata = be.build_metadata(common)
        q_rot = be.write_kv(q.clone(), k.clone(), v.clone(), kv, common.slot_mapping, rope, positions)
        out = torch.full_like(q, float("nan"))
        assert be.attend(q_rot, kv, metadata, D ** -0.5, out=out) is out
        results[name] = (kv.float(), out.float())
    tol = 1e-4 if DTYPE == torch.float32 else 2e-2
    torch.testing.assert_close(results["triton"][0], results["torch"][0], atol=tol, rtol=tol)
    torch.testing.assert_close(results["triton"][1], results["torch"][1], atol=tol, rtol=tol)


def test_triton_backend_declares_graphs_and_warmups():
    be = backend("triton")
    assert be.supports_full_cuda_graphs and be.supports_piecewise_cuda_graphs
    batches = be.warmup_batches()
    assert ([65, 2], 0) in batches and ([1, 65], 1) in batches
    assert not backend("torch").supports_full_cuda_graphs and backend("torch").warmup_batches() == []


@pytest.mark.parametrize("specs", [[(37, 1), (20, 1), (5, 1)], [(37, 1), (20, 1), (50, 13)]],
                         ids=["decode", "mixed"])
def test_fused_rope_decode_equals_write_kv_then_attend(specs, monkeypatch):
    """PAGEDLLM_DECODE_ROPE_FUSED: a decode step's rotation and cache write inside the decode kernel leave the same
    cache and give the same output as write_kv then attend (a mixed step takes the two calls either way)."""
    common, cache, positions, q, k, v = paged_step(specs, seed=4)
    cfg = LlamaConfig(hidden_size=HQ * D, num_attention_heads=HQ, num_key_value_heads=HKV, head_dim=D)
    rope = RotaryEmbedding(cfg, D, 256).to(DEVICE)
    results = {}
    for fused in ("0", "1", "2", "3"):
        monkeypatch.setenv("PAGEDLLM_DECODE_ROPE_FUSED", fused)
        be = backend("triton")
        assert be.fuse_rope_decode == int(fused)
        kv = cache.clone()
        out = be.write_kv_and_attend(q.clone(), k.clone(), v.clone(), kv, common.slot_mapping,
                                     be.build_metadata(common), D ** -0.5, rope, positions)
        results[fused] = (kv, out)
    for fused in ("1", "2"):
        assert torch.equal(results[fused][0], results["0"][0])
        assert torch.equal(results[fused][1], results["0"][1])
    # 3: the new key / value from registers: the same cache, the output equal up to rounding.
    assert torch.equal(results["3"][0], results["0"][0])
    torch.testing.assert_close(results["3"][1], results["0"][1], rtol=2e-2, atol=2e-2)
