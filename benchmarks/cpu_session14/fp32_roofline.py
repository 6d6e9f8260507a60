"""How close the fp32 default's batch-1 GEMVs come to this machine's memory bandwidth (issue 19, session 14).

python benchmarks/cpu_session14/fp32_roofline.py [threads]

Prints the streaming read rate (``Tensor.sum`` over 8 x 64 MiB) and, for SmolLM2-135M's five GEMV shapes
(qkv, o, gate_up, down, LM head; one row, fp32), µs a call and GiB/s of weights read for three dense fp32 forms:
``F.linear`` on the [N, K] weight (MKL), ``x @ W^T`` stored [K, N], and the oneDNN-packed weight the engine uses.
Enough weight copies (~400 MB) are read round-robin that every call reads from DRAM, as a decode step does.
"""
import sys
import time

from pagedllm.kernels import cpu_onednn   # first: pagedllm sets the OpenMP wait policy before torch starts it

import torch  # noqa: E402

SHAPES = ((960, 576), (576, 576), (3072, 576), (576, 1536), (49152, 576))


def best_seconds(fn, reps: int = 4) -> float:
    for _ in range(2):
        fn()
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    threads = int(sys.argv[1]) if len(sys.argv) > 1 else 2
    torch.set_num_threads(threads)
    chunks = [torch.randn(16 * 1024 * 1024) for _ in range(8)]
    t = best_seconds(lambda: [c.sum() for c in chunks], reps=5)
    print(f"{threads} threads; streaming read (sum of 8 x 64 MiB): {8 * 64 / 1024 / t:.1f} GiB/s")
    for n, k in SHAPES:
        copies = max(3, int(400e6 / (n * k * 4)))
        ws = [torch.randn(n, k) for _ in range(copies)]
        x = torch.randn(1, k)
        row = [f"{n} x {k}"]

        def rate(fn) -> str:
            s = best_seconds(fn) / copies
            return f"{s * 1e6:7.1f} us {n * k * 4 / s / 2**30:5.1f} GiB/s"

        row.append("F.linear " + rate(lambda: [torch.nn.functional.linear(x, w) for w in ws]))
        transposed = [w.t().contiguous() for w in ws]
        row.append("x @ W^T " + rate(lambda: [x @ w for w in transposed]))
        transposed.clear()
        packed = [cpu_onednn.onednn_pack(w) for w in ws]
        row.append("oneDNN " + rate(lambda: [cpu_onednn.onednn_linear(x, p, None) for p in packed]))
        print(" | ".join(row), flush=True)


if __name__ == "__main__":
    main()
