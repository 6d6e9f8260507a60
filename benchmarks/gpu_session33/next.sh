#!/bin/bash
# Session 33 (carry [".whl", ".bench"]; .bench/old holds `git archive b84018f pagedllm`, session 32's tree, made on the
# CPU before the call: `rm -rf .bench/old && mkdir -p .bench/old && git archive b84018f pagedllm | tar -x -C .bench/old`).
# One PART a call, in this order. Session 33 never ran it (no machine started).
# PART=1 (~300 s, any H100/H200): the fp32 / routing / wide int4 kernel tests and the AWQ / GPTQ engine tests (session
#   32's fp32 fix, never run on a GPU), then issue 18's cold start, `serve` 7B dummy to /health with an empty Triton
#   cache, session 32's tree (b84018f) against this one, alternating (new old new old). This session's CPU start-up
#   changes (docs/perf.md "session 33, CPU": tokenizers while the core builds, heap freezes, no collections through
#   imports and config) predict ~0.3-0.6 s less on a 16-core host (the 7B run passes --skip-tokenizer-init).
# PART=2 (~420 s): session 32's PART=6 (the pairs configs' 3-stage twins at 24..128 rows, AWQ ShareGPT A/B).
# PART=3 (~200 s): AWQ 7B's three rows (issue 13) and bf16 1.5B bs1 (issue 18).
. benchmarks/gpu_session9/common.sh
exec > >(tee $OUT/next33_${PART:-1}.txt) 2>&1
nvidia-smi --query-gpu=name --format=csv,noheader
case "${PART:-1}" in
1)
PYTHONPATH=$R timeout 90 python3 -m pytest -q -n 8 -p no:cacheprovider tests/gpu/test_quant_packed_kernels.py \
  tests/gpu/test_quant_awq_engine_gpu.py tests/gpu/test_quant_gptq_engine_gpu.py -k "fp32_x or routing or wide or awq \
  or gptq" 2>&1 | grep -E "^(FAILED|ERROR)|passed|failed" | tail -8
d=$(mktemp -d); python3 -c "
import json,sys; sys.path.insert(0,'.bench/sb'); from workloads import qwen2_config; json.dump(qwen2_config('qwen2.5-7b'), open('$d/config.json','w'))"
i=0
for tree in new old new old; do
  i=$((i+1)); export TRITON_CACHE_DIR=/tmp/tcache33_$i
  src=$R; [ $tree = old ] && { src=$R/.bench/old; [ -d $src/pagedllm ] || { echo "no .bench/old"; exit 1; }; }
  t0=$(date +%s%N)
  # from $src: `python3 -m` puts the working folder first on sys.path
  (cd $src && PYTHONPATH=$src:/tmp/site exec timeout 60 python3 -m pagedllm.entrypoints.cli serve $d --load-format dummy \
    --skip-tokenizer-init --max-model-len 4096 --port 8124 --served-model-name m --dtype bfloat16) > $OUT/serve33_$i.log 2>&1 &
  pid=$!
  until curl -sf localhost:8124/health >/dev/null; do sleep 0.1; kill -0 $pid 2>/dev/null || break; done
  echo "$tree: /health 200 after $(( ($(date +%s%N) - t0) / 1000000 )) ms"
  grep -E "start-up " $OUT/serve33_$i.log | cut -c1-500
  curl -s localhost:8124/v1/completions -H 'Content-Type: application/json' -d '{"model":"m","prompt":[1,2,3],"max_tokens":4,"ignore_eos":true}' | head -c 120; echo
  kill -INT $pid; wait $pid
done
;;
2) PART=6 bash benchmarks/gpu_session32/next.sh ;;
3)
ANCHOR_CFG="$AWQ" PYTHONPATH=$R timeout 110 python3 .bench/sb/offline_workload.py pagedllm qwen2.5-7b bs1_128_256 \
  sharegpt_like_1000 latency_8x1024x1024 2>&1 | offline_summary awq
PYTHONPATH=$R timeout 45 python3 .bench/sb/offline_workload.py pagedllm qwen2.5-1.5b bs1_128_256 2>&1 | offline_summary "1.5b"
;;
esac
