#!/bin/bash
# Session 10, issue 18: the skinny GEMM for 2 <= M <= 16 on the shapes where it beat cuBLAS (triton_gemv.preferred),
# A/B against M = 1 only (PAGEDLLM_SKINNY_MAX_M=1), offline 7B latency_8x1024x1024 (decode at M = 8) and
# bs1_128_256 + sharegpt_like_1000 (its long tail runs at M < 16), alternating. GPU tests of the kernel first.
# Prediction: latency 5.04 -> ~4.75 s (-0.28 ms on each of 1,023 steps at M = 8); bs1 unchanged; ShareGPT +1-2%.
# Carry [".whl", ".bench"] (~6 min).
. benchmarks/gpu_session9/common.sh
PYTHONPATH=$R python3 -m pytest -q -p no:cacheprovider -n 4 tests/gpu/test_triton_gemv.py tests/gpu/test_pdl.py 2>&1 | tail -2
for v in 16 1 16 1; do
  PAGEDLLM_SKINNY_MAX_M=$v PYTHONPATH=$R python3 .bench/sb/offline_workload.py pagedllm qwen2.5-7b latency_8x1024x1024 ${WL2:-sharegpt_like_1000} 2>&1 | grep '^{' | sed "s/^/max_m=$v /" | cut -c1-330
done
