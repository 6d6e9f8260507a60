#!/bin/bash
# Session 15: the new defaults (fused rotary decode 2 up to 16 rows, 7B qkv on the skinny GEMM at 2..16 rows) against
# the old (PAGEDLLM_DECODE_ROPE_FUSED=0, route_ab.py qkv-cublas), alternating processes, after the GPU tests they touch.
# Prediction: bs1 257.7 -> ~259.2, latency 4.607 -> ~4.50 s, ShareGPT unchanged (~11,287).
. benchmarks/gpu_session9/common.sh
exec > >(tee $OUT/verify.txt) 2>&1
PYTHONPATH=$R timeout 150 python3 -m pytest -q -p no:cacheprovider -n 4 -rf --tb=line tests/gpu/test_engine_gpu.py tests/gpu/test_attention_backends_gpu.py tests/gpu/test_triton_gemv.py 2>&1 | grep -E "^FAILED|passed|failed|rror" | cut -c1-240 | head
for p in "2 base" "0 qkv-cublas" "2 base" "0 qkv-cublas"; do
  set -- $p
  PAGEDLLM_DECODE_ROPE_FUSED=$1 PYTHONPATH=$R timeout 120 python3 benchmarks/kernels/route_ab.py $2 qwen2.5-7b bs1_128_256 latency_8x1024x1024 sharegpt_like_1000 2>&1 | offline_summary "fused $1 $2"
done
