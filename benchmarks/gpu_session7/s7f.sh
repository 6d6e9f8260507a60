#!/bin/bash
[ -d /tmp/site/fastapi ] || python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
export NCCL_NVLS_ENABLE=0 PYTHONUNBUFFERED=1 PYTHONPATH=$PWD:/tmp/site
d=$(mktemp -d); python3 -c "
import json,sys; sys.path.insert(0,'.bench/sb'); from workloads import qwen2_config; json.dump(qwen2_config('qwen2.5-7b'), open('$d/config.json','w'))"
t0=$(date +%s%N)
python3 -m pagedllm.entrypoints.cli serve $d --load-format dummy --skip-tokenizer-init --max-model-len 4096 --port 8124 --served-model-name m --dtype bfloat16 > $OUT/serve.log 2>&1 &
pid=$!
until curl -sf localhost:8124/health >/dev/null; do sleep 0.2; kill -0 $pid 2>/dev/null || break; done
echo "cold: /health 200 after $(( ($(date +%s%N) - t0) / 1000000 )) ms"
grep -E "start-up |ready in" $OUT/serve.log | cut -c1-300
kill -INT $pid; wait $pid
timeout 60 python3 -m pytest -q -n 8 -p no:cacheprovider tests/gpu/test_quant_packed_kernels.py -k "fused_gemm" 2>&1 | tail -2
