#!/bin/bash
# Session 34 (carry [".whl", ".bench"]; run from the repo root). One PART a call, in this order.
# Session 34 ran a first version of PART=1 on an H100 with every file under `-n 8`: 314 failed, because the engine
#   tests of 8 workers shared one GPU (each alone passed as far as it got). Kernel files run under -n 8, engine files
#   one process each now. Fixed since, from that run: the scaled-rope device mismatch (d80c97f), Falcon's KV heads on
#   transformers 5.17 (cc1ac45), DeepSeek's yarn_apply_mscale import (c098585), the gpt-oss reference's SwiGLU on 5.17
#   (2041322), Qwen2.5-VL's prefix-cache assertion (a254957). Open: GLM-4.5-FP8 bf16 (fragile test?), Qwen2-VL tokens.
# Session 35 (no GPU time; not run): test_deepseek_gpu.py now checks the latent MLA cache (86fc4ee, 5f2b903: one KV head
#   of 576, 16 x 16 extend tiles chosen from offline sm_90 compiles) - PART=1 runs it; PART=5 reruns ANCHORS'
#   served 7B row after session 35's API-server changes (3021da4; prediction: 0-3% served tok/s; on a GPU with a
#   tokenizer, benchmarks/serve_overhead_cpu.py --model DIR --step-trace says whether the API server or the core
#   limits the batch).
# PART=1 (~280 s, any H100/H200): kernel tests (-n 8): attention sinks, fused MoE (biases, clamped SwiGLU, MXFP4),
#   session 32's fp32 AWQ / GPTQ routing fix; then the new architectures' engine files one process each. Expected:
#   all pass but test_moe_archs_gpu's bf16 FP8 case and maybe Qwen2-VL's two cases.
# PART=4 (~120 s): Falcon / Qwen2-VL follow-ups: benchmarks/gpu_session34/falcon_bf16_bisect.py falcon (all variants
#   should now be within 0.02), the Qwen2-VL GPU file with full tracebacks.
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
timeout 100 python3 -m pytest -q -n 8 -p no:cacheprovider tests/gpu/test_triton_attention.py tests/gpu/test_triton_moe.py \
  tests/gpu/test_quant_packed_kernels.py 2>&1 | grep -E "^(FAILED|ERROR)|passed|failed" | tail -20
for f in test_gpt_oss_gpu test_deepseek_gpu test_classic_archs_gpu test_moe_archs_gpu test_llava_gpu test_qwen2_vl_gpu \
    test_quant_awq_engine_gpu test_quant_gptq_engine_gpu; do
  echo "== $f"; timeout 60 python3 -m pytest -q -p no:cacheprovider tests/gpu/$f.py -rf --tb=line 2>&1 \
    | grep -E "^(FAILED|ERROR)|passed|failed|^E " | tail -8
done
;;
2)
timeout 60 python3 benchmarks/moe_mxfp4.py kernels --tokens 1 16 256
timeout 40 python3 benchmarks/moe_mxfp4.py kernels --tokens 1 16 --tiles 16,32,128,4
timeout 60 python3 benchmarks/moe_mxfp4.py engine --format mxfp4
timeout 90 python3 benchmarks/moe_mxfp4.py engine --format bf16
;;
3)
PART=1 timeout 280 bash benchmarks/gpu_session33/next.sh
PART=3 timeout 200 bash benchmarks/gpu_session33/next.sh
;;
4)
timeout 90 python3 benchmarks/gpu_session34/falcon_bf16_bisect.py falcon 2>&1 | grep -vE "INFO|WARN" | tail -12
timeout 60 python3 -m pytest -q -p no:cacheprovider tests/gpu/test_qwen2_vl_gpu.py --tb=short 2>&1 | grep -E "^E |passed|failed" | head -30
;;
5)
# ANCHORS' served 7B row (dummy weights, token-id prompts, --skip-tokenizer-init: only 3021da4 applies there), twice
for i in 1 2; do timeout 280 python3 .bench/sb/serve_workload.py pagedllm qwen2.5-7b sharegpt_like_1000 100; done
;;
esac
