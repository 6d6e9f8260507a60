#!/bin/bash
# Session 36 (carry [".whl", ".bench"]; run from the repo root; .bench/old = `git archive b84018f pagedllm`, see
# benchmarks/gpu_session33/next.sh). One PART a call.
# PART=1 (~420 s, any H100/H200): session 34's queue PART=1 (kernel tests under -n 8, then each new architecture's
#   engine file alone, DeepSeek's latent MLA cache included: session 35's 86fc4ee / 5f2b903 / 86ab0af, never run on a
#   GPU), then its PART=4 (Qwen2-VL with tracebacks, the Falcon bf16 bisect).
# PART=2 (~500 s): issue 18's cold start (this tree, session 32's tree, this tree: serve 7B dummy to /health, empty
#   Triton cache each), issue 13's AWQ 7B rows and 18's 1.5B bs1, then ANCHORS' served 7B row once (session 35's
#   API-server changes; prediction 0-3% over session 9's 10,162-10,268 on an H200).
# Session 36 ran PART=1 and PART=2 on an H100 (docs/perf.md, session 36). Queued for the next session, from a
#   `git archive HEAD` snapshot (carry .bench/tree as this session did, or the tree itself when no helper runs).
#   Order when device time is short: 3 (correctness after this session's fixes), 6, 4, 5; on an H200 also PART=2
#   (issue 13's and 18's rows are H200 targets). Each PART ends within a 600 s call; keep the machine warm between
#   calls (it goes back after 30 s idle) by starting the next call at once.
# PART=3 (~450 s): what PART=1 left or found: the kernel files (-n 8, 300 s: session 34's 100 s ran out on a fresh
#   machine), test_deepseek_gpu (0640aae's fix of the FP8 kv_b_proj dequantized in the dry pass; helper-82's
#   expanded MLA prefill, its Triton varlen_attention / attend_decodes and fp32 V3 runs per PAGEDLLM_MLA_PREFILL),
#   test_qwen2_vl_gpu (a7fd748: near-tie rule; expected to pass, HF's gap at the parted token was 0.0037), test_lora_gpu.
# PART=4 (~420 s): httptools + uvloop (6252c73 made them dependencies) against h11 + asyncio, ANCHORS' served 7B row,
#   alternating (both, neither, both, neither). Prediction: within the 5-10% run-to-run spread of the served row
#   (session 35's CPU measurement: -9% API-server CPU per token; session 4 saw 7,234 with both against 8,375 with
#   neither, once each, at an older tree).
# PART=5 (~200 s): DeepSeek MLA prefill, absorbed / expanded / expanded-always, bf16 on the GPU
#   (benchmarks/cpu_session36/mla_prefill_chunked.py --gpu; 3072-token prompt in chunks of 1024, then of 4096).
#   Prediction: expanded 2-3x faster than absorbed at these lengths (the absorbed extend kernel runs 576-wide heads
#   on 16 x 16 tiles).
#   Then gpt-oss-20b MXFP4 batch-1 decode with the 32-wide N tiles at <= 4 slots (triton_moe._tiles, session 36):
#   session 34 measured 140.0 tok/s on an H100 with 64-wide tiles; prediction ~155-160 (the MoE layer 240 -> 203 us
#   in session 34's kernel run, 24 layers).
# PART=6 (~330 s): issue 18's ITL P99 (H100 session 36: 42.5 ms against vLLM's 36.9) against its TTFT headroom (39 ms
#   against 82): the served 7B row at --max-num-batched-tokens 8192 (the server default, vLLM's), 4096 and 2048.
#   Prediction: at 2048 the ITL P99 ~25-30 ms (a 2k-token prefill chunk costs ~4x less than an 8k one), TTFT median
#   up to ~45-60 ms, throughput within +-3%. A default changes only on that measurement.
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
3)
exec > >(tee $OUT/next36_3.txt) 2>&1
nvidia-smi --query-gpu=name --format=csv,noheader
export PYTHONPATH=$R
timeout 300 python3 -m pytest -q -n 8 -p no:cacheprovider tests/gpu/test_triton_attention.py tests/gpu/test_triton_moe.py \
  tests/gpu/test_quant_packed_kernels.py 2>&1 | grep -E "^(FAILED|ERROR)|passed|failed" | tail -20
for f in test_deepseek_gpu test_qwen2_vl_gpu test_lora_gpu; do
  echo "== $f"; timeout 200 python3 -m pytest -q -p no:cacheprovider tests/gpu/$f.py -rf --tb=short 2>&1 \
    | grep -E "^(FAILED|ERROR)|passed|failed|^E " | tail -12
done
;;
4)
exec > >(tee $OUT/next36_4.txt) 2>&1
nvidia-smi --query-gpu=name --format=csv,noheader
# "neither": httptools moved out of /tmp/site (common.sh's .pth puts /tmp/site on every sys.path) and the asyncio
# loop forced (the GPU host has uvloop installed system-wide); the start-up line says which ran.
for v in both neither both neither; do
  loop=auto
  if [ $v = neither ]; then loop=asyncio; mv /tmp/site/httptools /tmp/httptools_off; fi
  mkdir -p $OUT/log36_4_$v; echo "== $v"; PAGEDLLM_EVENT_LOOP=$loop LOG_DIR=$OUT/log36_4_$v PATH=/tmp/bin_new:$PATH timeout 200 \
    python3 .bench/sb/serve_workload.py pagedllm qwen2.5-7b sharegpt_like_1000 100 2>&1 | tail -1
  grep -rh "Starting the server" $OUT/log36_4_$v 2>/dev/null | tail -1 | grep -o "event loop.*"
  [ -d /tmp/httptools_off ] && mv /tmp/httptools_off /tmp/site/httptools
done
;;
5)
exec > >(tee $OUT/next36_5.txt) 2>&1
nvidia-smi --query-gpu=name --format=csv,noheader
for b in 1024 4096; do for m in absorbed expanded expanded-always; do
  echo "== $m, chunks of $b"; PAGEDLLM_MLA_PREFILL=$m PYTHONPATH=$R timeout 60 python3 \
    benchmarks/cpu_session36/mla_prefill_chunked.py --gpu --repeats 5 --max-num-batched-tokens $b 2>&1 | tail -2
done; done
PYTHONPATH=$R timeout 90 python3 benchmarks/moe_mxfp4.py engine --format mxfp4
;;
6)
exec > >(tee $OUT/next36_6.txt) 2>&1
nvidia-smi --query-gpu=name --format=csv,noheader
for t in 8192 4096 2048; do
  printf '#!/bin/bash\nPYTHONPATH=%s:/tmp/site exec python3 -m pagedllm.entrypoints.cli "$@" --max-num-batched-tokens %s\n' \
    "$R" "$t" > /tmp/bin_new/pagedllm
  echo "== max_num_batched_tokens $t"; PATH=/tmp/bin_new:$PATH timeout 200 \
    python3 .bench/sb/serve_workload.py pagedllm qwen2.5-7b sharegpt_like_1000 100 2>&1 | tail -1
done
;;
esac
