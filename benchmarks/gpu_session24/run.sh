#!/bin/bash
# Queued by session 24 for the next GPU session (carry [".whl", ".bench"]; .whl also holds bitsandbytes 0.50.2's
# wheel). Issues 13 and 18 are H200 rows: prefer an H200, and compare figures only within one call / machine.
. benchmarks/gpu_session9/common.sh
exec > >(tee $OUT/run24_${PART:-1}.txt) 2>&1
nvidia-smi --query-gpu=name --format=csv,noheader
AWQ='{"quantization_config": {"quant_method": "awq", "bits": 4, "group_size": 128, "zero_point": true, "version": "gemm"}}'
if [ "${PART:-1}" = 1 ]; then
# Session 24's changes on CUDA, never run there together: bitsandbytes (8-bit eager, the int8 tolerance on CUDA),
# prompt_embeds, custom logits processors, the packed kernels' column tiles (EVEN_N off by default), MoE GGUF
# files (attention projections kept quantized on CUDA, experts dequantized into the fused kernels).
PYTHONPATH=$R timeout 200 python3 -m pytest -q -p no:cacheprovider -n 4 -rfs --tb=short tests/unit/test_quant_bnb.py \
  tests/models/test_moe.py tests/models/test_prompt_embeds.py tests/unit/test_logits_processors.py \
  tests/models/test_gguf_moe.py \
  tests/gpu/test_quant_packed_kernels.py 2>&1 | grep -E "^E |FAILED|passed|failed|\.py:[0-9]+: " | cut -c1-300 | tail -20
fi
if [ "${PART:-1}" = 2 ]; then
# Issue 13's rows after the EVEN_N revert (H200 in session 20: AWQ bs1 449.4, ShareGPT 9,150.1; targets 500 and
# 11,814). Prediction on an H200: ShareGPT ~9,200-9,300 (the H100's +0.5-1.4% from the revert), bs1 unchanged.
ANCHOR_CFG="$AWQ" PYTHONPATH=$R timeout 120 python3 .bench/sb/offline_workload.py pagedllm qwen2.5-7b bs1_128_256 \
  sharegpt_like_1000 latency_8x1024x1024 2>&1 | offline_summary "awq"
fi
if [ "${PART:-1}" = 3 ]; then
# Issue 18's cold start: one cold `serve` 7B to /health at DEBUG (names the Triton variants still built one by one),
# then the decode-capture A/B once more, B first this time (session 24, H100: A 3.76 s, B 2.8 s).
SWITCH=PAGEDLLM_LOGGING_LEVEL VALUES="DEBUG" timeout 90 bash benchmarks/gpu_session9/s9e.sh 2>&1 | grep -E "health|start-up " | cut -c1-400
grep -h -E "Captured|during start-up" $OUT/serve_PAGEDLLM_LOGGING_LEVEL_1.log | cut -c1-400
for v in B A; do PYTHONPATH=$R timeout 90 python3 benchmarks/gpu_session23/capture_ab.py $v 2>&1 \
  | grep -E "Captured|captured|variant" | cut -c1-300; done
fi
if [ "${PART:-1}" = 4 ]; then
# Session 23's PART=3: block-scaled FP8 (128 x 128) against bf16 on the 7B shapes (prediction, H200: bs1 +60-80%,
# ShareGPT 0.8-1.2x).
PART=3 bash benchmarks/gpu_session23/run.sh
fi
