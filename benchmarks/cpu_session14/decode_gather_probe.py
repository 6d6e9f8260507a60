"""The CPU decode attention's gather and matmuls at SmolLM2's shapes, one thread (issue 19, session 14).

python benchmarks/cpu_session14/decode_gather_probe.py

16 requests x 150 keys, 3 KV heads x 3 query heads of 64, bf16, blocks of 16. Prints µs per layer for:
(1) the keys + values gather as each layer built it before c423a7d (block ids, scratch views, key/value views) vs
    only the two ``index_select`` calls into views planned once per step (what the step's later layers do now);
(2) the bf16 decode matmuls (``_decode_bmm``: reshapes that copy the gathered keys/values, baddbmm, softmax, bmm)
    vs the same as one block-diagonal query per request against the keys in their cache layout ``[L, Hkv * hd]``
    (no copies, 3x the multiply-adds): bitwise equal results, checked.
"""
import time

from pagedllm.kernels import torch_attention as ta   # pagedllm first: its OpenMP wait policy

import torch  # noqa: E402

D, HKV, G, HD, L, NBLK, BS = 16, 3, 3, 64, 150, 10, 16


def per_call_us(fn, warm: int = 50, reps: int = 500) -> float:
    for _ in range(warm):
        fn()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t0) / reps * 1e6


@torch.inference_mode()
def main() -> None:
    torch.set_num_threads(1)
    k_cache = torch.randn(2000, BS, HKV, HD).bfloat16()
    v_cache = torch.randn(2000, BS, HKV, HD).bfloat16()
    tables = torch.randint(0, 2000, (D, NBLK))

    def per_layer_views():
        keys = ta._gather_blocks(k_cache, tables).flatten(1, 2)[:, :L].transpose(1, 2)
        values = ta._gather_blocks(v_cache, tables, 1).flatten(1, 2)[:, :L].transpose(1, 2)
        return keys, values

    step_cache: dict = {}
    planned = ta._decode_keys_values(k_cache, v_cache, tables, L, step_cache)     # the step's first layer

    def planned_gather():
        return ta._decode_keys_values(k_cache, v_cache, tables, L, step_cache)

    assert all(torch.equal(a, b) for a, b in zip(per_layer_views(), planned))
    print(f"gather, per-layer views {per_call_us(per_layer_views):.0f} us, planned {per_call_us(planned_gather):.0f} us")

    keys, values = planned
    q = torch.randn(D, HKV, G, HD).bfloat16()
    mask = torch.zeros(D, 1, 1, L).bfloat16()
    mask[0, ..., 100:] = float("-inf")
    kflat = step_cache[next(k for k in step_cache if isinstance(k, tuple))][0][1]   # the keys' scratch rows
    vflat = step_cache[next(k for k in step_cache if isinstance(k, tuple))][1][1]
    k_rows = kflat.view(D, NBLK * BS, HKV * HD)[:, :L]
    v_rows = vflat.view(D, NBLK * BS, HKV * HD)[:, :L]
    q_blocks = torch.zeros(D, HKV, G, HKV, HD, dtype=q.dtype)
    wide = mask.view(D, 1, L).expand(D, HKV * G, L)

    def current():
        return ta._decode_bmm(q, keys, values, mask, 0.125, None)

    def block_diagonal():
        q_blocks.diagonal(dim1=1, dim2=3).copy_(q.permute(0, 2, 3, 1))
        s = torch.baddbmm(wide, q_blocks.view(D, HKV * G, HKV * HD), k_rows.transpose(1, 2), alpha=0.125)
        r = torch.bmm(torch.softmax(s, dim=-1), v_rows)
        return r.view(D, HKV, G, HKV, HD).diagonal(dim1=1, dim2=3).permute(0, 3, 1, 2)

    print(f"bitwise equal: {torch.equal(current(), block_diagonal().contiguous())}")
    for _ in range(2):
        print(f"matmuls, _decode_bmm {per_call_us(current):.0f} us, block-diagonal {per_call_us(block_diagonal):.0f} us")


if __name__ == "__main__":
    main()
