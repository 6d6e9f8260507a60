"""A 16-request padded decode attention of SmolLM2's shape (9 query heads, 3 KV heads, head 64) on the CPU, one
thread (as the torch backend runs it): SDPA as today vs an explicit matmul-softmax-matmul.

REQUESTS=16 python benchmarks/cpu_session11/decode_attn.py [dtype] [max keys ...]     (docs/perf.md, issue 19, session 11)
"""
import os
import sys

__import__("pagedllm")    # OMP_WAIT_POLICY=PASSIVE before torch loads libgomp, as the engine runs
import torch
import torch.nn.functional as F

sys.path.insert(0, "benchmarks/cpu_session10")
from timing import us_per_call  # noqa: E402

torch.set_num_threads(1)
dtype = getattr(torch, sys.argv[1]) if len(sys.argv) > 1 else torch.float32
B, HKV, G, D = int(os.environ.get("REQUESTS", "16")), 3, 3, 64
for L in [int(a) for a in sys.argv[2:]] or [40, 100, 150]:
    g = torch.Generator().manual_seed(0)
    gathered_k = torch.randn(B, L, HKV, D, generator=g).to(dtype)
    gathered_v = torch.randn(B, L, HKV, D, generator=g).to(dtype)
    k, v = gathered_k.transpose(1, 2), gathered_v.transpose(1, 2)      # [B, Hkv, L, D], as the backend's views
    q = torch.randn(B, HKV, G, D, generator=g).to(dtype)
    lens = torch.randint(L // 2, L + 1, (B,), generator=g)
    lens[0] = L
    mask = torch.zeros(B, 1, 1, L, dtype=dtype).masked_fill_(
        (torch.arange(L)[None, :] >= lens[:, None])[:, None, None, :], float("-inf"))
    scale = D ** -0.5

    def sdpa():
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)

    def explicit():
        s = torch.matmul(q, k.transpose(-1, -2)).mul_(scale).add_(mask)
        return torch.matmul(torch.softmax(s, dim=-1), v)

    def explicit_baddbmm():
        s = torch.baddbmm(mask.expand(B, HKV, G, L).reshape(B * HKV, G, L), q.reshape(B * HKV, G, D),
                          k.reshape(B * HKV, L, D).transpose(1, 2), alpha=scale)
        return torch.bmm(torch.softmax(s, dim=-1), v.reshape(B * HKV, L, D)).view(B, HKV, G, D)

    mask32 = mask.float()

    def sdpa_fp32():
        return F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask32, scale=scale).to(dtype)

    def baddbmm_fp32():
        s = torch.baddbmm(mask32.expand(B, HKV, G, L).reshape(B * HKV, G, L), q.float().reshape(B * HKV, G, D),
                          k.float().reshape(B * HKV, L, D).transpose(1, 2), alpha=scale)
        return torch.bmm(torch.softmax(s, dim=-1), v.float().reshape(B * HKV, L, D)).view(B, HKV, G, D).to(dtype)

    ref = sdpa().double()
    for name, fn in [("sdpa", sdpa), ("explicit", explicit), ("baddbmm", explicit_baddbmm), ("sdpa_fp32", sdpa_fp32),
                     ("baddbmm32", baddbmm_fp32)]:
        err = (fn().double() - ref).abs().max().item()
        print(f"L={L:4d} {name:9s} {us_per_call(fn, 300):8.1f} us  max|diff vs sdpa| {err:.1e}", flush=True)
