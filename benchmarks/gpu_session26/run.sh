#!/bin/bash
# Session 26 (carry [".whl", ".bench"]; .whl now holds opentelemetry-api, which fastapi 0.165 imports).
# PART=1: the LoRA GPU tests (CUDA graphs now capture the adapters), the compile-ahead marker fix of session 25, then
# LoRA eager vs graphs (lora_graphs.py) and the served cold start twice.
. benchmarks/gpu_session9/common.sh
exec > >(tee $OUT/run26_${PART:-1}.txt) 2>&1
nvidia-smi --query-gpu=name --format=csv,noheader
if [ "${PART:-1}" = 1 ]; then
PYTHONPATH=$R timeout 200 python3 -m pytest -q -p no:cacheprovider -n 4 -rf --tb=short tests/gpu/test_lora_gpu.py \
  tests/gpu/test_parallel_compile.py "tests/unit/test_lora.py::test_adapter_on_the_other_llama_shaped_families" \
  > $OUT/tests_26.log 2>&1
tail -1 $OUT/tests_26.log; grep -E "^FAILED|^E " $OUT/tests_26.log | head -20
PYTHONPATH=$R:.bench/sb timeout 240 python3 benchmarks/gpu_session26/lora_graphs.py qwen2.5-1.5b 2>&1 | grep -E "^\{|Error"
SWITCH=PAGEDLLM_LOGGING_LEVEL VALUES="INFO INFO" timeout 150 bash benchmarks/gpu_session9/s9e.sh 2>&1 | grep -E "health|start-up " | cut -c1-400
fi
if [ "${PART:-1}" = 2 ]; then
PYTHONPATH=$R:.bench/sb timeout 300 python3 benchmarks/gpu_session26/lora_graphs.py qwen2.5-7b 2>&1 | grep -E "^\{|Error"
fi
