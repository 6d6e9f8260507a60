#!/bin/bash
# Session 11, issue 13 (AWQ sharegpt 0.80x vLLM), second try of 04a9e49's wide int4 decode path: x permuted per call
# to [M, PACK, KP] so each position's slice is contiguous (vector loads instead of a gather with a stride of one word
# per value, which made the loads grow with the rows). Probe per shape at M = 32..128, then 7B AWQ
# sharegpt_like_1000 with the wide path (default, configs fixed before the probe) vs without
# (PAGEDLLM_SKINNY_MAX_M=16), then the packed-kernel GPU tests.
# Prediction: wide at 64 rows qkv ~15, o ~14, gate_up ~90, down ~75 us (scratch 24 / 19 / 115 / 104); AWQ
# sharegpt 8,589 -> ~9,300 tok/s.
# Carry [".whl", ".bench"] (~6 min).
. benchmarks/gpu_session9/common.sh
timeout 130 python3 benchmarks/kernels/awq_wide_probe.py --ms 32,64,128 --deadline 110 2>&1 | grep -v Warning | tail -12
AWQ='{"quantization_config": {"quant_method": "awq", "bits": 4, "group_size": 128, "zero_point": true, "version": "gemm"}}'
for v in 128 16; do
  ANCHOR_CFG="$AWQ" PAGEDLLM_SKINNY_MAX_M=$v PYTHONPATH=$R timeout 100 python3 .bench/sb/offline_workload.py pagedllm qwen2.5-7b sharegpt_like_1000 2>&1 | grep '^{' | sed "s/^/awq max_m=$v /" | cut -c1-300
done
PYTHONPATH=$R timeout 100 python3 -m pytest -q -p no:cacheprovider -n 8 -rf --tb=line tests/gpu/test_quant_packed_kernels.py 2>&1 | grep -E "^FAILED|passed|failed|Error" | cut -c1-220 | head -20
