"""End-to-end A/B of a kernel-routing choice without a switch in the product: the routing tables are changed in
this process before the engine is built, then .bench/sb's offline_workload.py runs unchanged.

python3 benchmarks/kernels/route_ab.py VARIANT MODEL_NAME WORKLOAD...        (GPU)
VARIANT:
  base          the tables as committed
  awq-scratch   every triton_packed_wide entry of triton_packed._TABLE replaced by dequantize + cuBLAS (the AWQ
                17..128-row routing off; set ANCHOR_CFG to the AWQ quantization_config as ANCHORS.md shows)
  qkv-cublas    7B qkv (4608 x 3584) at 2..16 rows through cuBLAS instead of the skinny GEMM (the routing before
                session 15; session 15's "qkv-skinny" measured the other way round)
  l2-prefetch-o    the skinny GEMM's o_proj configs (7B 3584 x 3584, 1.5B 1536 x 1536, every M bucket) with
                   prefetch=True: each program asks L2 for its slice of W before the PDL wait, while the decode
                   attention runs (session 16; session 17 on an H200: 7B bs1 -1.2%, latency +1.3%)
  l2-prefetch-all  prefetch=True in every bf16 table config (every projection and the LM head; session 17: 7B bs1 -21%)
  onetile-qkv      batch 1 (the FMA path): the qkv projection's program reads its whole K in one masked tile, loaded
                   before the PDL wait (1.5B 2048 x 1536: 8 x 2048; 7B 4608 x 3584: 4 x 4096), so after the wait only
                   x is read (session 18; the per-call sweep times back-to-back GEMVs, not this overlap)
  onetile-qkv-o    the same for o_proj too (1.5B 1536 x 1536: 8 x 2048; 7B 3584 x 3584: 4 x 4096)
  awq-clamped   triton_packed's decode, dequantize and fused-GEMM kernels with their column indices clamped as
                before session 20 (EVEN_N forced off: scalar word loads, the dequantize kernel's stores through a
                shared-memory layout conversion), to A/B that change (set ANCHOR_CFG as for awq-scratch)
  awq-table     the 7B int4 row buckets 32..256 from ROUTE_TABLE (awq_fused_probe.py --save-table's JSON; only
                those in ROUTE_BUCKETS, e.g. 128,256, when set)
  awq-before-pairs  the 7B int4 routing at 17..64 rows before session 28 (kperm without pairs, o at 33..64 on
                dequantize + cuBLAS, down at 33..64 compact)
  wide-x-masked the int4 wide and 2..16-row decode kernels' x rows past M masked in partial row tiles
                (triton_packed_wide.MASK_PARTIAL_ROWS, on since session 29, and triton_packed.DECODE_MASK_PARTIAL_ROWS);
                with ROUTE_TABLE set, awq-table's routing too
  awq-slabs     triton_packed.SCRATCH_SLAB_BYTES = SLAB_MB MB (default 16): the dequantize + cuBLAS path a column
                slab at a time (session 29; benchmarks/kernels/slab_probe.py)
  untabled-wide triton_packed.UNTABLED_WIDE: int4 shapes outside the 7B table at 17..64 rows on the pairs configs
                instead of dequantize + cuBLAS (session 29; e.g. qwen2.5-1.5b with ANCHOR_CFG set as for awq-scratch)
  wide-decode   triton_packed.WIDE_DECODE: 2..16 rows of 4-bit weights on the wide kernel's 16-row pairs tiles instead
                of the decode kernel (session 30; set ANCHOR_CFG as for awq-scratch); ROUTE_XGATHER=1: x's columns
                gathered in the kernel instead of permuted by a copy (no extra kernel a call, and the PDL overlap
                with the kernel before kept); ROUTE_WIDE_STAGES=N: that config with N pipeline stages (committed:
                3 since session 32; 2 before). WIDE_DECODE is on by default since session 31: without these
                variables this variant is the base
  pairs-stages  the 7B table's pairs configs at 17..256 rows with ROUTE_PAIRS_STAGES (default 3) pipeline stages instead
                of 2 (session 32; set ANCHOR_CFG as for awq-scratch)
  decode-kernel triton_packed.WIDE_DECODE off: 2..16 rows of int4 weights on the decode kernel (before session 31)
  awq-session28 the int4 routing and x loads as before session 29: rows past M re-read in the wide kernel's partial
                row tiles, gate_up at 65..128 rows on the compact 128-row config and 129..256 and down at 65..128 on
                dequantize + cuBLAS
  awq-kperm     the 7B int4 routing of 17..32 rows on the kperm + w_as_a wide configs (all four shapes) and qkv at
                33..64 rows too (session 20's probe on an H200), the rest as committed (set ANCHOR_CFG as for awq-scratch)
Prints offline_workload.py's JSON lines.
"""
import os
import runpy
import sys

