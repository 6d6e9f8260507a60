#!/bin/bash
# Issue 18: do steps above the piecewise graphs' 512 tokens (run eagerly) make the served ITL P99 (c = 64: 43 ms
# against vLLM's 25)? A/B of PAGEDLLM_PIECEWISE_MAX_TOKENS 512 / 2048, alternating, each a fresh server through
# benchmarks/serve_sweep.py at c = 64 and 100, with the step trace (benchmarks/serve_step_trace.py reads it).
# Carry [".whl", ".bench"] as s9a.sh.
. benchmarks/gpu_session9/common.sh
export TRITON_CACHE_DIR=/tmp/tcache_s9
i=0
for cap in ${CAPS:-512 2048 512 2048}; do
  i=$((i+1)); mkdir -p $OUT/r$i
  PAGEDLLM_PIECEWISE_MAX_TOKENS=$cap PAGEDLLM_STEP_TRACE=$OUT/r$i/steps.jsonl PATH=/tmp/bin_new:$PATH PYTHONPATH=/tmp/site \
    timeout 200 python3 benchmarks/serve_sweep.py pagedllm qwen2.5-7b --concs ${CONCS:-64,100} --workloads .bench/sb --log-dir $OUT/r$i \
    | sed "s/^/cap=$cap /" | python3 -c "$SUMM"
  grep -E "Captured piecewise|CUDA-graph pool" $OUT/r$i/sweep_server_pagedllm_qwen2.5-7b.log | cut -c1-200
  echo "late compiles: $(grep -c 'after start-up' $OUT/r$i/sweep_server_pagedllm_qwen2.5-7b.log)"
done
