#!/bin/bash
# Session 37 (carry [".whl", ".bench"]; run from the repo root; .bench/old = `git archive b84018f pagedllm`). One PART
# a call; keep the machine warm (it goes back after 30 s idle) by starting the next call at once.
# PART=1 (~420 s, any H100 / H200): the capture without per-size warm-ups (worker/cuda_graphs.capture_after_warm_up,
#   PAGEDLLM_CAPTURE_WARMUP_EACH=0) -- its GPU test, the engine GPU tests with it (graphs against HF greedy), then
#   `serve` 7B dummy to /health, an empty Triton cache each start, EACH=1 (today's default) and 0 alternating.
#   Prediction (session 36's H100 cold start: decode graphs 4.0 s of which warm-up forwards 2.8, piecewise 1.9 of
#   which 1.1): the CUDA-graph phase 4.1 -> ~1.5 s, /health 2.5-3.5 s sooner; 0 captured again (start-up's dry pass
#   builds every row bucket's variants); the same greedy tokens.
# PART=2 (~450 s): session 36's PART=3 (kernel files, DeepSeek (now with LoRA: helper-85's e1d4707), Qwen2-VL, LoRA).
# PART=3..6: session 36's PART=6 (ITL P99 against max-num-batched-tokens), 4 (httptools A/B), 5 (MLA prefill forms,
#   MXFP4 bs1), 2 (issue 13 / 18 rows; on an H200 only).
. benchmarks/gpu_session9/common.sh
case "${PART:-1}" in
1)
exec > >(tee $OUT/next37_1.txt) 2>&1
nvidia-smi --query-gpu=name --format=csv,noheader
export PYTHONPATH=$R
PAGEDLLM_CAPTURE_WARMUP_EACH=0 timeout 240 python3 -m pytest -q -n 8 -p no:cacheprovider \
  tests/gpu/test_parallel_compile.py tests/gpu/test_engine_gpu.py 2>&1 | grep -E "^(FAILED|ERROR)|passed|failed|^E " | tail -15
d=$(mktemp -d); python3 -c "
import json,sys; sys.path.insert(0,'.bench/sb'); from workloads import qwen2_config; json.dump(qwen2_config('qwen2.5-7b'), open('$d/config.json','w'))"
i=0
for each in 1 0 1 0; do
  i=$((i+1)); export TRITON_CACHE_DIR=/tmp/tcache37_$i
  t0=$(date +%s%N)
  PAGEDLLM_CAPTURE_WARMUP_EACH=$each PYTHONPATH=$R:/tmp/site timeout 60 python3 -m pagedllm.entrypoints.cli serve $d \
    --load-format dummy --skip-tokenizer-init --max-model-len 4096 --port 8124 --served-model-name m \
    --dtype bfloat16 > $OUT/serve37_$i.log 2>&1 &
  pid=$!
  until curl -sf localhost:8124/health >/dev/null; do sleep 0.1; kill -0 $pid 2>/dev/null || break; done
  echo "EACH=$each: /health 200 after $(( ($(date +%s%N) - t0) / 1000000 )) ms"
  grep -E "start-up |Captured" $OUT/serve37_$i.log | cut -c1-400
  # one greedy completion through the graphs (token ids: --skip-tokenizer-init)
  curl -s localhost:8124/v1/completions -H 'Content-Type: application/json' \
    -d '{"model": "m", "prompt": [1, 2, 3, 4, 5, 6, 7, 8], "max_tokens": 12, "temperature": 0, "return_token_ids": true}' \
    | python3 -c "import sys, json; d = json.load(sys.stdin); c = d['choices'][0]; print('tokens', c.get('token_ids') or c.get('text'))"
  kill -INT $pid; wait $pid
done
unset TRITON_CACHE_DIR
;;
2) PART=3 bash benchmarks/gpu_session36/next.sh ;;
3) PART=6 bash benchmarks/gpu_session36/next.sh ;;
4) PART=4 bash benchmarks/gpu_session36/next.sh ;;
5) PART=5 bash benchmarks/gpu_session36/next.sh ;;
6) PART=2 bash benchmarks/gpu_session36/next.sh ;;
esac
