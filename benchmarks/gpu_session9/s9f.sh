#!/bin/bash
# Prepared in session 9, not run (the device time was spent). Issue 18: the Triton variants of the start-up warm-up
# built on threads (PAGEDLLM_COMPILE_THREADS, kernels/parallel_compile.py; off by default until this runs).
# First its GPU test, then `pagedllm serve` 7B dummy to /health from an empty Triton cache, 0 vs 16 threads,
# alternating; the start-up timeline of each. Prediction: memory profile + warm-up 8.4 s -> ~4.7 s (the 6.5 s of
# builds -> ~2.8 s), the dry pass adding ~1 s. Carry [".whl", ".bench"] as s9a.sh (~4 min).
. benchmarks/gpu_session9/common.sh
python3 -m pytest -q -p no:cacheprovider tests/gpu/test_parallel_compile.py tests/gpu/test_triton_ops.py 2>&1 | tail -3
d=$(mktemp -d); python3 -c "
import json,sys; sys.path.insert(0,'.bench/sb'); from workloads import qwen2_config; json.dump(qwen2_config('qwen2.5-7b'), open('$d/config.json','w'))"
i=0
for threads in ${THREADS:-16 0 16 0}; do
  i=$((i+1)); export TRITON_CACHE_DIR=/tmp/tcache_s9f_$i
  t0=$(date +%s%N)
  PAGEDLLM_COMPILE_THREADS=$threads PYTHONPATH=$R:/tmp/site python3 -m pagedllm.entrypoints.cli serve $d --load-format dummy --skip-tokenizer-init --max-model-len 4096 --port 8124 --served-model-name m --dtype bfloat16 > $OUT/serve_$i.log 2>&1 &
  pid=$!
  until curl -sf localhost:8124/health >/dev/null; do sleep 0.1; kill -0 $pid 2>/dev/null || break; done
  echo "threads=$threads: /health 200 after $(( ($(date +%s%N) - t0) / 1000000 )) ms"
  grep -E "Built .* Triton|start-up |after start-up" $OUT/serve_$i.log | cut -c1-400
  curl -s localhost:8124/v1/completions -H 'Content-Type: application/json' -d '{"model":"m","prompt":[1,2,3],"max_tokens":4,"ignore_eos":true}' | head -c 200; echo
  kill -INT $pid; wait $pid
done
