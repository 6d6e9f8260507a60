#!/bin/bash
# Prepared in session 19 for the next GPU session (not run yet). Carry [".whl", ".bench"]. Meant for an H200 (issue
# 13's rows are H200 figures; session 19 had only H100s); compare only within one call.
# PART=1 (~9 min): the GEMV tests and the AWQ engine test; the M = 1 sweep on this GPU (saved to $OUT), with the new
#   stages=3/4 candidates (the words streamed through shared memory by Triton's pipeliner, 2-3 tiles ahead, no
#   registers held); AWQ 7B bs1 with that sweep's table, and with session 7's H200 table (34f6c9c), each against the
#   committed one (session 19's H100 sweep). Predictions (H200): committed vs session 7's: 355 -> ~415-425 tok/s
#   (the H100 gained +17-20%); stages: gate_up / down +5-15% if the words' latency, not issue, limits them now
#   (AWQ bs1 +3-8%). The 500 stays out of reach either way.
# PART=2 (~4 min): AWQ 7B ShareGPT (M = 1 steps are rare there: expect the session-12 figure, ~9,000) and FP8 bs1.
. benchmarks/gpu_session9/common.sh
exec > >(tee $OUT/next19_${PART:-1}.txt) 2>&1
nvidia-smi --query-gpu=name --format=csv,noheader
if [ "${PART:-1}" = 1 ]; then
PYTHONPATH=$R timeout 130 python3 -m pytest -q -p no:cacheprovider -n 8 -rfs --tb=short \
  tests/gpu/test_quant_packed_kernels.py tests/gpu/test_quant_awq_engine_gpu.py -k "gemv or m1 or awq" 2>&1 \
  | grep -vE "^\s*$|Warning|warner" | cut -c1-300 | tail -15
PYTHONPATH=$R timeout 180 python3 benchmarks/quant_kernels.py --gemv --deadline 150 --save-m1-table $OUT/m1_table.py \
  2>&1 | grep -E "BEST|sum of|stages" | cut -c1-200
# m1_table_ab TABLE TAG ROUNDS: TABLE against the committed one (session 19's H100 table), alternating.
m1_table_ab $OUT/m1_table.py this-gpu-sweep 1
m1_table_ab benchmarks/gpu_session19/m1_table_34f6c9c.py session7-table 1
fi
if [ "${PART:-1}" = 2 ]; then
AWQ='{"quantization_config": {"quant_method": "awq", "bits": 4, "group_size": 128, "zero_point": true, "version": "gemm"}}'
ANCHOR_CFG="$AWQ" PYTHONPATH=$R timeout 100 python3 .bench/sb/offline_workload.py pagedllm qwen2.5-7b sharegpt_like_1000 2>&1 | offline_summary "awq"
ANCHOR_KW='{"quantization": "fp8"}' PYTHONPATH=$R timeout 80 python3 .bench/sb/offline_workload.py pagedllm qwen2.5-7b bs1_128_256 2>&1 | offline_summary "fp8"
fi
