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
# Session 37 ran PART=1, 2, 3 and 5 on an H100 (docs/perf.md, session 37). Queued for session 38, in this order:
# PART=7 (~300 s, any GPU): what session 37 changed after its run: test_qwen2_vl_gpu (dd6771e: the near-tie check
#   through HF generate), test_deepseek_gpu (the V3 FP8 bound; the late-compile test now prints every built
#   _extend_kernel specialisation: find the one start-up misses), test_lora_gpu (DeepSeek adapters under the graphs),
#   then the MLA prefill forms again in chunks of 1,024 (helper-86's chunked context, if it landed: prediction the
#   default at ~0.011 s like expanded-always, against 0.020 s in session 37).
# PART=8 (~330 s): the served rows with session 37's defaults (7B now 2048 tokens a step, 1.5B 8192; CUDA graphs
#   without per-size warm-ups): serve_workload.py 7B and 1.5B at c=100. Prediction (H100): 7B ~8,800 tok/s with an
#   ITL P99 ~28 ms; 1.5B as at 8192 (15,500-17,400). On an H200 also PART=6.
# PART=4 (httptools A/B), then PART=6 on an H200.
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
7)
exec > >(tee $OUT/next37_7.txt) 2>&1
nvidia-smi --query-gpu=name --format=csv,noheader
export PYTHONPATH=$R
for f in test_qwen2_vl_gpu test_deepseek_gpu test_lora_gpu; do
  echo "== $f"; timeout 200 python3 -m pytest -q -p no:cacheprovider tests/gpu/$f.py -rf --tb=short 2>&1 \
    | grep -E "^(FAILED|ERROR)|passed|failed|^E |extend variant|after start-up" | cut -c1-2500 | tail -40
done
for m in expanded expanded-always; do
  echo "== $m, chunks of 1024"; PAGEDLLM_MLA_PREFILL=$m timeout 60 python3 \
    benchmarks/cpu_session36/mla_prefill_chunked.py --gpu --repeats 5 --max-num-batched-tokens 1024 2>&1 | tail -2
done
;;
8)
exec > >(tee $OUT/next37_8.txt) 2>&1
nvidia-smi --query-gpu=name --format=csv,noheader
for m in qwen2.5-7b qwen2.5-1.5b qwen2.5-7b qwen2.5-1.5b; do
  echo "== $m (defaults)"; PATH=/tmp/bin_new:$PATH timeout 150 python3 .bench/sb/serve_workload.py pagedllm $m \
    sharegpt_like_1000 100 2>&1 | tail -1
done
;;
esac
