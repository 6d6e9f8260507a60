"""Issue 19, 16 concurrent: SmolLM2's four projections at M rows through torch's int8 weight-only GEMM
(``_weight_int8pack_mm``: bf16 activations, int8 weights with a bf16 scale per output row) against what the engine
runs there now (oneDNN dense bf16, kernels/quant/cpu.INT4_MAX_ROWS) and torch's int4 op. 2 threads, the engine's
PASSIVE wait policy, 30 weight copies read round-robin. µs a call.

python benchmarks/cpu_session21/int8_rows.py [M ...]
"""
import os
import sys

__import__("pagedllm")      # OMP_WAIT_POLICY=PASSIVE before torch loads libgomp, as the engine runs
import torch  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "cpu_session10"))
from timing import us_per_call  # noqa: E402

torch.set_num_threads(int(os.environ.get("THREADS", "2")))
GS, COPIES = 32, 30
SHAPES = {"qkv": (960, 576), "o": (576, 576), "gate_up": (3072, 576), "down": (576, 1536)}
for M in [int(a) for a in sys.argv[1:]] or [16]:
    totals = {}
    for name, (N, K) in SHAPES.items():
        ws = [torch.randn(N, K) * 0.05 for _ in range(COPIES)]
        x16 = torch.randn(M, K).to(torch.bfloat16)
        i4 = [(torch.ops.aten._convert_weight_to_int4pack_for_cpu(torch.randint(0, 16, (N, K), dtype=torch.int32), 1),
               torch.rand(K // GS, N, 2).to(torch.bfloat16)) for _ in ws]
        bf = [torch.ops.mkldnn._reorder_linear_weight(w.to(torch.bfloat16), 16) for w in ws]
        i8 = [(torch.randint(-127, 128, (N, K), dtype=torch.int8), torch.rand(N).to(torch.bfloat16)) for _ in ws]
        i = [0]

        def nxt(lst):
            i[0] = (i[0] + 1) % COPIES
            return lst[i[0]]
        row = {
            "int4": us_per_call(lambda: torch.ops.aten._weight_int4pack_mm_for_cpu(x16, nxt(i4)[0], GS,
                                                                                     i4[i[0]][1]), 100),
            "bf16": us_per_call(lambda: torch.ops.mkldnn._linear_pointwise(x16, nxt(bf), None, "none", [], ""), 100),
            "int8": us_per_call(lambda: torch.ops.aten._weight_int8pack_mm(x16, *nxt(i8)), 100),
        }
        for k, v in row.items():
            totals[k] = totals.get(k, 0) + v
        print(f"M={M:3d} {name:8s} {N}x{K}: " + "  ".join(f"{k} {v:7.1f}" for k, v in row.items()), flush=True)
    print(f"M={M:3d} per layer: " + "  ".join(f"{k} {v:7.1f}" for k, v in totals.items())
          + "  (x30 layers: " + "  ".join(f"{k} {v * 30 / 1e3:.1f} ms" for k, v in totals.items()) + ")")
