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
