#!/bin/bash
# Session 29 (carry [".whl", ".bench"]; .whl from `../shared/gpu/wheelhouse.sh bitsandbytes opentelemetry-api
# importlib-metadata zipp py-spy`). The int4 wide kernel with x's rows past M masked (MASK_PARTIAL_ROWS, now on) and
# gate_up 65..256 / down 65..128 rows on the 128-row pairs tiles, against route_ab.py's awq-session28 (as before).
# PART=1: AWQ 7B ShareGPT, alternating, late compiles counted; AWQ latency_8x1024x1024 (8 rows: the decode kernel,
#         whose mask stays off); then the quant GPU tests. Prediction: ShareGPT +2-4% (session 28's masked + table
#         run: 8,819 against 8,489 / 8,642), latency unchanged.
# PART=2: pure decode at 20 / 40 / 96 / 160 / 256 rows both ways, then the whole tests/gpu tree (T seconds).
# Queued for session 30 (no machine started after PART=2):
# PART=3 (~350 s): sleep_pool.sh: the sleep-mode KV pool's GPU tests (and the test with the pool off: must fail),
#         the int4 kernel tests, slab_probe.py; on an H200 also issue 13 / 18 rows.
# PART=4 (~260 s): if the probe shows slabs faster at 512+ rows: AWQ ShareGPT base against route_ab.py awq-slabs
#         (SLAB_MB, default 16), alternating. Prediction +5-10%.
# PART=5 (~300 s): UNTABLED_WIDE (int4 shapes outside the 7B table at 17..64 rows on the pairs configs): the probe
#         on Llama-3-8B, Qwen2.5-1.5B and 7B TP=2 shapes, then Qwen2.5-1.5B AWQ pure decode at 24 / 48 rows and
#         ShareGPT, base against route_ab.py untabled-wide. Prediction: the probe 1.5-3.5x faster than scratch on
#         every shape; 1.5B decode at 24 / 48 rows +15-40%; ShareGPT within noise to +5%. If so: UNTABLED_WIDE = True.
. benchmarks/gpu_session9/common.sh
exec > >(tee $OUT/next29_${PART:-1}.txt) 2>&1
nvidia-smi --query-gpu=name --format=csv,noheader
if [ "${PART:-1}" = 1 ]; then
for v in base awq-session28 base awq-session28; do
  ANCHOR_CFG="$AWQ" PYTHONPATH=$R timeout 150 python3 benchmarks/kernels/route_ab.py $v qwen2.5-7b sharegpt_like_1000 \
    > /tmp/ab_$v.log 2>&1
  offline_summary "awq-$v" < /tmp/ab_$v.log
  echo "late compiles: $(grep -c 'after start-up' /tmp/ab_$v.log)"; grep "after start-up" /tmp/ab_$v.log | cut -c1-250 | head -3
done
for v in base awq-session28; do
  ANCHOR_CFG="$AWQ" PYTHONPATH=$R timeout 100 python3 benchmarks/kernels/route_ab.py $v qwen2.5-7b latency_8x1024x1024 \
    2>&1 | offline_summary "awq-$v"
done
PYTHONPATH=$R timeout ${T:-150} python3 -m pytest -q -n 8 -p no:cacheprovider tests/gpu/test_quant_packed_kernels.py \
  tests/gpu/test_quant_awq_engine_gpu.py tests/gpu/test_quant_gptq_engine_gpu.py tests/gpu/test_parallel_compile.py \
  > /tmp/quant_tests.log 2>&1
tail -2 /tmp/quant_tests.log; grep -E "^FAILED|^ERROR" /tmp/quant_tests.log | cut -c1-300 | head
fi
if [ "${PART:-1}" = 2 ]; then
rm -rf /tmp/bench29 && cp -r .bench/sb /tmp/bench29
printf '\nWORKLOADS.update({f"decode{n}": (lambda n=n: fixed(n, 32, 256)) for n in (20, 40, 96, 160, 256)})\n' >> /tmp/bench29/workloads.py
for v in base awq-session28; do
  ANCHOR_CFG="$AWQ" PAGEDLLM_BENCH_DIR=/tmp/bench29 PYTHONPATH=$R timeout 150 python3 benchmarks/kernels/route_ab.py $v \
    qwen2.5-7b decode20 decode40 decode96 decode160 decode256 2>&1 | offline_summary "awq-$v"
done
PART=1 T=${T:-300} bash benchmarks/gpu_session26/next.sh
fi
if [ "${PART:-1}" = 3 ]; then bash benchmarks/gpu_session29/sleep_pool.sh; fi
if [ "${PART:-1}" = 4 ]; then
for v in base awq-slabs base awq-slabs; do
  ANCHOR_CFG="$AWQ" SLAB_MB=${SLAB_MB:-16} PYTHONPATH=$R timeout 150 python3 benchmarks/kernels/route_ab.py $v qwen2.5-7b \
    sharegpt_like_1000 > /tmp/ab_$v.log 2>&1
  offline_summary "awq-$v" < /tmp/ab_$v.log
  echo "late compiles: $(grep -c 'after start-up' /tmp/ab_$v.log)"
done
fi
if [ "${PART:-1}" = 5 ]; then
PYTHONPATH=$R timeout 150 python3 benchmarks/kernels/awq_fused_probe.py --untabled-only --ms 24,32,48,64 --deadline 120 \
  --shapes l8_qkv,l8_o,l8_gate_up,l8_down,q1.5_qkv,q1.5_o,q1.5_gate_up,q1.5_down,tp2_qkv,tp2_o,tp2_gate_up,tp2_down \
  2>&1 | grep -v Warning | sed -n '1,60p'
rm -rf /tmp/bench29 && cp -r .bench/sb /tmp/bench29
printf '\nWORKLOADS.update({f"decode{n}": (lambda n=n: fixed(n, 32, 256)) for n in (24, 48)})\n' >> /tmp/bench29/workloads.py
for v in base untabled-wide base untabled-wide; do
  ANCHOR_CFG="$AWQ" PAGEDLLM_BENCH_DIR=/tmp/bench29 PYTHONPATH=$R timeout 120 python3 benchmarks/kernels/route_ab.py $v \
    qwen2.5-1.5b decode24 decode48 sharegpt_like_1000 2>&1 | offline_summary "awq1.5b-$v"
done
fi
