#!/bin/bash
# Prepared in session 9, not run (the device time was spent). Issue 18: `pagedllm serve` 7B dummy to /health 200
# from an empty Triton cache, alternating the values of one start-up switch; prints each start-up timeline and
# answers one completion. Default: PAGEDLLM_EARLY_ENGINE 1 / 0 (the engine process spawned first from the command
# line, ef1a364, or after the server's imports); prediction 26.6 s -> ~21.5 s. s9f.sh runs it for
# PAGEDLLM_COMPILE_THREADS. Carry [".whl", ".bench"] as s9a.sh (~3 min).
. benchmarks/gpu_session9/common.sh
SWITCH=${SWITCH:-PAGEDLLM_EARLY_ENGINE}
d=$(mktemp -d); python3 -c "
import json,sys; sys.path.insert(0,'.bench/sb'); from workloads import qwen2_config; json.dump(qwen2_config('qwen2.5-7b'), open('$d/config.json','w'))"
i=0
for value in ${VALUES:-1 0 1 0}; do
  i=$((i+1)); export TRITON_CACHE_DIR=/tmp/tcache_${SWITCH}_$i
  t0=$(date +%s%N)
  env $SWITCH=$value PYTHONPATH=$R:/tmp/site python3 -m pagedllm.entrypoints.cli serve $d --load-format dummy --skip-tokenizer-init --max-model-len 4096 --port 8124 --served-model-name m --dtype bfloat16 > $OUT/serve_${SWITCH}_$i.log 2>&1 &
  pid=$!
  until curl -sf localhost:8124/health >/dev/null; do sleep 0.1; kill -0 $pid 2>/dev/null || break; done
  echo "$SWITCH=$value: /health 200 after $(( ($(date +%s%N) - t0) / 1000000 )) ms"
  grep -E "Started the engine|Built .* Triton|start-up |after start-up" $OUT/serve_${SWITCH}_$i.log | cut -c1-400
  curl -s localhost:8124/v1/completions -H 'Content-Type: application/json' -d '{"model":"m","prompt":[1,2,3],"max_tokens":4,"ignore_eos":true}' | head -c 200; echo
  kill -INT $pid; wait $pid
done
