#!/bin/bash
# Session 11, issues 13 + 18 after s11a/s11b: FP8 linears send 2..64 rows to the skinny GEMM's W8A8 path (its own
# config table), bf16 x rows past M masked. GPU tests of the kernels first, then 7B offline: FP8 latency (predicted
# 3.61 -> ~3.5 s with the W8A8 configs), FP8 sharegpt_like_1000 (steps of <= 64 rows faster: +1-3%), FP8 bs1
# (unchanged path, ~370), bf16 latency (4.61-4.65 s, unchanged within noise); then the probe at M = 32..128.
# Carry [".whl", ".bench"] (~9 min).
. benchmarks/gpu_session9/common.sh
PYTHONPATH=$R timeout 200 python3 -m pytest -q -p no:cacheprovider -n 6 tests/gpu/test_quant_fp8_kernels.py tests/gpu/test_triton_gemv.py tests/gpu/test_pdl.py 2>&1 | tail -4
ANCHOR_KW='{"quantization": "fp8"}' PYTHONPATH=$R timeout 200 python3 .bench/sb/offline_workload.py pagedllm qwen2.5-7b latency_8x1024x1024 sharegpt_like_1000 bs1_128_256 2>&1 | grep '^{' | sed "s/^/fp8 /" | cut -c1-300
PYTHONPATH=$R timeout 100 python3 .bench/sb/offline_workload.py pagedllm qwen2.5-7b latency_8x1024x1024 2>&1 | grep '^{' | sed "s/^/bf16 /" | cut -c1-300
timeout 150 python3 benchmarks/kernels/skinny_fp8_probe.py --part bigm --big-ms 32,64,128 --no-bf16 --deadline 130 --out $OUT/probe3.json 2>&1 | tee $OUT/probe3.log | grep -v Warning | tail -14
