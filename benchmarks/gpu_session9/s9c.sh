#!/bin/bash
# Issue 18: the garbage collector's full collections in the served engine process (decode-only steps of 36-52 ms
# in s9b's traces) -- A/B of PAGEDLLM_GC_FREEZE 0 / 1, each a fresh server through benchmarks/serve_sweep.py over
# the whole sweep (c = 1, 16, 64, 100, 256; the first sweep, s9a, lost 6-10% at c = 64/100 after c = 1/16), with
# the step trace (its gc / gc2 fields); then the unchanged serve_workload.py at c = 100 with the default (frozen).
# Carry [".whl", ".bench"] as s9a.sh.
. benchmarks/gpu_session9/common.sh
export TRITON_CACHE_DIR=/tmp/tcache_s9
trace='
import sys, json, numpy as np
rows = [json.loads(l) for l in open(sys.argv[1])]
t = np.array([r["t"] for r in rows]); wall = np.diff(t) * 1e3; rows = rows[:-1]
dec = np.array([w for r, w in zip(rows, wall) if r["prompt_tokens"] == 0 and r["running"] >= 16 and r["gap"] < 1000])
print("  trace: gc %.0f ms total, %d full collections, %d steps; decode-only steps (>=16 running) %d, p50 %.2f p99 %.2f max %.1f ms, %d over 20 ms"
      % (sum(r["gc"] for r in rows), sum(r["gc2"] for r in rows), len(rows), len(dec), np.percentile(dec, 50), np.percentile(dec, 99), dec.max(), (dec > 20).sum()))'
i=0
for fz in ${FREEZES:-0 1}; do
  i=$((i+1)); mkdir -p $OUT/f$i
  PAGEDLLM_GC_FREEZE=$fz PAGEDLLM_STEP_TRACE=$OUT/f$i/steps.jsonl PATH=/tmp/bin_new:$PATH PYTHONPATH=/tmp/site \
    timeout 260 python3 benchmarks/serve_sweep.py pagedllm qwen2.5-7b --concs ${CONCS:-1,16,64,100,256} --workloads .bench/sb --log-dir $OUT/f$i \
    | sed "s/^/freeze=$fz /" | python3 -c "$SUMM"
  python3 -c "$trace" $OUT/f$i/steps.jsonl
  grep -h "frozen out" $OUT/f$i/sweep_server_pagedllm_qwen2.5-7b.log | cut -c1-160
  echo "  late compiles: $(grep -c 'after start-up' $OUT/f$i/sweep_server_pagedllm_qwen2.5-7b.log)"
done
if [ -z "$SKIP_C100" ]; then
PATH=/tmp/bin_new:$PATH PYTHONPATH=/tmp/site LOG_DIR=$OUT timeout 150 python3 .bench/sb/serve_workload.py pagedllm qwen2.5-7b sharegpt_like_1000 100 | sed "s/^/unchanged /" | python3 -c "$SUMM"
echo "  late compiles: $(grep -c 'after start-up' $OUT/server_pagedllm_qwen2.5-7b.log)"
fi