variant = sys.argv[1]
sys.argv = ["offline_workload.py", "pagedllm"] + sys.argv[2:]
if variant == "awq-scratch":
    from pagedllm.kernels.quant import triton_packed as tp
    from pagedllm.kernels.quant.triton_packed_wide import PackedWideConfig
    for per_m in tp._TABLE.values():
        for bucket, cfg in per_m.items():
            if isinstance(cfg, PackedWideConfig):
                per_m[bucket] = tp._DQ
elif variant == "qkv-cublas":
    from pagedllm.kernels import triton_gemv as tg
    tg._BEATS_CUBLAS = tg._BEATS_CUBLAS - {(4608, 3584, b) for b in (4, 8, 16)}
elif variant in ("l2-prefetch-o", "l2-prefetch-all"):
    from pagedllm.kernels import triton_gemv as tg
    for shape, per_m in tg._TABLE.items():
        if variant == "l2-prefetch-all" or shape in ((3584, 3584), (1536, 1536)):
            for bucket, cfg in per_m.items():
                per_m[bucket] = cfg._replace(prefetch=True)
elif variant in ("onetile-qkv", "onetile-qkv-o"):
    from pagedllm.kernels import triton_gemv as tg
    one = {(2048, 1536): tg.GemvConfig(8, 2048, 8, 1, False), (4608, 3584): tg.GemvConfig(4, 4096, 8, 1, False)}
    if variant == "onetile-qkv-o":
        one.update({(1536, 1536): tg.GemvConfig(8, 2048, 8, 1, False),
                    (3584, 3584): tg.GemvConfig(4, 4096, 8, 1, False)})
    for shape, cfg in one.items():
        tg._TABLE[shape][1] = cfg
elif variant in ("awq-kperm", "awq-before-pairs"):
    from pagedllm.kernels.quant import triton_packed as tp
    from pagedllm.kernels.quant.triton_packed_wide import PackedWideConfig as W
    kp = dict(kperm=True, w_as_a=True)
    tp._TABLE[(4608, 3584, 4)].update({32: W(32, 128, 128, 4, 3, **kp), 64: W(64, 64, 128, 4, 2, **kp)})
    tp._TABLE[(3584, 3584, 4)][32] = W(32, 64, 128, 4, 2, **kp)
    tp._TABLE[(37888, 3584, 4)][32] = W(32, 64, 128, 4, 2, **kp)
    tp._TABLE[(3584, 18944, 4)][32] = W(32, 128, 128, 4, 3, **kp)
    if variant == "awq-before-pairs":     # and 33..64 rows of o and down as before session 28
        tp._TABLE[(3584, 3584, 4)][64] = tp._DQ
        tp._TABLE[(3584, 18944, 4)][64] = W(64, 128, 64, 4, 3, compact=True)
elif variant == "awq-clamped":
    from pagedllm.kernels.quant import triton_packed as tp
    make = tp._make_plan

    def clamped(*args, **kwargs):
        plan = make(*args, **kwargs)
        if "EVEN_N" in plan.constexprs and plan.kind in ("decode", "cublas", "gemm"):
            plan.constexprs["EVEN_N"] = False
        return plan
    tp._make_plan = clamped
