#!/bin/bash
# Issue 18: do steps above the piecewise graphs' 512 tokens (run eagerly) make the served ITL P99 (c = 64: 43 ms
# against vLLM's 25)? A/B of PAGEDLLM_PIECEWISE_MAX_TOKENS 512 / 2048, alternating, each a fresh server through
# benchmarks/serve_sweep.py at c = 64 and 100, with the step trace (benchmarks/serve_step_trace.py reads it).
# Carry [".whl", ".bench"] as s9a.sh.
[ -d /tmp/site/opentelemetry ] || python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
export NCCL_NVLS_ENABLE=0 PYTHONUNBUFFERED=1 TRITON_CACHE_DIR=/tmp/tcache_s9
R=$PWD
mkdir -p /tmp/bin_new
printf '#!/bin/bash\nPYTHONPATH=%s:/tmp/site exec python3 -m pagedllm.entrypoints.cli "$@"\n' "$R" > /tmp/bin_new/pagedllm
chmod +x /tmp/bin_new/pagedllm
i=0
for cap in ${CAPS:-512 2048 512 2048}; do
  i=$((i+1)); mkdir -p $OUT/r$i
  PAGEDLLM_PIECEWISE_MAX_TOKENS=$cap PAGEDLLM_STEP_TRACE=$OUT/r$i/steps.jsonl PATH=/tmp/bin_new:$PATH PYTHONPATH=/tmp/site \
    timeout 200 python3 benchmarks/serve_sweep.py pagedllm qwen2.5-7b --concs ${CONCS:-64,100} --workloads .bench/sb --log-dir $OUT/r$i \
    | sed "s/^/cap=$cap /" | python3 -c "
import sys, json
for l in sys.stdin:
    cap, j = l.split(' ', 1); d = json.loads(j)
    print(cap, 'c=%d' % d['concurrency'], d['output_tok_s'], 'ttft', d['ttft_ms']['median'], 'tpot', d['tpot_ms']['median'], 'itl p99', d['itl_ms']['p99'], 'start', d['startup_s'])"
  grep -E "Captured piecewise|CUDA-graph pool" $OUT/r$i/sweep_server_pagedllm_qwen2.5-7b.log | cut -c1-200
  echo "late compiles: $(grep -c 'after start-up' $OUT/r$i/sweep_server_pagedllm_qwen2.5-7b.log)"
done
