#!/bin/bash
# Session 31 (carry [".whl", ".bench"]). PART=1 is session 30's PART=1 (benchmarks/gpu_session30/next.sh).
# PART=2 (~300 s): PAGEDLLM_NORM_EPILOGUE (the residual add + RMSNorm after o_proj / down_proj in the skinny GEMM's
#   last program; off, never run on a GPU): the kernel tests (add_norm, the split-K counter, the ulp bound) and the
#   engine test (HF-greedy, eager and graphs, the fused launcher called), then 1.5B bs1 base / norm-epilogue
#   alternating (two rounds) and 7B bs1 + latency_8x1024x1024 once each.
#   Prediction (H200 or H100): 1.5B bs1 +3-5% (two norm kernels a layer, ~1.2 µs each by session 18's
#   leave-one-out, less the last program's serial norm), 7B bs1 +1-2%, latency -1%.
# PART=3 (~330 s): WIDE_DECODE on by default (PART=1/2 of session 30 measured it): the int4 kernel + AWQ engine
#   tests at the new default, the sleep-mode test after the use_mem_pool device fix (a bare "cuda" device was a
#   ValueError) and with the KV pool forced off (must fail), then the 16-row config's pipeline stages 2 (committed)
#   against 3 (the probe's best at 8 rows: down 44.0 -> 33.5 µs, gate_up 46.1 -> 43.7), alternating: AWQ
#   latency_8x1024x1024 and sharegpt_like_1000. Prediction: latency 4.37 -> ~4.0 s, ShareGPT +1-3%.
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
if [ "${PART:-2}" = 3 ]; then
PYTHONPATH=$R timeout 150 python3 -m pytest -q -n 8 -p no:cacheprovider tests/gpu/test_quant_packed_kernels.py \
  tests/gpu/test_quant_awq_engine_gpu.py tests/gpu/test_sleep_mode_gpu.py 2>&1 | tail -3
rm -rf /tmp/mut && mkdir /tmp/mut && cp -r pagedllm tests /tmp/mut/
sed -i 's/kv_cache_pool(self.config.args.enable_sleep_mode/kv_cache_pool(False/' /tmp/mut/pagedllm/worker/model_runner.py
grep -c "kv_cache_pool(False" /tmp/mut/pagedllm/worker/model_runner.py
(cd /tmp/mut && PYTHONPATH=/tmp/mut timeout 80 python3 -m pytest -q -p no:cacheprovider tests/gpu/test_sleep_mode_gpu.py \
  2>&1 | grep -E "^E .*(assert|Error)|passed|failed" | tail -3)
for st in 2 3 2 3; do
  ROUTE_WIDE_STAGES=$st ANCHOR_CFG="$AWQ" PYTHONPATH=$R timeout 60 python3 benchmarks/kernels/route_ab.py wide-decode \
    qwen2.5-7b latency_8x1024x1024 > /tmp/ab.log 2>&1
  offline_summary "awq-stages$st" < /tmp/ab.log; echo "late compiles: $(grep -c 'after start-up' /tmp/ab.log)"
done
for st in 2 3; do
  ROUTE_WIDE_STAGES=$st ANCHOR_CFG="$AWQ" PYTHONPATH=$R timeout 70 python3 benchmarks/kernels/route_ab.py wide-decode \
    qwen2.5-7b sharegpt_like_1000 > /tmp/ab.log 2>&1
  offline_summary "awq-stages$st" < /tmp/ab.log; echo "late compiles: $(grep -c 'after start-up' /tmp/ab.log)"
done
# Last: the wide kernel's 256-row bucket candidates (M tiles over the rows) at 512 / 1024 rows against the scratch
# path these steps take (AWQ ShareGPT's 241 steps above 256 rows; the slab probe put scratch at 1.5-1.9x bf16 there)
PYTHONPATH=$R timeout 80 python3 benchmarks/kernels/awq_fused_probe.py --ms 512,1024 --shapes gate_up,down,qkv,o \
  --deadline 65 2>&1 | grep -v Warning | sed -n '1,14p'
fi
# PART=4 (~280 s): PART=3 cut to the device time left (425 s): the AWQ engine and sleep-mode tests (the int4 kernel
#   file passed in session 30's PART=1), the pool-off mutation, stages 2 / 3 once each, the 512 / 1024-row probe.
if [ "${PART:-2}" = 4 ]; then
PYTHONPATH=$R timeout 100 python3 -m pytest -q -n 4 -p no:cacheprovider tests/gpu/test_quant_awq_engine_gpu.py \
  tests/gpu/test_sleep_mode_gpu.py 2>&1 | tail -3
rm -rf /tmp/mut && mkdir /tmp/mut && cp -r pagedllm tests /tmp/mut/
sed -i 's/kv_cache_pool(self.config.args.enable_sleep_mode/kv_cache_pool(False/' /tmp/mut/pagedllm/worker/model_runner.py
(cd /tmp/mut && PYTHONPATH=/tmp/mut timeout 60 python3 -m pytest -q -p no:cacheprovider tests/gpu/test_sleep_mode_gpu.py \
  2>&1 | grep -E "^E .*(assert|Error)|passed|failed" | tail -3)
for st in 2 3; do
  ROUTE_WIDE_STAGES=$st ANCHOR_CFG="$AWQ" PYTHONPATH=$R timeout 75 python3 benchmarks/kernels/route_ab.py wide-decode \
    qwen2.5-7b latency_8x1024x1024 sharegpt_like_1000 > /tmp/ab.log 2>&1
  offline_summary "awq-stages$st" < /tmp/ab.log; echo "late compiles: $(grep -c 'after start-up' /tmp/ab.log)"
done
PYTHONPATH=$R timeout 70 python3 benchmarks/kernels/awq_fused_probe.py --ms 512,1024 --shapes gate_up,down,qkv,o \
  --deadline 55 2>&1 | grep -v Warning | sed -n '1,14p'
fi
