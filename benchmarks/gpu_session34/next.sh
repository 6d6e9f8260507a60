#!/bin/bash
# Session 34 (carry [".whl", ".bench"]; run from the repo root). One PART a call, in this order.
# PART=1 (~280 s, any H100/H200): the GPU tests of what session 34 changed on the CPU only: the Triton attention
#   kernels (attention sinks: HAS_SINKS constexpr), the fused MoE kernels (expert biases, clamped SwiGLU, MXFP4 kept
#   quantized), the new architectures' GPU HF-parity files (classic LayerNorm decoders, Llama-family additions in
#   test_engine_gpu.py, DeepSeek MLA on the expanded cache, gpt-oss, the MoE families, LLaVA images), plus session
#   32's fp32 AWQ / GPTQ routing fix (never run on a GPU). Expected: all pass; the risk is in the kernels' new
#   signatures (every existing attention / MoE path passes one more pointer) and the MXFP4 tile at 64 rows.
# PART=2 (~120 s): benchmarks/moe_mxfp4.py, gpt-oss-20b experts MXFP4 vs bf16: kernels at 1 / 16 / 256 tokens (default
#   tiles and 16,32,128,4), then the engine's batch-1 decode. Prediction (the script's header): MoE layer ~30-50 us vs
#   ~70 us at batch 1, decode ~1.5-1.9x tok/s.
# PART=3: benchmarks/gpu_session33/next.sh PART=1 (the served 7B cold start, b84018f vs this tree; needs .bench/old,
#   see that script's header), then its PART=3 (issue 13 AWQ rows, issue 18 1.5B bs1), then its PART=2.
. benchmarks/gpu_session9/common.sh
exec > >(tee $OUT/next34_${PART:-1}.txt) 2>&1
nvidia-smi --query-gpu=name --format=csv,noheader
export PYTHONPATH=$R
case "${PART:-1}" in
1)
timeout 270 python3 -m pytest -q -n 8 -p no:cacheprovider tests/gpu/test_triton_attention.py tests/gpu/test_triton_moe.py \
  tests/gpu/test_engine_gpu.py tests/gpu/test_classic_archs_gpu.py tests/gpu/test_deepseek_gpu.py \
  tests/gpu/test_gpt_oss_gpu.py tests/gpu/test_moe_archs_gpu.py tests/gpu/test_llava_gpu.py \
  tests/gpu/test_quant_packed_kernels.py tests/gpu/test_quant_awq_engine_gpu.py tests/gpu/test_quant_gptq_engine_gpu.py \
  2>&1 | grep -E "^(FAILED|ERROR)|passed|failed|rror" | tail -40
;;
2)
timeout 60 python3 benchmarks/moe_mxfp4.py kernels --tokens 1 16 256
timeout 40 python3 benchmarks/moe_mxfp4.py kernels --tokens 1 16 --tiles 16,32,128,4
timeout 60 python3 benchmarks/moe_mxfp4.py engine --format mxfp4
timeout 60 python3 benchmarks/moe_mxfp4.py engine --format bf16
;;
3)
PART=1 timeout 280 bash benchmarks/gpu_session33/next.sh
PART=3 timeout 200 bash benchmarks/gpu_session33/next.sh
;;
esac
