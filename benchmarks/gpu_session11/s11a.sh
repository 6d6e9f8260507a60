#!/bin/bash
# Session 11, issues 18 + 13: (1) the skinny GEMM's x rows m >= M masked vs re-read, and the fp8 variants at
# M = 2..16 (benchmarks/kernels/skinny_fp8_probe.py); (2) end to end, 7B latency_8x1024x1024 (decode at M = 8):
# bf16 with PAGEDLLM_SKINNY_X_MASKED 1 vs 0, FP8 with PAGEDLLM_FP8_SKINNY_MAX_M 16 (W8A8 skinny) vs 1 (_scaled_mm).
# Predictions: masked closes the gap of x padded to 16 rows (session 10: gate_up 65.7 vs 74.8 us at M = 2), bf16
# latency 4.64 -> ~4.5 s; W8A8 skinny at M = 8 reads half bf16's bytes: FP8 latency 5.68 -> ~4 s.
# Carry [".whl", ".bench"] (~9 min).
. benchmarks/gpu_session9/common.sh
timeout 280 python3 benchmarks/kernels/skinny_fp8_probe.py --sweep-ms 8 --deadline 230 --out $OUT/probe.json 2>&1 | grep -v Warning | tail -40
for v in 1 0; do
  PAGEDLLM_SKINNY_X_MASKED=$v PYTHONPATH=$R timeout 100 python3 .bench/sb/offline_workload.py pagedllm qwen2.5-7b latency_8x1024x1024 2>&1 | grep '^{' | sed "s/^/bf16 masked=$v /" | cut -c1-300
done
for v in 16 1; do
  ANCHOR_KW='{"quantization": "fp8"}' PAGEDLLM_FP8_SKINNY_MAX_M=$v PYTHONPATH=$R timeout 110 python3 .bench/sb/offline_workload.py pagedllm qwen2.5-7b latency_8x1024x1024 2>&1 | grep '^{' | sed "s/^/fp8 max_m=$v /" | cut -c1-300
done
