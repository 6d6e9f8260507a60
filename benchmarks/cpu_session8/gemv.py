"""Microbenchmark (issue 19, session 8): M=1 weight-only matmuls on the CPU from DRAM (30 weight copies): MKL fp32,
fbgemm fp16, and Inductor-generated int8 / fp16 GEMVs. python gemv.py M THREADS (microseconds per call, best of 5)."""
import sys, time, torch, torch.nn.functional as F
torch.manual_seed(0)
M = int(sys.argv[1]) if len(sys.argv) > 1 else 1
threads = int(sys.argv[2]) if len(sys.argv) > 2 else 1
torch.set_num_threads(threads)
shapes = [(1536, 576), (576, 1536)]   # (N, K): gate-like, down-like
COPIES = 30
x = torch.randn(M, 576)
x2 = torch.randn(M, 1536)
def bench(fn, ws, xin, reps=5):
    best = 1e9
    for _ in range(reps):
        t = time.perf_counter()
        for w in ws: fn(xin, w)
        best = min(best, (time.perf_counter() - t) / len(ws))
    return best * 1e6
res = {}
for (N, K) in shapes:
    xin = x if K == 576 else x2
    W = [torch.randn(N, K) * 0.02 for _ in range(COPIES)]
    res[f"fp32 {N}x{K}"] = bench(lambda a, w: F.linear(a, w), W, xin)
    P = [torch.ops.quantized.linear_prepack_fp16(w, None) for w in W]
    res[f"fbgemm16 {N}x{K}"] = bench(lambda a, p: torch.ops.quantized.linear_dynamic_fp16(a, p), P, xin)
    # int8 per-channel
    sc = [w.abs().amax(1) / 127 for w in W]
    Q = [(torch.round(w / s[:, None]).to(torch.int8), s) for w, s in zip(W, sc)]
    def i8(a, q):
        return (a @ q[0].to(torch.float32).t()) * q[1]
    ci8 = torch.compile(lambda a, q, s: (a[:, None, :] * q.to(torch.float32)[None]).sum(-1) * s, dynamic=False)
    ci8(xin, Q[0][0], Q[0][1])
    res[f"inductor int8 {N}x{K}"] = bench(lambda a, q: ci8(a, q[0], q[1]), Q, xin)
    ref = i8(xin, Q[0]); got = ci8(xin, Q[0][0], Q[0][1])
    res[f"err int8 {N}x{K}"] = float((ref - got).abs().max())
    # fp16 weights via inductor
    H = [w.half() for w in W]
    c16 = torch.compile(lambda a, h: (a[:, None, :] * h.to(torch.float32)[None]).sum(-1), dynamic=False)
    c16(xin, H[0])
    res[f"inductor fp16 {N}x{K}"] = bench(lambda a, h: c16(a, h), H, xin)
for k, v in res.items(): print(f"{k:28s} {v:10.1f}")
