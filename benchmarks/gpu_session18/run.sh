#!/bin/bash
# Session 18 (NVIDIA H200 lent, 1,800 device seconds). Carry [".whl", ".bench"]; each PART's timeouts add up to
# under the 600 s a call.
# PART=1: the GPU tests of PAGEDLLM_DECODE_ROPE_FUSED=3 (the step's new key / value join the decode softmax from
#   registers, so every split's first tile, the writer's too, is read before the PDL wait), test_engine_gpu.py and
#   the routing-table test (session 15's fix, never run); then 7B bs1 + latency with fused 2 / 3, 1.5B bs1 2 / 3 and
#   route_ab.py onetile-qkv / onetile-qkv-o (batch-1 qkv / o read their whole K in one tile before the PDL wait;
#   prediction: the 2 post-wait HBM round trips of 1.5B's qkv / o go, ~1 us each a layer: 725 -> ~750 / ~770).
#   Prediction: the writer's chain after the wait loses ~3 dependent round trips (block table, K / V reload,
#   barrier) of ~0.6-1 us a layer: 7B bs1 259 -> ~262-264, latency 4.50 -> ~4.45 s, 1.5B bs1 725 -> ~750-760.
# PART=2: session 16's int4 GEMV l2_ahead (gpu_session16/next.sh PART=4: tests, the M = 1 sweep, AWQ bs1 swept vs
#   committed).
# PART=3: the second fused 2 / 3 round (7B bs1 + latency, 1.5B bs1) and 7B ShareGPT with each (3 touches decode
#   steps of up to 16 requests only).
. benchmarks/gpu_session9/common.sh
exec > >(tee $OUT/run18_${PART:-1}.txt) 2>&1
OW="python3 .bench/sb/offline_workload.py pagedllm"
if [ "${PART:-1}" = 1 ]; then
PYTHONPATH=$R timeout 150 python3 -m pytest -q -p no:cacheprovider -n 8 -rfs --tb=short \
  tests/gpu/test_triton_attention.py tests/gpu/test_attention_backends_gpu.py tests/gpu/test_engine_gpu.py tests/gpu/test_triton_gemv.py \
  -k "decode_rope or new_key or fused_rope or routing or engine" 2>&1 | grep -vE "^\s*$" | cut -c1-300 | tail -40
for f in 2 3; do
  PAGEDLLM_DECODE_ROPE_FUSED=$f PYTHONPATH=$R timeout 85 $OW qwen2.5-7b bs1_128_256 latency_8x1024x1024 2>&1 \
    | offline_summary "7b fused $f"
done
for f in 2 3; do
  PAGEDLLM_DECODE_ROPE_FUSED=$f PYTHONPATH=$R timeout 45 $OW qwen2.5-1.5b bs1_128_256 2>&1 | offline_summary "1.5b fused $f"
done
for v in onetile-qkv onetile-qkv-o; do
  PYTHONPATH=$R timeout 45 python3 benchmarks/kernels/route_ab.py $v qwen2.5-1.5b bs1_128_256 2>&1 | offline_summary "1.5b $v"
done
fi
if [ "${PART:-1}" = 2 ]; then
PART=4 bash benchmarks/gpu_session16/next.sh
fi
if [ "${PART:-1}" = 3 ]; then
for f in 3 2; do
  PAGEDLLM_DECODE_ROPE_FUSED=$f PYTHONPATH=$R timeout 110 $OW qwen2.5-7b bs1_128_256 latency_8x1024x1024 \
    sharegpt_like_1000 2>&1 | offline_summary "7b fused $f r2"
done
for f in 3 2 3 2; do
  PAGEDLLM_DECODE_ROPE_FUSED=$f PYTHONPATH=$R timeout 45 $OW qwen2.5-1.5b bs1_128_256 2>&1 | offline_summary "1.5b fused $f r2"
done
fi
