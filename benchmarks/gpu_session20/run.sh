#!/bin/bash
# Session 20. Carry [".whl", ".bench"]. PART=1 is benchmarks/gpu_session19/next.sh PART=1 (the int4 GEMV `stages`
# candidates swept on this GPU, AWQ 7B bs1 with that sweep's table and with session 7's table against the
# committed one; predictions there). PART=2 (~8.5 min):
#   * e665c44 (skinny_linear_silu back from the tuple form; same kernel launch) had run only under the Triton
#     interpreter: its GPU tests and test_engine_gpu.py.
#   * Issue 13's other rows on this GPU: AWQ 7B ShareGPT (prediction ~8,900: M >= 64 steps unchanged) and FP8 bs1.
#   * Session 18's two untimed batch-1 levers on 1.5B bs1 (issue 18 row, 775-801 against 1,040), alternating with
#     the base in one call: EARLY (PAGEDLLM_PDL_EARLY_TRIGGER=1; prediction +1-3% if the dependents' pre-wait loads
#     are on the critical path) and ONE (route_ab.py onetile-qkv-o; prediction +2-4%).
. benchmarks/gpu_session9/common.sh
exec > >(tee $OUT/run20_${PART:-1}.txt) 2>&1
nvidia-smi --query-gpu=name --format=csv,noheader
if [ "${PART:-1}" = 1 ]; then
PART=1 bash benchmarks/gpu_session19/next.sh
fi
if [ "${PART:-1}" = 2 ]; then
PYTHONPATH=$R timeout 150 python3 -m pytest -q -p no:cacheprovider -n 8 -rfs --tb=short \
  tests/gpu/test_triton_gemv.py tests/gpu/test_engine_gpu.py -k "gated or silu or skinny or engine" 2>&1 \
  | grep -vE "^\s*$|Warning|warner" | cut -c1-300 | tail -12
AWQ='{"quantization_config": {"quant_method": "awq", "bits": 4, "group_size": 128, "zero_point": true, "version": "gemm"}}'
ANCHOR_CFG="$AWQ" PYTHONPATH=$R timeout 100 python3 .bench/sb/offline_workload.py pagedllm qwen2.5-7b sharegpt_like_1000 2>&1 | offline_summary "awq"
ANCHOR_KW='{"quantization": "fp8"}' PYTHONPATH=$R timeout 70 python3 .bench/sb/offline_workload.py pagedllm qwen2.5-7b bs1_128_256 2>&1 | offline_summary "fp8"
AB="python3 benchmarks/kernels/route_ab.py"
for r in 1 2; do
  PYTHONPATH=$R timeout 40 $AB base qwen2.5-1.5b bs1_128_256 2>&1 | offline_summary "1.5b base r$r"
  PAGEDLLM_PDL_EARLY_TRIGGER=1 PYTHONPATH=$R timeout 40 $AB base qwen2.5-1.5b bs1_128_256 2>&1 | offline_summary "1.5b early r$r"
  PYTHONPATH=$R timeout 40 $AB onetile-qkv-o qwen2.5-1.5b bs1_128_256 2>&1 | offline_summary "1.5b onetile-qkv-o r$r"
