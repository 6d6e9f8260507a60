#!/bin/bash
# Session 11, issue 13 (AWQ sharegpt 0.81x vLLM): int4 g128 at 17..128 rows through the split-K decode kernel with
# one wide row tile (PackedConfig(wide=True)) instead of dequantize-into-scratch + cuBLAS. Probe per shape at
# M = 32..256 (benchmarks/kernels/awq_wide_probe.py), then 7B AWQ sharegpt_like_1000 with the wide path (default)
# vs without (PAGEDLLM_SKINNY_MAX_M=16), then the packed-kernel GPU tests.
# Prediction: the scratch path costs ~2.3x bf16 at 64 rows (gate_up ~167 us); the wide decode kernel is bound by
# the unpack (~80 us for gate_up, as at 16 rows): AWQ sharegpt 8,600 -> ~10,000 tok/s.
# Carry [".whl", ".bench"] (~7 min).
. benchmarks/gpu_session9/common.sh
timeout 200 python3 benchmarks/kernels/awq_wide_probe.py --ms 32,64,128,256 --deadline 170 2>&1 | grep -v Warning | tail -20
AWQ='{"quantization_config": {"quant_method": "awq", "bits": 4, "group_size": 128, "zero_point": true, "version": "gemm"}}'
for v in 128 16; do
  ANCHOR_CFG="$AWQ" PAGEDLLM_SKINNY_MAX_M=$v PYTHONPATH=$R timeout 120 python3 .bench/sb/offline_workload.py pagedllm qwen2.5-7b sharegpt_like_1000 2>&1 | grep '^{' | sed "s/^/awq max_m=$v /" | cut -c1-300
done
PYTHONPATH=$R timeout 150 python3 -m pytest -q -p no:cacheprovider -n 8 -rf --tb=line tests/gpu/test_quant_packed_kernels.py 2>&1 | grep -E "^FAILED|passed|failed|Error" | cut -c1-220 | head -20
