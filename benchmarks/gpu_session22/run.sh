#!/bin/bash
# Session 22. Carry [".whl", ".bench"]. Session 20's next.sh PART=1 split in two calls so each fits 10 minutes:
# PART=1: every GPU test queued since session 20 (quant kernels + AWQ engine, the whole test_engine_gpu.py with
# session 21's Gemma / Gemma 2 / Gemma 3 / Granite / Phi-3 / MoE / RLHF update / raw_logits tests, the Triton
# soft-cap and sliding-window attention tests; session 22's fused MoE kernels), then the fused MoE against the eager
# expert loop on Qwen3-30B-A3B's shapes (prediction: bs1 decode from ~25-40 ms a token, host-bound, to ~3-4 ms;
# fp8 experts ~20-30% faster again at bs1, where the chosen experts' weight reads dominate). PART=2: session 20's EVEN_N measurements (next.sh PART=1's tail).
. benchmarks/gpu_session9/common.sh
exec > >(tee $OUT/run22_${PART:-1}.txt) 2>&1
nvidia-smi --query-gpu=name --format=csv,noheader
if [ "${PART:-1}" = 1 ]; then
PYTHONPATH=$R timeout 240 python3 -m pytest -q -p no:cacheprovider -n 8 -rfs --tb=short --durations=8 tests/gpu/test_engine_gpu.py 2>&1 \
  | grep -vE "^\s*$|Warning|warner" | cut -c1-400 | tail -40
PYTHONPATH=$R timeout 150 python3 -m pytest -q -p no:cacheprovider -n 8 -rfs --tb=short tests/gpu/test_triton_moe.py \
  tests/gpu/test_quant_fp8_block.py tests/gpu/test_quant_fp8_block_engine_gpu.py tests/gpu/test_triton_attention.py tests/gpu/test_quant_packed_kernels.py tests/gpu/test_quant_awq_engine_gpu.py 2>&1 \
  | grep -vE "^\s*$|Warning|warner" | cut -c1-400 | tail -15
for v in fused fp8 loop; do PYTHONPATH=$R timeout 70 python3 benchmarks/moe_gpu.py $v bs1_128_256 seed004_25x64x128 --layers 24 2>&1 | grep -E "^\{|Error|error" | tail -4; done
fi
if [ "${PART:-1}" = 2 ]; then
SKIP_TESTS=1 PART=1 bash benchmarks/gpu_session20/next.sh
fi
if [ "${PART:-1}" = 3 ]; then
# Block-scaled FP8 (Qwen3-FP8's form, 128 x 128) on the 7B shapes against bf16, same call. Prediction (H200): bs1
# ~+60-80% over bf16, ShareGPT within 0.8-1.2x of bf16.
BLK='{"quantization_config": {"quant_method": "fp8", "activation_scheme": "dynamic", "weight_block_size": [128, 128]}}'
PYTHONPATH=$R timeout 100 python3 .bench/sb/offline_workload.py pagedllm qwen2.5-7b bs1_128_256 sharegpt_like_1000 2>&1 | offline_summary "bf16"
ANCHOR_CFG="$BLK" PYTHONPATH=$R timeout 100 python3 .bench/sb/offline_workload.py pagedllm qwen2.5-7b bs1_128_256 sharegpt_like_1000 2>&1 | offline_summary "fp8-block"
fi
if [ "${PART:-1}" = 4 ]; then
# PART=1 cut to what ~7 minutes hold (most of the session's device time went to failed starts): the engine tests,
# the new kernels' tests, the MoE A/B at batch 1.
PYTHONPATH=$R timeout 210 python3 -m pytest -q -p no:cacheprovider -n 8 -rfs --tb=short tests/gpu/test_engine_gpu.py 2>&1 \
  | grep -vE "^\s*$|Warning|warner" | cut -c1-400 | tail -30
PYTHONPATH=$R timeout 100 python3 -m pytest -q -p no:cacheprovider -n 8 -rfs --tb=short tests/gpu/test_triton_moe.py \
  tests/gpu/test_quant_fp8_block.py tests/gpu/test_quant_fp8_block_engine_gpu.py tests/gpu/test_triton_attention.py 2>&1 \
  | grep -vE "^\s*$|Warning|warner" | cut -c1-400 | tail -15
for v in fused loop; do PYTHONPATH=$R timeout 55 python3 benchmarks/moe_gpu.py $v bs1_128_256 --layers 24 2>&1 | grep -E "^\{|Error|error" | tail -3; done
fi
if [ "${PART:-1}" = 5 ]; then
# PART=4 cut to ~5.5 minutes (the session's last device seconds).
PYTHONPATH=$R timeout 180 python3 -m pytest -q -p no:cacheprovider -n 8 -rfs --tb=short tests/gpu/test_engine_gpu.py 2>&1 \
  | grep -vE "^\s*$|Warning|warner" | cut -c1-400 | tail -30
PYTHONPATH=$R timeout 80 python3 -m pytest -q -p no:cacheprovider -n 8 -rfs --tb=short tests/gpu/test_triton_moe.py \
  tests/gpu/test_quant_fp8_block.py tests/gpu/test_quant_fp8_block_engine_gpu.py 2>&1 \
  | grep -vE "^\s*$|Warning|warner" | cut -c1-400 | tail -15
PYTHONPATH=$R timeout 45 python3 benchmarks/moe_gpu.py fused bs1_128_256 --layers 24 2>&1 | grep -E "^\{|Error|error" | tail -3
fi
