#!/bin/bash
# Session 15: candidate defaults from session 12's prepared A/B (run in session 15: fused 1 latency -1%, fused 2 +
# qkv-skinny latency -1.6%): off / fused 1 + qkv-skinny / fused 2 + qkv-skinny on 7B bs1, latency and ShareGPT
# (ShareGPT to check that large-batch decode does not lose), alternating processes.
. benchmarks/gpu_session9/common.sh
exec > >(tee $OUT/ab.txt) 2>&1
for p in "0 base" "1 qkv-skinny" "2 qkv-skinny" "0 base" "1 qkv-skinny" "2 qkv-skinny"; do
  set -- $p
  PAGEDLLM_DECODE_ROPE_FUSED=$1 PYTHONPATH=$R timeout 120 python3 benchmarks/kernels/route_ab.py $2 qwen2.5-7b bs1_128_256 latency_8x1024x1024 sharegpt_like_1000 2>&1 | offline_summary "fused $1 $2"
done
