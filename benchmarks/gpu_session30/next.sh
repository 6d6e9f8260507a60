#!/bin/bash
# Session 30 (carry [".whl", ".bench"]). Device time was short (eleven refused starts), so PART=1 is one call of
# ~400 s holding what matters most:
# - the int4 kernel + AWQ engine GPU tests: ca2a09f's dequantize + cuBLAS path (the default for >256 rows, never run
#   on a GPU) and the 16-row wide tiles of WIDE_DECODE (2, 8, 16 rows against the reference);
# - the sleep-mode GPU test (c823ccc's KV pool, never run on a GPU);
# - WIDE_DECODE: the probe at 8 rows (routed = the decode kernel) and AWQ latency_8x1024x1024 (every decode step
#   8 rows) base against route_ab.py wide-decode. Prediction: gate_up at 8 rows 45-55 µs (H100) against the decode
#   kernel's ~70-85; latency 5.6 -> 4.0-4.6 s on an H100;
# - last, the sleep test with the KV pool forced off (must fail).
# PART=2 (~330 s): AWQ ShareGPT base / wide-decode alternating (prediction +3-7%), pure decode at 4 / 16 rows, then
#   the slab probe (session 29's queue).
# Then session 29's PART=5 (UNTABLED_WIDE) and PART=4 (slabs end to end) as queued there.
. benchmarks/gpu_session9/common.sh
exec > >(tee $OUT/next30_${PART:-1}.txt) 2>&1
nvidia-smi --query-gpu=name --format=csv,noheader
if [ "${PART:-1}" = 1 ]; then
PYTHONPATH=$R timeout 150 python3 -m pytest -q -n 8 -p no:cacheprovider tests/gpu/test_quant_packed_kernels.py \
  tests/gpu/test_quant_awq_engine_gpu.py tests/gpu/test_sleep_mode_gpu.py 2>&1 | tail -3
PYTHONPATH=$R timeout 75 python3 benchmarks/kernels/awq_fused_probe.py --ms 8 --shapes gate_up,down,qkv,o \
  --deadline 55 2>&1 | grep -v Warning | sed -n '1,12p'
for xg in 0 1; do
  for v in base wide-decode; do
    [ $v = base ] && [ $xg = 1 ] && continue
    ROUTE_XGATHER=$xg ANCHOR_CFG="$AWQ" PYTHONPATH=$R timeout 80 python3 benchmarks/kernels/route_ab.py $v qwen2.5-7b \
      latency_8x1024x1024 > /tmp/ab_$v.log 2>&1
    offline_summary "awq-$v-xg$xg" < /tmp/ab_$v.log; echo "late compiles: $(grep -c 'after start-up' /tmp/ab_$v.log)"
  done
done
rm -rf /tmp/mut && mkdir /tmp/mut && cp -r pagedllm tests /tmp/mut/
sed -i 's/kv_cache_pool(self.config.args.enable_sleep_mode/kv_cache_pool(False/' /tmp/mut/pagedllm/worker/model_runner.py
grep -c "kv_cache_pool(False" /tmp/mut/pagedllm/worker/model_runner.py
(cd /tmp/mut && PYTHONPATH=/tmp/mut timeout 80 python3 -m pytest -q -p no:cacheprovider tests/gpu/test_sleep_mode_gpu.py \
  2>&1 | grep -E "passed|failed" | tail -1)
fi
if [ "${PART:-1}" = 2 ]; then
rm -rf /tmp/bench30 && cp -r .bench/sb /tmp/bench30
printf '\nWORKLOADS.update({f"decode{n}": (lambda n=n: fixed(n, 32, 256)) for n in (4, 16)})\n' >> /tmp/bench30/workloads.py
# XG=1: the xgather config (no x copy a call; PDL overlap kept) in place of the copy one
for v in base wide-decode base wide-decode; do
  ROUTE_XGATHER=${XG:-0} ANCHOR_CFG="$AWQ" PAGEDLLM_BENCH_DIR=/tmp/bench30 PYTHONPATH=$R timeout 120 python3 \
    benchmarks/kernels/route_ab.py $v qwen2.5-7b sharegpt_like_1000 decode4 decode16 > /tmp/ab_$v.log 2>&1
  offline_summary "awq-$v" < /tmp/ab_$v.log; echo "late compiles: $(grep -c 'after start-up' /tmp/ab_$v.log)"
done
PYTHONPATH=$R timeout 100 python3 benchmarks/kernels/slab_probe.py --deadline 80 2>&1 | grep -v Warning
fi
