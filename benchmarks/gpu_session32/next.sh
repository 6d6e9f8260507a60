#!/bin/bash
# Session 32 (carry [".whl", ".bench"]). One PART a call, in this order.
# PART=1 (~450 s, any H100/H200): session 31's queue. The AWQ + GPTQ engine tests and the sleep-mode test after the
#   use_mem_pool device fix (never run on a GPU), the pool-off mutation (must fail); WIDE_DECODE's 16-row config with
#   2 (committed) against 3 pipeline stages: AWQ latency_8x1024x1024 + sharegpt_like_1000 (prediction: latency
#   4.37 -> ~4.0 s on an H100, ShareGPT +1-3%); the 16-row candidates against the decode kernel at 2 / 4 / 8 / 16 rows
#   per 7B shape (o_proj was faster on the decode kernel at 8 rows: 10.8 against 13.6 µs); the 256-row wide
#   candidates at 512 / 1,024 rows against the scratch path.
# PART=4 (~420 s, at 1a09623): the int4 kernel file (fp32 x at every row bucket, routing, the 3-stage 16-row
#   config) and the AWQ / GPTQ engine tests (test_awq_batch1_gemv's fp32 cases failed in PART=1), then AWQ 7B
#   bs1 / ShareGPT / latency (issue 13's rows) and bf16 1.5B bs1 / 7B ShareGPT (issue 18's).
# PART=5 (~200 s): PART=4 cut to a short budget: the fp32 / routing kernel tests and the AWQ / GPTQ engine tests,
#   then AWQ 7B's three rows.
# PART=6 (~420 s): the 3-stage twins of the 7B table's pairs configs at 17..256 rows (added to the probe's
#   candidates): the probe at 24..128 rows, then AWQ sharegpt_like_1000 base / pairs-stages alternating (two rounds).
#   Prediction: down and qkv 10-25% faster at 32 / 64 rows (as at 2..16), ShareGPT +1-3%.
# PART=2 (~400 s, H200 wanted): issue 13 / 18 offline rows (session 25's PART=2 list).
# PART=3 (~150 s, H200 wanted): the cold start to /health twice (issue 18: <= 15 s).
. benchmarks/gpu_session9/common.sh
exec > >(tee $OUT/next32_${PART:-1}.txt) 2>&1
nvidia-smi --query-gpu=name --format=csv,noheader
git log --oneline -1 2>/dev/null
# `... > /tmp/ab.log; ab_summary TAG`: offline_summary's lines and the count of Triton compiles after start-up.
ab_summary() { offline_summary "$1" < /tmp/ab.log; echo "late compiles: $(grep -c 'after start-up' /tmp/ab.log)"; }
# Issue 13's three AWQ 7B rows, one engine (`awq_rows TIMEOUT`).
awq_rows() {
  ANCHOR_CFG="$AWQ" PYTHONPATH=$R timeout "$1" python3 .bench/sb/offline_workload.py pagedllm qwen2.5-7b bs1_128_256 \
    sharegpt_like_1000 latency_8x1024x1024 > /tmp/ab.log 2>&1
  ab_summary awq
}
case "${PART:-1}" in
1)
PYTHONPATH=$R timeout 130 python3 -m pytest -q -n 6 -p no:cacheprovider tests/gpu/test_quant_awq_engine_gpu.py \
  tests/gpu/test_quant_gptq_engine_gpu.py tests/gpu/test_sleep_mode_gpu.py 2>&1 | tail -4
rm -rf /tmp/mut && mkdir /tmp/mut && cp -r pagedllm tests /tmp/mut/
sed -i 's/kv_cache_pool(self.config.args.enable_sleep_mode/kv_cache_pool(False/' /tmp/mut/pagedllm/worker/model_runner.py
echo "mutated: $(grep -c 'kv_cache_pool(False' /tmp/mut/pagedllm/worker/model_runner.py)"
(cd /tmp/mut && PYTHONPATH=/tmp/mut timeout 60 python3 -m pytest -q -p no:cacheprovider tests/gpu/test_sleep_mode_gpu.py \
  2>&1 | grep -E "^E .*(assert|Error)|passed|failed" | tail -3)
for st in 2 3; do
  ROUTE_WIDE_STAGES=$st ANCHOR_CFG="$AWQ" PYTHONPATH=$R timeout 75 python3 benchmarks/kernels/route_ab.py wide-decode \
    qwen2.5-7b latency_8x1024x1024 sharegpt_like_1000 > /tmp/ab.log 2>&1
  ab_summary "awq-stages$st"
done
PYTHONPATH=$R timeout 75 python3 benchmarks/kernels/awq_fused_probe.py --decode-kernel-routed --ms 8,2,4,16 \
  --shapes o,qkv,down,gate_up --deadline 60 2>&1 | grep -v Warning | sed -n '1,40p'
PYTHONPATH=$R timeout 70 python3 benchmarks/kernels/awq_fused_probe.py --ms 512,1024 --shapes gate_up,down,qkv,o \
  --deadline 55 2>&1 | grep -v Warning | sed -n '1,14p'
;;
4)
PYTHONPATH=$R timeout 150 python3 -m pytest -q -n 10 -p no:cacheprovider tests/gpu/test_quant_packed_kernels.py \
  tests/gpu/test_quant_awq_engine_gpu.py tests/gpu/test_quant_gptq_engine_gpu.py 2>&1 | grep -E "^(FAILED|ERROR)|passed|failed" | tail -8
awq_rows 120
PYTHONPATH=$R timeout 45 python3 .bench/sb/offline_workload.py pagedllm qwen2.5-1.5b bs1_128_256 2>&1 | offline_summary "1.5b"
PYTHONPATH=$R timeout 80 python3 .bench/sb/offline_workload.py pagedllm qwen2.5-7b sharegpt_like_1000 2>&1 | offline_summary "7b"
;;
5)
PYTHONPATH=$R timeout 90 python3 -m pytest -q -n 8 -p no:cacheprovider tests/gpu/test_quant_packed_kernels.py \
  tests/gpu/test_quant_awq_engine_gpu.py tests/gpu/test_quant_gptq_engine_gpu.py -k "fp32_x or routing or wide or awq \
  or gptq" 2>&1 | grep -E "^(FAILED|ERROR)|passed|failed" | tail -8
awq_rows 110
;;
6)
PYTHONPATH=$R timeout 170 python3 benchmarks/kernels/awq_fused_probe.py --ms 32,64,128,24,48,96 \
  --shapes gate_up,down,qkv,o --deadline 150 2>&1 | grep -v Warning | sed -n '1,28p'
for r in 1 2; do
  for v in base pairs-stages; do
    ANCHOR_CFG="$AWQ" PYTHONPATH=$R timeout 60 python3 benchmarks/kernels/route_ab.py $v qwen2.5-7b \
      sharegpt_like_1000 > /tmp/ab.log 2>&1
    ab_summary "awq-$v r$r"
  done
done
;;
2) PART=2 bash benchmarks/gpu_session25/next.sh ;;
3) SWITCH=PAGEDLLM_LOGGING_LEVEL VALUES="INFO INFO" timeout 150 bash benchmarks/gpu_session9/s9e.sh 2>&1 \
     | grep -E "health|Built|start-up " | cut -c1-400 ;;
esac
