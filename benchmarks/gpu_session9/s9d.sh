#!/bin/bash
# Issue 18: served steps of ~8k prompt tokens take 52-58 ms mostly but 140-330 ms at times (s9b/s9c traces).
# Suspect: the CUDA caching allocator freeing its cache and retrying (KV cache sized to the profiled peak, then
# fragmentation). A/B: default vs PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True, c = 64, 100, 256, step trace
# with the allocator's retry count. Carry [".whl", ".bench"] as s9a.sh.
. benchmarks/gpu_session9/common.sh
export TRITON_CACHE_DIR=/tmp/tcache_s9
trace='
import sys, json, numpy as np
rows = [json.loads(l) for l in open(sys.argv[1])]
big = [r for r in rows if r["prompt_tokens"] > 7000]
print("  trace: alloc retries %d; steps with > 7000 prompt tokens: %d, step ms %s" % (rows[-1]["alloc_retries"], len(big), sorted(round(r["step"]) for r in big)))'
i=0
for conf in ${CONFS:-default expandable_segments:True}; do
  i=$((i+1)); mkdir -p $OUT/a$i
  ( [ $conf != default ] && export PYTORCH_CUDA_ALLOC_CONF=$conf
    PAGEDLLM_STEP_TRACE=$OUT/a$i/steps.jsonl PATH=/tmp/bin_new:$PATH PYTHONPATH=/tmp/site \
    timeout 200 python3 benchmarks/serve_sweep.py pagedllm qwen2.5-7b --concs ${CONCS:-64,100,256} --workloads .bench/sb --log-dir $OUT/a$i \
    | sed "s/^/$conf /" | python3 -c "$SUMM" )
  python3 -c "$trace" $OUT/a$i/steps.jsonl
  grep -h "KV cache  \|activation" $OUT/a$i/sweep_server_pagedllm_qwen2.5-7b.log | head -2 | cut -c1-200
done
