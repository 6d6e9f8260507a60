#!/bin/bash
# Session 10, issue 18: the parallel Triton builds (PAGEDLLM_COMPILE_THREADS, now on by default) on a warm Triton
# cache, where they can only cost (the dry pass): `serve` 7B dummy to /health, one cold start to fill the cache, then
# warm starts alternating the default (16 threads here) and 0. DEBUG logging names the variants built one by one.
# Carry [".whl", ".bench"] (~3 min).
. benchmarks/gpu_session9/common.sh
d=$(mktemp -d); python3 -c "
import json,sys; sys.path.insert(0,'.bench/sb'); from workloads import qwen2_config; json.dump(qwen2_config('qwen2.5-7b'), open('$d/config.json','w'))"
export TRITON_CACHE_DIR=/tmp/tcache_s10a
i=0
for value in default default 0 default 0; do
  i=$((i+1))
  if [ $value = default ]; then unset PAGEDLLM_COMPILE_THREADS; else export PAGEDLLM_COMPILE_THREADS=$value; fi
  t0=$(date +%s%N)
  PAGEDLLM_LOGGING_LEVEL=DEBUG PYTHONPATH=$R:/tmp/site python3 -m pagedllm.entrypoints.cli serve $d --load-format dummy --skip-tokenizer-init --max-model-len 4096 --port 8124 --served-model-name m --dtype bfloat16 > $OUT/s10a_$i.log 2>&1 &
  pid=$!
  until curl -sf localhost:8124/health >/dev/null; do sleep 0.1; kill -0 $pid 2>/dev/null || break; done
  echo "run $i threads=$value: /health 200 after $(( ($(date +%s%N) - t0) / 1000000 )) ms"
  grep -E "start-up  |Built .* Triton|built a kernel variant during" $OUT/s10a_$i.log | cut -c1-330
  kill -INT $pid; wait $pid
done
