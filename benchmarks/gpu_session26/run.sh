#!/bin/bash
# Session 26 (carry [".whl", ".bench"]; .whl holds opentelemetry-api, which fastapi 0.165 imports).
# PART=1: the LoRA GPU tests (CUDA graphs capture the adapters; Triton decode deltas), then LoRA with the masked torch
# form vs the Triton kernels vs no LoRA, 1.5B and 7B (lora_graphs.py; the eager figures ran in the session's
# second call).
. benchmarks/gpu_session9/common.sh
exec > >(tee $OUT/run26_${PART:-1}.txt) 2>&1
nvidia-smi --query-gpu=name --format=csv,noheader
if [ "${PART:-1}" = 1 ]; then
PYTHONPATH=$R timeout 200 python3 -m pytest -q -p no:cacheprovider -n 4 -rf --tb=short tests/gpu/test_lora_gpu.py \
  tests/gpu/test_triton_lora.py > $OUT/tests_26.log 2>&1
tail -1 $OUT/tests_26.log; grep -E "^FAILED|^E " $OUT/tests_26.log | head -20
for m in qwen2.5-1.5b qwen2.5-7b; do
  ENGINES="lora graphs torch,lora graphs,no lora graphs" PYTHONPATH=$R:.bench/sb timeout 240 python3 \
    benchmarks/gpu_session26/lora_graphs.py $m 2>&1 | grep -E "^\{|Error"
done
fi
if [ "${PART:-1}" = 2 ]; then
# Where the 64-request LoRA run loses against the base model: the prompts' steps alone ("64 prefill"), and the Triton
# deltas for every piecewise-graph step (TRITON_MAX=512) or every step (8192) against the default 64.
for tm in 64 512 8192; do
  TRITON_MAX=$tm ENGINES="lora graphs" PYTHONPATH=$R:.bench/sb timeout 150 python3 \
    benchmarks/gpu_session26/lora_graphs.py qwen2.5-1.5b 2>&1 | grep -E "^\{|Error"
done
ENGINES="no lora graphs" PYTHONPATH=$R:.bench/sb timeout 150 python3 benchmarks/gpu_session26/lora_graphs.py \
  qwen2.5-1.5b 2>&1 | grep -E "^\{|Error"
fi
if [ "${PART:-1}" = 3 ]; then
# The tensor-core LoRA pair for 17..64-token steps: the kernel + LoRA GPU tests, then LoRA vs no LoRA, 1.5B and 7B.
PYTHONPATH=$R timeout 200 python3 -m pytest -q -p no:cacheprovider -n 4 -rf --tb=short tests/gpu/test_lora_gpu.py \
  tests/gpu/test_triton_lora.py > $OUT/tests_26_3.log 2>&1
tail -1 $OUT/tests_26_3.log; grep -E "^FAILED|^E " $OUT/tests_26_3.log | head -20
for m in qwen2.5-1.5b qwen2.5-7b; do
  ENGINES="lora graphs,no lora graphs" PYTHONPATH=$R:.bench/sb timeout 200 python3 \
    benchmarks/gpu_session26/lora_graphs.py $m 2>&1 | grep -E "^\{|Error"
done
fi
if [ "${PART:-1}" = 4 ]; then
# cudagraph_specialize_lora: the LoRA tests and the engine / MoE / spec-decode GPU tests on the final tree, then
# base-model requests on a LoRA engine with both graph variants (default) against one variant and no LoRA.
PYTHONPATH=$R timeout 220 python3 -m pytest -q -p no:cacheprovider -n 8 -rf --tb=short tests/gpu/test_lora_gpu.py \
  tests/gpu/test_triton_lora.py tests/gpu/test_engine_gpu.py tests/gpu/test_spec_decode_gpu.py tests/models/test_moe.py \
  tests/gpu/test_triton_moe.py > $OUT/tests_26_4.log 2>&1
tail -1 $OUT/tests_26_4.log; grep -E "^FAILED|^E " $OUT/tests_26_4.log | head -20
ENGINES="lora graphs,lora graphs one variant,no lora graphs" PYTHONPATH=$R:.bench/sb timeout 150 python3 \
  benchmarks/gpu_session26/lora_graphs.py qwen2.5-1.5b 2>&1 | grep -E "^\{|Error"
fi
