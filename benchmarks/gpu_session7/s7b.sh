#!/bin/bash
# Session 7, call B: where the served start-up goes (cold, then warm Triton cache), and import times on this host.
[ -d /tmp/site/fastapi ] || python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
export NCCL_NVLS_ENABLE=0 PYTHONUNBUFFERED=1 PYTHONPATH=$PWD:/tmp/site
for m in torch triton transformers fastapi pagedllm.entrypoints.cli; do
  python3 -c "import time; t=time.perf_counter(); import $m; print('import $m %.2f s' % (time.perf_counter()-t))"
done
python3 -c "import time; t=time.perf_counter(); import torch; torch.zeros(1, device='cuda'); print('torch + CUDA init %.2f s' % (time.perf_counter()-t))"
d=$(mktemp -d); python3 -c "
import json,sys; sys.path.insert(0,'.bench/sb'); from workloads import qwen2_config; json.dump(qwen2_config('qwen2.5-7b'), open('$d/config.json','w'))"
export TRITON_CACHE_DIR=/tmp/tcache_s7b
for run in cold warm; do
  [ $run = cold ] && rm -rf $TRITON_CACHE_DIR
  t0=$(date +%s.%N)
  python3 -m pagedllm.entrypoints.cli serve $d --load-format dummy --skip-tokenizer-init --max-model-len 4096 --port 8124 --served-model-name m --dtype bfloat16 > $OUT/serve_$run.log 2>&1 &
  pid=$!
  until curl -sf localhost:8124/health >/dev/null; do sleep 0.2; kill -0 $pid 2>/dev/null || break; done
  echo "$run: /health 200 after $(echo "$(date +%s.%N) - $t0" | bc) s"
  grep -E "start-up |ready in|API server version|Captured|Starting the server" $OUT/serve_$run.log | cut -c1-260
  kill -INT $pid; wait $pid
done
