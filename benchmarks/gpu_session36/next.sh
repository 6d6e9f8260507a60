#!/bin/bash
# Session 36 (carry [".whl", ".bench"]; run from the repo root; .bench/old = `git archive b84018f pagedllm`, see
# benchmarks/gpu_session33/next.sh). One PART a call.
# PART=1 (~420 s, any H100/H200): session 34's queue PART=1 (kernel tests under -n 8, then each new architecture's
#   engine file alone, DeepSeek's latent MLA cache included: session 35's 86fc4ee / 5f2b903 / 86ab0af, never run on a
#   GPU), then its PART=4 (Qwen2-VL with tracebacks, the Falcon bf16 bisect).
# PART=2 (~500 s): issue 18's cold start (this tree, session 32's tree, this tree: serve 7B dummy to /health, empty
#   Triton cache each), issue 13's AWQ 7B rows and 18's 1.5B bs1, then ANCHORS' served 7B row once (session 35's
#   API-server changes; prediction 0-3% over session 9's 10,162-10,268 on an H200).
. benchmarks/gpu_session9/common.sh
case "${PART:-1}" in
1)
PART=1 bash benchmarks/gpu_session34/next.sh
cp $OUT/next34_1.txt $OUT/next36_1a.txt
PART=4 bash benchmarks/gpu_session34/next.sh
;;
2)
exec > >(tee $OUT/next36_2.txt) 2>&1
nvidia-smi --query-gpu=name --format=csv,noheader
d=$(mktemp -d); python3 -c "
import json,sys; sys.path.insert(0,'.bench/sb'); from workloads import qwen2_config; json.dump(qwen2_config('qwen2.5-7b'), open('$d/config.json','w'))"
i=0
for tree in new old new; do
  i=$((i+1)); export TRITON_CACHE_DIR=/tmp/tcache36_$i
  src=$R; [ $tree = old ] && { src=$R/.bench/old; [ -d $src/pagedllm ] || { echo "no .bench/old"; continue; }; }
  t0=$(date +%s%N)
  (cd $src && PYTHONPATH=$src:/tmp/site exec timeout 60 python3 -m pagedllm.entrypoints.cli serve $d --load-format dummy \
    --skip-tokenizer-init --max-model-len 4096 --port 8124 --served-model-name m --dtype bfloat16) > $OUT/serve36_$i.log 2>&1 &
  pid=$!
  until curl -sf localhost:8124/health >/dev/null; do sleep 0.1; kill -0 $pid 2>/dev/null || break; done
  echo "$tree: /health 200 after $(( ($(date +%s%N) - t0) / 1000000 )) ms"
  grep -E "start-up " $OUT/serve36_$i.log | cut -c1-600
  kill -INT $pid; wait $pid
done
unset TRITON_CACHE_DIR
ANCHOR_CFG="$AWQ" PYTHONPATH=$R timeout 110 python3 .bench/sb/offline_workload.py pagedllm qwen2.5-7b bs1_128_256 \
  sharegpt_like_1000 latency_8x1024x1024 2>&1 | offline_summary awq
PYTHONPATH=$R timeout 45 python3 .bench/sb/offline_workload.py pagedllm qwen2.5-1.5b bs1_128_256 2>&1 | offline_summary "1.5b"
PATH=/tmp/bin_new:$PATH PYTHONPATH=$R:/tmp/site timeout 200 python3 .bench/sb/serve_workload.py pagedllm qwen2.5-7b sharegpt_like_1000 100 2>&1 | tail -3
;;
esac
