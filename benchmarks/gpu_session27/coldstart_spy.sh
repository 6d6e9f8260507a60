#!/bin/bash
# Issue 18's cold start, sampled: `pagedllm serve` 7B dummy to /health 200 from an empty Triton cache under py-spy
# (--subprocesses --idle --threads, raw collapsed stacks into $OUT/spy_raw.txt; the first command on a fresh
# machine, so its page cache is cold too), then two starts without py-spy; the engine process's mapped libraries
# with their sizes in $OUT/maps_*.txt. Carry [".whl", ".bench"]; .whl holds py-spy (`wheelhouse.sh ... py-spy`).
. benchmarks/gpu_session9/common.sh
exec > >(tee $OUT/coldstart_spy.txt) 2>&1
nvidia-smi --query-gpu=name --format=csv,noheader
d=$(mktemp -d); python3 -c "
import json,sys; sys.path.insert(0,'.bench/sb'); from workloads import qwen2_config; json.dump(qwen2_config('${MODEL:-qwen2.5-7b}'), open('$d/config.json','w'))"
start() {   # start TAG [py-spy args...]: serve to /health, print the time and the start-up lines, stop it
  local tag=$1; shift
  export TRITON_CACHE_DIR=/tmp/tcache_spy_$tag
  t0=$(date +%s%N)
  "$@" env PYTHONPATH=$R:/tmp/site python3 -m pagedllm.entrypoints.cli serve $d --load-format dummy --skip-tokenizer-init \
    --max-model-len 4096 --port 8124 --served-model-name m --dtype bfloat16 > $OUT/serve_$tag.log 2>&1 &
  pid=$!
  until curl -sf localhost:8124/health >/dev/null; do sleep 0.05; kill -0 $pid 2>/dev/null || break; done
  kill -0 $pid 2>/dev/null || { echo "$tag: the server exited"; tail -20 $OUT/serve_$tag.log; return; }
  echo "$tag: /health 200 after $(( ($(date +%s%N) - t0) / 1000000 )) ms"
  grep -E "Started the engine|Built .* Triton|start-up |after start-up|CUDA graphs" $OUT/serve_$tag.log | cut -c1-600
  epid=$(grep -o "Started the engine core process pid [0-9]*" $OUT/serve_$tag.log | grep -o "[0-9]*$" | head -1)
  [ -n "$epid" ] && awk '$6 ~ /\.so/ {print $6}' /proc/$epid/maps | sort -u | xargs -r stat -c "%s %n" > $OUT/maps_$tag.txt
  sleep 1
  pkill -INT -f "entrypoints.cli serve" ; wait $pid
  sleep 2
}
# The first start meets a cold page cache too (a fresh machine): it runs under py-spy; the next two find the
# libraries and bytecode cached (still an empty Triton cache each).
start spy timeout 120 /tmp/site/bin/py-spy record -r 200 --subprocesses --idle --threads -f raw -o $OUT/spy_raw.txt --
if [ -z "$ONLY_SPY" ]; then     # ONLY_SPY=1: the sampled start alone
start plain1
start plain2
fi
python3 benchmarks/gpu_session27/spy_summary.py $OUT/spy_raw.txt --min 0.25 --depth 12 | cut -c1-220 > $OUT/spy_summary.txt
head -60 $OUT/spy_summary.txt
