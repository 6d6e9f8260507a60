#!/bin/bash
# Prepared in session 16 without a GPU (none was lent), NOT RUN yet. Carry [".whl", ".bench"]. NVIDIA H200 or H100;
# compare only within one machine session.
# Each PART's timeouts add up to under the device's 600 s a call.
# PART=1 (~8 min): the whole tests/gpu (session 15's routing-test fix and session 16's L2-prefetch tests have not run
#   on a GPU), then session 15's queued 1.5B A/B: PAGEDLLM_DECODE_ROPE_FUSED 2 (default) / 0, bs1 and latency.
#   Prediction: 1.5B bs1 ~725 -> ~735-745 with the fusion.
# PART=2 (~6 min): the skinny GEMM's L2 prefetch before the PDL wait (route_ab.py variants), 7B bs1 + latency,
#   base / l2-prefetch-o / l2-prefetch-all, two rounds alternating. Prediction (docs/perf.md, session 16): o_proj
#   reads its 25.7 MB from L2 after the decode attention instead of HBM, ~3-5 µs a layer: 7B bs1 259 -> ~265-267,
#   latency 4.495 -> ~4.35-4.40 s; "all" no better than "o" (the other projections' predecessors are ~1 µs kernels).
# PART=3 (~7 min): 1.5B bs1 base / l2-prefetch-o / l2-prefetch-all (prediction: o ~725 -> ~750; all ~780-800, as
#   1.5B's qkv (6.3 MB) and o (4.7 MB) fit in what a 1-2 µs predecessor window can prefetch), and 7B ShareGPT base /
#   l2-prefetch-o (prediction: +0.5-1%: the steps of <= 16 requests, ~1/3 of the run, route o_proj to the
#   skinny GEMM; above 16 rows it is cuBLAS).
. benchmarks/gpu_session9/common.sh
exec > >(tee $OUT/next16_${PART:-1}.txt) 2>&1
AB="python3 benchmarks/kernels/route_ab.py"
if [ "${PART:-1}" = 1 ]; then
PYTHONPATH=$R timeout 300 python3 -m pytest -q -p no:cacheprovider -n 8 -rfs --tb=line tests/gpu 2>&1 | grep -E "^FAILED|^SKIPPED|passed|failed|rror" | cut -c1-240 | head -40
for v in 2 0 2 0; do
  PAGEDLLM_DECODE_ROPE_FUSED=$v PYTHONPATH=$R timeout 70 python3 .bench/sb/offline_workload.py pagedllm qwen2.5-1.5b bs1_128_256 latency_8x1024x1024 2>&1 | offline_summary "1.5b fused $v"
done
fi
if [ "${PART:-1}" = 2 ]; then
for round in 1 2; do
  for v in base l2-prefetch-o l2-prefetch-all; do
    PYTHONPATH=$R timeout 90 $AB $v qwen2.5-7b bs1_128_256 latency_8x1024x1024 2>&1 | offline_summary "7b $v r$round"
  done
done
fi
if [ "${PART:-1}" = 3 ]; then
for v in base l2-prefetch-o l2-prefetch-all base l2-prefetch-o l2-prefetch-all; do
  PYTHONPATH=$R timeout 50 $AB $v qwen2.5-1.5b bs1_128_256 2>&1 | offline_summary "1.5b $v"
done
for v in base l2-prefetch-o; do
  PYTHONPATH=$R timeout 100 $AB $v qwen2.5-7b sharegpt_like_1000 2>&1 | offline_summary "7b $v"
done
fi
# PART=4 (~8 min): the int4 batch-1 GEMV with the L2 prefetch ahead (PackedGemvConfig.l2_ahead, session 16): its GPU
#   tests, the M = 1 sweep (every GEMV_CANDIDATES config on the four 7B shapes, the new ones last), then AWQ 7B bs1
#   with the sweep's table against the committed one, alternating. Prediction: gate_up 36.4 -> ~26-30 µs, down 23.6
#   -> ~18-20 (2.0 / 1.5 TB/s -> ~2.5-2.8), AWQ bs1 355 -> ~400-430 tok/s (target 500).
if [ "${PART:-1}" = 4 ]; then
AWQ='{"quantization_config": {"quant_method": "awq", "bits": 4, "group_size": 128, "zero_point": true, "version": "gemm"}}'
PYTHONPATH=$R timeout 120 python3 -m pytest -q -p no:cacheprovider -n 8 --tb=line tests/gpu/test_quant_packed_kernels.py -k "gemv" 2>&1 | tail -3
PYTHONPATH=$R timeout 220 python3 benchmarks/quant_kernels.py --gemv --deadline 180 --save-m1-table $OUT/m1_table.py 2>&1 | tail -60
cp pagedllm/kernels/quant/triton_packed.py /tmp/triton_packed_committed.py
for round in 1 2; do
  python3 benchmarks/quant_kernels.py --apply-m1-table $OUT/m1_table.py
  ANCHOR_CFG="$AWQ" PYTHONPATH=$R timeout 60 python3 .bench/sb/offline_workload.py pagedllm qwen2.5-7b bs1_128_256 2>&1 | offline_summary "awq swept r$round"
  cp /tmp/triton_packed_committed.py pagedllm/kernels/quant/triton_packed.py
  ANCHOR_CFG="$AWQ" PYTHONPATH=$R timeout 60 python3 .bench/sb/offline_workload.py pagedllm qwen2.5-7b bs1_128_256 2>&1 | offline_summary "awq committed r$round"
done
fi
