"""torch's CPU int4 op at M rows in one call vs row chunks of 8 and 4 (issue 19, session 16; docs/perf.md).
Usage: OMP_WAIT_POLICY=PASSIVE python benchmarks/cpu_session16/int4_row_chunks.py [M]; prints µs a layer (4 projections)."""
import sys
import time

import torch

torch.set_num_threads(2)
from pagedllm.kernels.cpu_threads import gemm_for_rows
op = torch.ops.aten._weight_int4pack_mm_for_cpu
shapes = [(960,576),(576,576),(3072,576),(576,1536)]
G = 32
W = []
for c in range(30):
    layer = []
    for N, K in shapes:
        q = torch.randint(0, 16, (N, K), dtype=torch.int32)
        p = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1)
        s = torch.randn(K // G, N, 2).to(torch.bfloat16)
        layer.append((p, s, K))
    W.append(layer)
def run(M, chunk):
    xs = {K: torch.randn(M, K).to(torch.bfloat16) for _, K in shapes}
    t0 = time.perf_counter()
    for layer in W:
        for p, s, K in layer:
            x = xs[K]
            if chunk >= M:
                gemm_for_rows(op, M, x, p, G, s)
            else:
                torch.cat([gemm_for_rows(op, chunk, x[i:i+chunk], p, G, s) for i in range(0, M, chunk)])
    return (time.perf_counter() - t0) / 30 * 1e6
M = int(sys.argv[1]) if len(sys.argv) > 1 else 16
for r in range(4):
    print(" ".join(f"chunk{c}:{min(run(M, c) for _ in range(3)):.0f}" for c in (16, 8, 4)), flush=True)
