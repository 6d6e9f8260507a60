#!/bin/bash
# Prepared in session 15 after its device time was spent, NOT RUN yet. Carry [".whl", ".bench"].
# PART=1 moved to benchmarks/gpu_session16/next.sh PART=1 (unchanged there): the whole tests/gpu on the new defaults (the fused rotary decode on up to 16 requests, 7B qkv on
#   the skinny GEMM; session 15's verify run had one failure, the routing test, since updated), then 1.5B bs1 and
#   latency with PAGEDLLM_DECODE_ROPE_FUSED 2 (default) / 0, alternating. Prediction: 1.5B bs1 ~725 -> ~735-745 (the
#   rotary kernel's launch and its boundary gone from each of 28 layers, ~1-2 µs each of a ~1.38 ms token).
# PART=2 (~4 min): session 12's kperm probe (next_rope_ab.sh PART=3).
. benchmarks/gpu_session9/common.sh
exec > >(tee $OUT/next15.txt) 2>&1
if [ "${PART:-1}" = 2 ]; then
PYTHONPATH=$R timeout 260 python3 benchmarks/kernels/awq_fused_probe.py --deadline 200 --ms 24,48,128 --shapes gate_up,down,o
fi
