#!/bin/bash
# Session 31 (carry [".whl", ".bench"]). PART=1 is session 30's PART=1 (benchmarks/gpu_session30/next.sh).
# PART=2 (~300 s): PAGEDLLM_NORM_EPILOGUE (the residual add + RMSNorm after o_proj / down_proj in the skinny GEMM's
#   last program; off, never run on a GPU): the kernel tests (add_norm, the split-K counter, the ulp bound) and the
#   engine test (HF-greedy, eager and graphs, the fused launcher called), then 1.5B bs1 base / norm-epilogue
#   alternating (two rounds) and 7B bs1 + latency_8x1024x1024 once each.
#   Prediction (H200 or H100): 1.5B bs1 +3-5% (two norm kernels a layer, ~1.2 µs each by session 18's
#   leave-one-out, less the last program's serial norm), 7B bs1 +1-2%, latency -1%.
. benchmarks/gpu_session9/common.sh
exec > >(tee $OUT/next31_${PART:-2}.txt) 2>&1
nvidia-smi --query-gpu=name --format=csv,noheader
git log --oneline -1 2>/dev/null
if [ "${PART:-2}" = 2 ]; then
PYTHONPATH=$R timeout 150 python3 -m pytest -q -n 8 -p no:cacheprovider tests/gpu/test_triton_gemv.py \
  tests/gpu/test_engine_gpu.py -k "add_norm or norm_epilogue or gate_up_silu" 2>&1 | tail -4
AB="python3 benchmarks/kernels/route_ab.py"
for r in 1 2; do
  PAGEDLLM_NORM_EPILOGUE=0 PYTHONPATH=$R timeout 45 $AB base qwen2.5-1.5b bs1_128_256 2>&1 | offline_summary "1.5b base r$r"
  PAGEDLLM_NORM_EPILOGUE=1 PYTHONPATH=$R timeout 45 $AB base qwen2.5-1.5b bs1_128_256 2>&1 | offline_summary "1.5b normep r$r"
done
for v in 0 1; do
  PAGEDLLM_NORM_EPILOGUE=$v PYTHONPATH=$R timeout 90 $AB base qwen2.5-7b bs1_128_256 latency_8x1024x1024 2>&1 \
    | offline_summary "7b normep=$v"
done
fi
