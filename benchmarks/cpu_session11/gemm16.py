"""SmolLM2's four projections at M rows, 2 threads, 30 weight copies read round-robin (as a step reads 30 layers):
torch's int4 GEMM (bf16 activations) vs oneDNN dense bf16 vs oneDNN fp32 vs fbgemm fp16. µs per call.

THREADS=1|2 PASSIVE=1 python benchmarks/cpu_session11/gemm16.py [M ...]   (PASSIVE: the engine's OpenMP wait policy; docs/perf.md, issue 19, session 11)
"""
import os
import sys

if os.environ.get("PASSIVE"):
    __import__("pagedllm")    # OMP_WAIT_POLICY=PASSIVE before torch loads libgomp, as the engine runs
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
        x32 = torch.randn(M, K)
        x16 = x32.to(torch.bfloat16)
        i4 = [(torch.ops.aten._convert_weight_to_int4pack_for_cpu(torch.randint(0, 16, (N, K), dtype=torch.int32), 1),
               torch.rand(K // GS, N, 2).to(torch.bfloat16)) for _ in ws]
        bf = [torch.ops.mkldnn._reorder_linear_weight(w.to(torch.bfloat16), 16) for w in ws]
        f32 = [torch.ops.mkldnn._reorder_linear_weight(w, 16) for w in ws]
        f16 = [torch.ops.quantized.linear_prepack_fp16(w, None) for w in ws]
        i = [0]

        def nxt(lst):
            i[0] = (i[0] + 1) % COPIES
            return lst[i[0]]
        row = {
            "int4": us_per_call(lambda: torch.ops.aten._weight_int4pack_mm_for_cpu(x16, *nxt(i4)[:1], GS,
                                                                                     i4[i[0]][1]), 100),
            "bf16": us_per_call(lambda: torch.ops.mkldnn._linear_pointwise(x16, nxt(bf), None, "none", [], ""), 100),
            "fp32": us_per_call(lambda: torch.ops.mkldnn._linear_pointwise(x32, nxt(f32), None, "none", [], ""), 100),
            "fp16": us_per_call(lambda: torch.ops.quantized.linear_dynamic_fp16(x32, nxt(f16)), 100),
        }
        for k, v in row.items():
            totals[k] = totals.get(k, 0) + v
        print(f"M={M:3d} {name:8s} {N}x{K}: " + "  ".join(f"{k} {v:7.1f}" for k, v in row.items()), flush=True)
    print(f"M={M:3d} per layer: " + "  ".join(f"{k} {v:7.1f}" for k, v in totals.items())
          + "  (x30 layers: " + "  ".join(f"{k} {v * 30 / 1e3:.1f} ms" for k, v in totals.items()) + ")")
