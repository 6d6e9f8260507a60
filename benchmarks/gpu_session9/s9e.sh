#!/bin/bash
# Prepared in session 9, not run (the device time was spent). Issue 18: `pagedllm serve` 7B dummy to /health 200
# with the engine process spawned first from the command line (PAGEDLLM_EARLY_ENGINE=1, ef1a364) or after the
# server's imports (0), alternating, each from an empty Triton cache; prints each start-up timeline.
# Prediction: 26.6 s -> ~21.5 s (the server's ~5.6 s before the spawn overlaps the engine's build).
# Carry [".whl", ".bench"] as s9a.sh (~3 min).
. benchmarks/gpu_session9/common.sh
d=$(mktemp -d); python3 -c "
import json,sys; sys.path.insert(0,'.bench/sb'); from workloads import qwen2_config; json.dump(qwen2_config('qwen2.5-7b'), open('$d/config.json','w'))"
i=0
for early in ${EARLY:-1 0 1 0}; do
  i=$((i+1)); export TRITON_CACHE_DIR=/tmp/tcache_s9e_$i
  t0=$(date +%s%N)
  PAGEDLLM_EARLY_ENGINE=$early PYTHONPATH=$R:/tmp/site python3 -m pagedllm.entrypoints.cli serve $d --load-format dummy --skip-tokenizer-init --max-model-len 4096 --port 8124 --served-model-name m --dtype bfloat16 > $OUT/serve_$i.log 2>&1 &
  pid=$!
  until curl -sf localhost:8124/health >/dev/null; do sleep 0.1; kill -0 $pid 2>/dev/null || break; done
  echo "early=$early: /health 200 after $(( ($(date +%s%N) - t0) / 1000000 )) ms"
  grep -E "Started the engine|start-up " $OUT/serve_$i.log | cut -c1-400
  kill -INT $pid; wait $pid
done