elif variant == "awq-table" or (variant == "wide-x-masked" and os.environ.get("ROUTE_TABLE")):
    # ROUTE_TABLE: awq_fused_probe.py --save-table's JSON; its row buckets replace _TABLE's (session 28)
    import json
    from pagedllm.kernels.quant import triton_packed as tp
    from pagedllm.kernels.quant.triton_packed_wide import PackedWideConfig as W
    with open(os.environ["ROUTE_TABLE"]) as f:
        for shape, per_m in json.load(f).items():
            n, k = map(int, shape.split(","))
            for bucket, cfg in per_m.items():
                if bucket in os.environ.get("ROUTE_BUCKETS", "32,64,128,256").split(","):
                    tp._TABLE[(n, k, 4)][int(bucket)] = tp._DQ if cfg == "scratch" else W(*cfg)
            print(f"route_ab: {shape} -> {tp._TABLE[(n, k, 4)]}", file=sys.stderr)
elif variant == "untabled-wide":
    from pagedllm.kernels.quant import triton_packed as tp
    tp.UNTABLED_WIDE = True
elif variant == "wide-decode":
    from pagedllm.kernels.quant import triton_packed as tp
    tp.WIDE_DECODE = True
    if os.environ.get("ROUTE_XGATHER") == "1":
        tp._WIDE_DECODE_CFG = tp._WIDE_DECODE_CFG._replace(xgather=True)
    if os.environ.get("ROUTE_WIDE_STAGES"):
        tp._WIDE_DECODE_CFG = tp._WIDE_DECODE_CFG._replace(num_stages=int(os.environ["ROUTE_WIDE_STAGES"]))
elif variant == "pairs-stages":
    # every pairs config of the 7B table at 17..256 rows (and UNTABLED_WIDE's) with ROUTE_PAIRS_STAGES pipeline
    # stages (default 3; committed: 2), as WIDE_DECODE's 16-row config gained from 3 (session 32)
    from pagedllm.kernels.quant import triton_packed as tp
    stages = int(os.environ.get("ROUTE_PAIRS_STAGES", "3"))
    for table in list(tp._TABLE.values()) + [tp._UNTABLED]:
        for bucket, cfg in table.items():
            if getattr(cfg, "pairs", False) and bucket > 16:
                table[bucket] = cfg._replace(num_stages=stages)
    print(f"route_ab: pairs configs on {stages} stages: {tp._TABLE}", file=sys.stderr)
elif variant == "decode-kernel":
    from pagedllm.kernels.quant import triton_packed as tp
    tp.WIDE_DECODE = False
elif variant == "awq-slabs":
    from pagedllm.kernels.quant import triton_packed as tp
    tp.SCRATCH_SLAB_BYTES = int(float(os.environ.get("SLAB_MB", "16")) * (1 << 20))
elif variant == "awq-session28":
    from pagedllm.kernels.quant import triton_packed as tp
    from pagedllm.kernels.quant import triton_packed_wide as tw
    tw.MASK_PARTIAL_ROWS = False
    tp._TABLE[(37888, 3584, 4)].update({128: tw.PackedWideConfig(128, 128, 64, 8, 3, compact=True), 256: tp._DQ})
    tp._TABLE[(3584, 18944, 4)][128] = tp._DQ
elif variant not in ("base", "wide-x-masked"):
    raise SystemExit(f"unknown variant {variant}")
if variant == "wide-x-masked":
    # x rows past M masked in partial row tiles instead of re-reading row M - 1 (session 28; the wide kernel's
    # default since session 29)
    from pagedllm.kernels.quant import triton_packed as tp
    from pagedllm.kernels.quant import triton_packed_wide as tw
    tw.MASK_PARTIAL_ROWS = True
    tp.DECODE_MASK_PARTIAL_ROWS = True
runpy.run_path(os.path.join(os.environ.get("PAGEDLLM_BENCH_DIR", ".bench/sb"), "offline_workload.py"),
               run_name="__main__")