done
fi
if [ "${PART:-1}" = 3 ]; then
# helper-30's kperm + w_as_a candidates of the 17..256-row int4 GEMM, prepared in session 12, never timed (static
# model: gate_up ~45-62 µs at 24-48 rows, ~75-85 at 128, against 85-96 / 140-161 for the routed configs; bf16 ~70).
PYTHONPATH=$R timeout 260 python3 benchmarks/kernels/awq_fused_probe.py --deadline 200 --ms 24,48,128 --shapes gate_up,down,o
fi
if [ "${PART:-1}" = 4 ]; then
# EARLY (PAGEDLLM_PDL_EARLY_TRIGGER=1) won 1.5B bs1 +2.3% in PART=2; before it becomes the default: 7B bs1, latency
# and ShareGPT (prediction: bs1 +0.5-1.5%, latency -0.5-1%, ShareGPT within the spread). awq-kperm: the probe's
# 17..32-row picks routed (prediction: AWQ ShareGPT +0-1%, few of its steps have 17..64 rows).
AB="python3 benchmarks/kernels/route_ab.py"
AWQ='{"quantization_config": {"quant_method": "awq", "bits": 4, "group_size": 128, "zero_point": true, "version": "gemm"}}'
PYTHONPATH=$R timeout 85 $AB base qwen2.5-7b bs1_128_256 latency_8x1024x1024 2>&1 | offline_summary "7b base"
PAGEDLLM_PDL_EARLY_TRIGGER=1 PYTHONPATH=$R timeout 85 $AB base qwen2.5-7b bs1_128_256 latency_8x1024x1024 2>&1 | offline_summary "7b early"
PAGEDLLM_PDL_EARLY_TRIGGER=1 PYTHONPATH=$R timeout 70 $AB base qwen2.5-7b sharegpt_like_1000 2>&1 | offline_summary "7b early"
PYTHONPATH=$R timeout 70 $AB base qwen2.5-7b sharegpt_like_1000 2>&1 | offline_summary "7b base"
ANCHOR_CFG="$AWQ" PYTHONPATH=$R timeout 95 $AB awq-kperm qwen2.5-7b sharegpt_like_1000 2>&1 | offline_summary "awq kperm"
ANCHOR_CFG="$AWQ" PYTHONPATH=$R timeout 95 $AB base qwen2.5-7b sharegpt_like_1000 2>&1 | offline_summary "awq base"
fi
# The calls between and after the parts, as run (inline in session 20; here for the record):
if [ "${PART:-1}" = probe2 ]; then
PYTHONPATH=$R timeout 200 python3 benchmarks/kernels/awq_fused_probe.py --deadline 150 --ms 32,24,64,96 --shapes qkv,gate_up,down,o 2>&1 | head -20
fi
if [ "${PART:-1}" = 5 ]; then   # PART=4's second round, order swapped; AWQ bs1 with EARLY
AB="python3 benchmarks/kernels/route_ab.py"
AWQ='{"quantization_config": {"quant_method": "awq", "bits": 4, "group_size": 128, "zero_point": true, "version": "gemm"}}'
PYTHONPATH=$R timeout 70 $AB base qwen2.5-7b sharegpt_like_1000 2>&1 | offline_summary "7b base r2"
PAGEDLLM_PDL_EARLY_TRIGGER=1 PYTHONPATH=$R timeout 70 $AB base qwen2.5-7b sharegpt_like_1000 2>&1 | offline_summary "7b early r2"
ANCHOR_CFG="$AWQ" PYTHONPATH=$R timeout 95 $AB base qwen2.5-7b sharegpt_like_1000 2>&1 | offline_summary "awq base r2"
ANCHOR_CFG="$AWQ" PYTHONPATH=$R timeout 95 $AB awq-kperm qwen2.5-7b sharegpt_like_1000 2>&1 | offline_summary "awq kperm r2"
ANCHOR_CFG="$AWQ" PYTHONPATH=$R timeout 50 $AB base qwen2.5-7b bs1_128_256 2>&1 | offline_summary "awq bs1 base"
PAGEDLLM_PDL_EARLY_TRIGGER=1 ANCHOR_CFG="$AWQ" PYTHONPATH=$R timeout 50 $AB base qwen2.5-7b bs1_128_256 2>&1 | offline_summary "awq bs1 early"
fi
if [ "${PART:-1}" = 6 ]; then   # the new defaults (EARLY on, H200 M1_TABLE, kperm routing) as committed
PYTHONPATH=$R timeout 150 python3 -m pytest -q -p no:cacheprovider -n 8 -rfs --tb=short tests/gpu/test_pdl.py \
  tests/gpu/test_quant_awq_engine_gpu.py tests/gpu/test_engine_gpu.py tests/gpu/test_quant_packed_kernels.py \
  -k "pdl or awq or engine or wide or routed or table" 2>&1 | grep -vE "^\s*$|Warning|warner" | cut -c1-300 | tail -12
AWQ='{"quantization_config": {"quant_method": "awq", "bits": 4, "group_size": 128, "zero_point": true, "version": "gemm"}}'
PYTHONPATH=$R timeout 40 python3 .bench/sb/offline_workload.py pagedllm qwen2.5-1.5b bs1_128_256 2>&1 | offline_summary "1.5b new-defaults"
ANCHOR_CFG="$AWQ" PYTHONPATH=$R timeout 50 python3 .bench/sb/offline_workload.py pagedllm qwen2.5-7b bs1_128_256 2>&1 | offline_summary "awq new-defaults"
ANCHOR_CFG="$AWQ" PYTHONPATH=$R timeout 95 python3 .bench/sb/offline_workload.py pagedllm qwen2.5-7b sharegpt_like_1000 2>&1 | offline_summary "awq new-defaults"
fi
# Cold start: SWITCH=PAGEDLLM_PDL_EARLY_TRIGGER VALUES="1 1" bash benchmarks/gpu_session9/s9e.sh
# PART=7 as run at 27842f7 (one CUDA-graph warm-up a size, PAGEDLLM_CUDA_GRAPH_WARMUPS; reverted in be3f090 after
# this measurement: no gain), on an H100:
#   tests/gpu/test_engine_gpu.py -k "bf16_triton_greedy or piecewise" (-n 4), then
#   SWITCH=PAGEDLLM_CUDA_GRAPH_WARMUPS VALUES="1" bash benchmarks/gpu_session9/s9e.sh; then VALUES="2 1" in the next call.
