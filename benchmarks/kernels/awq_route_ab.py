"""AWQ/GPTQ int4 end to end with the wide fused kernel routed as in triton_packed._TABLE, or not: an A/B of the
17..128-row routing without a switch in the product.

python3 benchmarks/kernels/awq_route_ab.py wide|scratch MODEL_NAME WORKLOAD...   (GPU; .bench/sb's offline_workload.py)
``scratch``: every wide entry of the table replaced by the dequantize + cuBLAS config before the engine is built.
Set ANCHOR_CFG to the AWQ quantization_config as ANCHORS.md shows. Prints offline_workload.py's JSON lines.
"""
import os
import runpy
import sys

variant = sys.argv[1]
sys.argv = ["offline_workload.py", "pagedllm"] + sys.argv[2:]
if variant == "scratch":
    from pagedllm.kernels.quant import triton_packed as tp
    from pagedllm.kernels.quant.triton_packed_wide import PackedWideConfig
    for per_m in tp._TABLE.values():
        for bucket, cfg in per_m.items():
            if isinstance(cfg, PackedWideConfig):
                per_m[bucket] = tp._DQ
elif variant != "wide":
    raise SystemExit(f"unknown variant {variant}")
runpy.run_path(os.path.join(os.environ.get("PAGEDLLM_BENCH_DIR", ".bench/sb"), "offline_workload.py"),
               run_name="__main__")
