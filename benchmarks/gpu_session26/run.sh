#!/bin/bash
# Session 26 (carry [".whl", ".bench"]; .whl holds opentelemetry-api, which fastapi 0.165 imports).
# PART=1: the LoRA GPU tests (CUDA graphs capture the adapters; Triton decode deltas), then LoRA with the masked torch
# form vs the Triton kernels vs no LoRA, 1.5B and 7B (lora_graphs.py; the eager figures ran in the session's
# second call).
. benchmarks/gpu_session9/common.sh
exec > >(tee $OUT/run26_${PART:-1}.txt) 2>&1
nvidia-smi --query-gpu=name --format=csv,noheader

# gpu_tests LOG WORKERS TIMEOUT FILES...: one pytest run, its full log in $OUT/LOG, the summary and failures printed.
gpu_tests() {
  local log=$1 workers=$2 limit=$3; shift 3
  PYTHONPATH=$R timeout $limit python3 -m pytest -q -p no:cacheprovider -n $workers -rf --tb=short "$@" \
    > $OUT/$log 2>&1
  tail -1 $OUT/$log; grep -E "^FAILED|^E " $OUT/$log | head -20
}
# lora_bench ENGINES TIMEOUT MODELS...: lora_graphs.py's JSON lines for each model (TRITON_MAX passes through).
lora_bench() {
  local engines=$1 limit=$2; shift 2
  for m in "$@"; do
    ENGINES="$engines" PYTHONPATH=$R:.bench/sb timeout $limit python3 benchmarks/gpu_session26/lora_graphs.py $m \
      2>&1 | grep -E "^\{|Error"
  done
}
LORA_TESTS="tests/gpu/test_lora_gpu.py tests/gpu/test_triton_lora.py"

if [ "${PART:-1}" = 1 ]; then
gpu_tests tests_26.log 4 200 $LORA_TESTS
lora_bench "lora graphs torch,lora graphs,no lora graphs" 240 qwen2.5-1.5b qwen2.5-7b
fi
if [ "${PART:-1}" = 2 ]; then
# Where the 64-request LoRA run loses against the base model: the prompts' steps alone ("64 prefill"), and the Triton
# deltas for every piecewise-graph step (TRITON_MAX=512) or every step (8192) against the default 64.
for tm in 64 512 8192; do
  TRITON_MAX=$tm lora_bench "lora graphs" 150 qwen2.5-1.5b
done
lora_bench "no lora graphs" 150 qwen2.5-1.5b
fi
if [ "${PART:-1}" = 3 ]; then
# The tensor-core LoRA pair for 17..64-token steps: the kernel + LoRA GPU tests, then LoRA vs no LoRA, 1.5B and 7B.
gpu_tests tests_26_3.log 4 200 $LORA_TESTS
lora_bench "lora graphs,no lora graphs" 200 qwen2.5-1.5b qwen2.5-7b
fi
if [ "${PART:-1}" = 4 ]; then
# cudagraph_specialize_lora: the LoRA tests and the engine / MoE / spec-decode GPU tests on the final tree, then
# base-model requests on a LoRA engine with both graph variants (default) against one variant and no LoRA.
gpu_tests tests_26_4.log 8 220 $LORA_TESTS tests/gpu/test_engine_gpu.py tests/gpu/test_spec_decode_gpu.py \
  tests/models/test_moe.py tests/gpu/test_triton_moe.py
lora_bench "lora graphs,lora graphs one variant,no lora graphs" 150 qwen2.5-1.5b
fi
