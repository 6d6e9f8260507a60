#!/bin/bash
# Queued by session 25 for the next GPU session (carry [".whl", ".bench"]; prefer an H200: issues 13 and 18's rows
# are H200 figures; compare figures only within one call / machine). Run PART=1 first.
. benchmarks/gpu_session9/common.sh
exec > >(tee $OUT/next25_${PART:-1}.txt) 2>&1
nvidia-smi --query-gpu=name --format=csv,noheader
if [ "${PART:-1}" = 1 ]; then
# The 17 engine tests that failed for memory at -n 8 in session 25 (now sized by kv_cache_memory_gb, so -n 8 is
# fine), the Phi-3 LoRA and GPTQ desc_act MoE paths on CUDA, then the cold start twice (the first warms the page
# cache; session 25: 17.7 s warm, 30.2 s on a fresh machine; target <= 15 s on an H200).
PYTHONPATH=$R timeout 240 python3 -m pytest -q -p no:cacheprovider -n 8 -rf --tb=short tests/gpu/test_engine_gpu.py \
  tests/gpu/test_gguf_kept_quantized_gpu.py tests/gpu/test_lora_gpu.py tests/gpu/test_quant_awq_engine_gpu.py \
  tests/gpu/test_quant_gptq_engine_gpu.py tests/gpu/test_spec_decode_gpu.py tests/gpu/test_tensor_parallel_gpu.py \
  tests/gpu/test_triton_moe.py tests/models/test_moe.py "tests/unit/test_lora.py::test_adapter_on_the_other_llama_shaped_families" \
  tests/unit/test_swap_preemption.py \
  > $OUT/tests_next25.log 2>&1
tail -1 $OUT/tests_next25.log; grep -E "^FAILED" $OUT/tests_next25.log | head -20
SWITCH=PAGEDLLM_LOGGING_LEVEL VALUES="INFO INFO" timeout 150 bash benchmarks/gpu_session9/s9e.sh 2>&1 | grep -E "health|start-up " | cut -c1-400
fi
if [ "${PART:-1}" = 2 ]; then
# Issue 13 (AWQ) and 18 (bf16) rows on this GPU: H200 in session 20: AWQ bs1 449.4, ShareGPT 9,150; 1.5B bs1 813.2.
PART=2 bash benchmarks/gpu_session24/run.sh
PYTHONPATH=$R timeout 150 python3 .bench/sb/offline_workload.py pagedllm qwen2.5-1.5b bs1_128_256 2>&1 | offline_summary "1.5b"
PYTHONPATH=$R timeout 200 python3 .bench/sb/offline_workload.py pagedllm qwen2.5-7b bs1_128_256 sharegpt_like_1000 latency_8x1024x1024 2>&1 | offline_summary "7b"
fi
if [ "${PART:-1}" = 3 ]; then
# kv_offloading_size: TTFT of an evicted 8k-token prompt, recomputed vs copied back from the CPU tier (7B dummy).
PYTHONPATH=$R timeout 240 python3 benchmarks/gpu_session25/offload_ab.py qwen2.5-7b 8192 2>&1 | grep "^{"
fi
