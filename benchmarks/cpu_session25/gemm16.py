"""fp32 GEMMs of SmolLM2-135M at 16 rows: MKL F.linear (HF's path) against oneDNN-packed (the engine's), 2 threads,
30 weight copies round-robin, µs a call (docs/perf.md, session 25). Run with OMP_WAIT_POLICY=PASSIVE."""
import time, torch
torch.set_num_threads(2)
shapes = [(960, 576), (576, 576), (3072, 576), (576, 1536)]
M = 16
for n, k in shapes:
    ws = [torch.randn(n, k) for _ in range(30)]
    x = torch.randn(M, k)
    packed = [torch.ops.mkldnn._reorder_linear_weight(w, M) if hasattr(torch.ops.mkldnn, "_reorder_linear_weight") else None for w in ws]
    def run_mkl():
        for w in ws: torch.nn.functional.linear(x, w)
    def run_dnn():
        for w, p in zip(ws, packed): torch.ops.mkldnn._linear_pointwise(x, p, None, "none", [], "")
    for name, fn in (("mkl F.linear", run_mkl), ("onednn packed", run_dnn)):
        fn(); t = time.perf_counter()
        for _ in range(10): fn()
        print(n, k, name, round((time.perf_counter() - t) / 300 * 1e6, 1), "us")
