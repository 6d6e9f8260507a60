#!/bin/bash
# Session 17 (NVIDIA H200 lent, 1,800 device seconds): session 16's queued work in the order that matters most.
# Carry [".whl", ".bench"]. Each PART's timeouts add up to under 600 s.
# PART=1: the GPU tests session 16 wrote and never ran (skinny-GEMM L2 prefetch, int4 GEMV l2_ahead, sleep mode,
#   the routing test) then 7B bs1 + latency, route_ab.py base / l2-prefetch-o / l2-prefetch-all (one round).
# PART=4: as benchmarks/gpu_session16/next.sh PART=4.
# PART=5: the second 7B round and 1.5B bs1 base / o / all.
. benchmarks/gpu_session9/common.sh
exec > >(tee $OUT/run17_${PART:-1}.txt) 2>&1
AB="python3 benchmarks/kernels/route_ab.py"
if [ "${PART:-1}" = 1 ]; then
PYTHONPATH=$R timeout 170 python3 -m pytest -q -p no:cacheprovider -n 8 -rfs --tb=short tests/gpu/test_triton_gemv.py \
  tests/gpu/test_sleep_mode_gpu.py tests/gpu/test_quant_packed_kernels.py tests/gpu/test_engine_gpu.py tests/gpu/test_lora_gpu.py tests/gpu/test_spec_decode_gpu.py \
  -k "gemv or prefetch or sleep or routing or lora or spec_decode" 2>&1 \
  | grep -vE "^\s*$" | cut -c1-300 | tail -60
for v in ${V7:-base l2-prefetch-o l2-prefetch-all}; do
  PYTHONPATH=$R timeout 85 $AB $v qwen2.5-7b bs1_128_256 latency_8x1024x1024 2>&1 | offline_summary "7b $v r1"
done
fi
if [ "${PART:-1}" = 4 ]; then
PART=4 bash benchmarks/gpu_session16/next.sh
fi
if [ "${PART:-1}" = 5 ]; then
for v in ${V7:-base l2-prefetch-o l2-prefetch-all}; do
  PYTHONPATH=$R timeout 85 $AB $v qwen2.5-7b bs1_128_256 latency_8x1024x1024 2>&1 | offline_summary "7b $v r2"
done
for v in ${V15:-base l2-prefetch-o l2-prefetch-all}; do
  PYTHONPATH=$R timeout 45 $AB $v qwen2.5-1.5b bs1_128_256 2>&1 | offline_summary "1.5b $v"
done
fi
