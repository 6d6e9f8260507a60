#!/bin/bash
# Prepared in session 15 after its device time was spent, NOT RUN yet. Carry [".whl", ".bench"].
# PART=1 (~7 min): the whole tests/gpu on the new defaults (the fused rotary decode on up to 16 requests, 7B qkv on
#   the skinny GEMM; session 15's verify run had one failure, the routing test, since updated), then 1.5B bs1 and
#   latency with PAGEDLLM_DECODE_ROPE_FUSED 2 (default) / 0, alternating. Prediction: 1.5B bs1 ~725 -> ~735-745 (the
#   rotary kernel's launch and its boundary gone from each of 28 layers, ~1-2 µs each of a ~1.38 ms token).
# PART=2 (~4 min): session 12's kperm probe (next_rope_ab.sh PART=3).
. benchmarks/gpu_session9/common.sh
exec > >(tee $OUT/next15.txt) 2>&1
if [ "${PART:-1}" = 1 ]; then
PYTHONPATH=$R timeout 330 python3 -m pytest -q -p no:cacheprovider -n 8 -rfs --tb=line tests/gpu 2>&1 | grep -E "^FAILED|^SKIPPED|passed|failed|rror" | cut -c1-240 | head -40
for v in 2 0 2 0; do
  PAGEDLLM_DECODE_ROPE_FUSED=$v PYTHONPATH=$R timeout 80 python3 .bench/sb/offline_workload.py pagedllm qwen2.5-1.5b bs1_128_256 latency_8x1024x1024 2>&1 | offline_summary "1.5b fused $v"
done
fi
if [ "${PART:-1}" = 2 ]; then
PYTHONPATH=$R timeout 260 python3 benchmarks/kernels/awq_fused_probe.py --deadline 200 --ms 24,48,128 --shapes gate_up,down,o
fi
