"""Microbenchmark (issue 19, session 8; rejected): int8 weights in blocks of 32 with a scale and an offset per block
(exact for a Q4_1 GGUF: w = d * (q - 8) + (m + 8d)), packed 4 bytes per int32 so Inductor loads whole vectors, the
GEMV written in torch and compiled by Inductor, against fbgemm fp16. python i8blk.py THREADS COPIES"""
import sys, time, torch
torch.manual_seed(0)
threads = int(sys.argv[1]) if len(sys.argv) > 1 else 1
torch.set_num_threads(threads)
COPIES = int(sys.argv[2]) if len(sys.argv) > 2 else 30

def pack(q):            # q: int8 [N, K] -> int32 [N, G, 8] where byte j of word i of group g = q[n, g*32 + j*8 + i]
    N, K = q.shape
    G = K // 32
    b = q.view(N, G, 4, 8).to(torch.int32) & 0xFF          # [N, G, j, i]
    return (b[:, :, 0] | (b[:, :, 1] << 8) | (b[:, :, 2] << 16) | (b[:, :, 3] << 24))   # [N, G, 8]

def gemv(x, w, d, o):   # x [1, K] fp32, w int32 [N, G, 8], d/o fp32 [N, G]
    G = w.shape[1]
    xv = x.view(G, 4, 8)
    acc = None
    for j in range(4):
        q = ((w << (24 - 8 * j)) >> 24).to(torch.float32)      # sign-extended byte j, [N, G, 8]
        t = q * xv[None, :, j, :]
        acc = t if acc is None else acc + t
    xs = xv.sum((1, 2))                                         # [G]
    return ((acc * d[:, :, None]).sum((1, 2)) + (o * xs[None]).sum(-1))[None]

cg = torch.compile(gemv, dynamic=False)
def bench(fn, items, reps=5):
    best = 1e9
    for _ in range(reps):
        t = time.perf_counter()
        for it in items: fn(*it)
        best = min(best, (time.perf_counter() - t) / len(items))
    return best * 1e6
for (N, K) in [(1536, 576), (576, 1536), (960, 576)]:
    x = torch.randn(1, K)
    W = [torch.randn(N, K) * 0.02 for _ in range(COPIES)]
    packs, ref = [], []
    for w in W:
        wb = w.view(N, K // 32, 32)
        lo, hi = wb.amin(-1), wb.amax(-1)
        d = (hi - lo) / 255; o = (hi + lo) / 2
        q = torch.round((wb - o[..., None]) / d[..., None]).clamp(-127, 127).to(torch.int8).view(N, K)
        packs.append((x, pack(q), d, o))
        ref.append((q.view(N, K // 32, 32).float() * d[..., None] + o[..., None]).view(N, K))
    got = cg(*packs[0]); exp = x @ ref[0].t()
    err = float((got - exp).abs().max() / exp.abs().max())
    P = [torch.ops.quantized.linear_prepack_fp16(w, None) for w in W]
    t16 = bench(lambda a, p: torch.ops.quantized.linear_dynamic_fp16(a, p), [(x, p) for p in P])
    t8 = bench(cg, packs)
    print(f"{N}x{K}: fbgemm fp16 {t16:7.1f} us  inductor int8-block {t8:7.1f} us  rel err {err:.1e}")
