#!/bin/bash
# Prepared in session 20 for the next GPU session (not run: the session's device time was spent). Carry
# [".whl", ".bench"]; an H200 if lent (issue 13's rows are H200 figures); compare only within one call.
# The change: triton_packed's decode (2..16 rows), dequantize (scratch + cuBLAS, most AWQ steps above 32 rows) and
# fused-GEMM kernels take their column indices unclamped where N is a multiple of the tile (EVEN_N). Offline sm_90
# SASS: the dequantize kernel 1,424 -> 864 instructions a program, its 130 scalar shared stores + 19 barriers (a
# layout conversion before its 16 B stores) gone, words loaded 16 B a thread instead of 16 scalar loads; the 2..16-row
# dot config 840 -> 720, its cp.async word copies 16 B instead of 4 B.
# Predictions: dequantize ~3.0 -> ~4.0 TB/s (gate_up's scratch path at 128 rows 185 -> ~155 µs); AWQ ShareGPT
# ~9,150 -> ~9,500-9,700 tok/s (+4-6%: ~800 steps above 64 rows save ~1.3 ms each); AWQ bs1 unchanged (GEMV).
# PART=1 (~7.5 min): the quant kernel tests + AWQ engine test; the graph-size engine test; the scratch path's µs per shape (quant_kernels.py, M = 256
# and 4096); AWQ ShareGPT and latency_8x1024x1024 (2..16-row decode) new vs awq-clamped, alternating, two rounds.
. benchmarks/gpu_session9/common.sh
exec > >(tee $OUT/next20_${PART:-1}.txt) 2>&1
nvidia-smi --query-gpu=name --format=csv,noheader
AWQ='{"quantization_config": {"quant_method": "awq", "bits": 4, "group_size": 128, "zero_point": true, "version": "gemm"}}'
AB="python3 benchmarks/kernels/route_ab.py"
if [ "${PART:-1}" = 1 ]; then
if [ -z "$SKIP_TESTS" ]; then    # session 22 ran the tests in their own call (gpu_session22/run.sh PART=1)
PYTHONPATH=$R timeout 150 python3 -m pytest -q -p no:cacheprovider -n 8 -rfs --tb=short \
  tests/gpu/test_quant_packed_kernels.py tests/gpu/test_quant_awq_engine_gpu.py 2>&1 \
  | grep -vE "^\s*$|Warning|warner" | cut -c1-300 | tail -12
# The cudagraph_capture_sizes / max_cudagraph_capture_size settings (session 20, never run on a GPU): the graphs
# captured are the sizes asked for, tokens HF-greedy.
# Session 21 (a CPU-only session) added, never run on a GPU: Gemma, Gemma 2 (the Triton SOFTCAP and WINDOW paths),
# Gemma 3 (two rotary tables), Granite, Phi-3 (partial rotary) to the models of this file, MoE (Qwen3-MoE, Mixtral,
# eager), the RLHF weight update into captured CUDA graphs and logprobs_mode raw_logits: the whole file (~3 min on 8
# workers), then the new Triton attention tests.
PYTHONPATH=$R timeout 240 python3 -m pytest -q -p no:cacheprovider -n 8 -rfs --tb=short tests/gpu/test_engine_gpu.py 2>&1 \
  | grep -vE "^\s*$|Warning|warner" | cut -c1-300 | tail -12
PYTHONPATH=$R timeout 90 python3 -m pytest -q -p no:cacheprovider -rfs --tb=short tests/gpu/test_triton_attention.py \
  -k "soft_capped or sliding_window" 2>&1 | grep -vE "^\s*$|Warning|warner" | cut -c1-300 | tail -6
fi
PYTHONPATH=$R timeout 90 python3 benchmarks/quant_kernels.py --ms 256,4096 2>&1 | tail -12
for r in 1 2; do
  ANCHOR_CFG="$AWQ" PYTHONPATH=$R timeout 95 $AB base qwen2.5-7b sharegpt_like_1000 2>&1 | offline_summary "awq even-n r$r"
  ANCHOR_CFG="$AWQ" PYTHONPATH=$R timeout 95 $AB awq-clamped qwen2.5-7b sharegpt_like_1000 2>&1 | offline_summary "awq clamped r$r"
done
ANCHOR_CFG="$AWQ" PYTHONPATH=$R timeout 60 $AB base qwen2.5-7b latency_8x1024x1024 2>&1 | offline_summary "awq even-n"
ANCHOR_CFG="$AWQ" PYTHONPATH=$R timeout 60 $AB awq-clamped qwen2.5-7b latency_8x1024x1024 2>&1 | offline_summary "awq clamped"
fi
if [ "${PART:-1}" = 2 ]; then
# The scratch path's tile re-swept now that loads and stores vectorise (CANDIDATES[256 / 4096] hold _DQ (128 x 128
# K) and (64 x 256 K), the latter with no shared memory at all in its sm_90 SASS); prints a _TABLE to paste.
PYTHONPATH=$R timeout 250 python3 benchmarks/quant_kernels.py --sweep --sweep-ms 256,4096 --deadline 200 2>&1 | tail -30
fi
if [ "${PART:-1}" = 3 ]; then
# Issue 18's cold start (23-25 s on the H200 in session 20, target 15): which 3 Triton variants are still built one by
# one during start-up (the thread pool's dry pass misses them; ~1 s), from the DEBUG log of one cold `serve` (its
# Triton cache directory is named after the switch, so it is empty unless this part already ran on this machine).
SWITCH=PAGEDLLM_LOGGING_LEVEL VALUES="DEBUG" timeout 60 bash benchmarks/gpu_session9/s9e.sh 2>&1 | grep -E "health|start-up " | cut -c1-300
grep -h "during start-up" $OUT/serve_PAGEDLLM_LOGGING_LEVEL_1.log | cut -c1-400
fi
if [ "${PART:-1}" = 4 ]; then
# Cold start with --max-cudagraph-capture-size 256 against without (fresh Triton caches both; s9e.sh passes the
# switch as an environment variable, so this part starts the two servers itself). Prediction: CUDA graphs 6.0 ->
# ~3 s on the H200, /health ~2-3 s sooner.
d=$(mktemp -d); python3 -c "
import json,sys; sys.path.insert(0,'.bench/sb'); from workloads import qwen2_config; json.dump(qwen2_config('qwen2.5-7b'), open('$d/config.json','w'))"
for extra in "--max-cudagraph-capture-size 256" ""; do
  export TRITON_CACHE_DIR=$(mktemp -d); t0=$(date +%s%N)
  PYTHONPATH=$R:/tmp/site python3 -m pagedllm.entrypoints.cli serve $d --load-format dummy --skip-tokenizer-init \
    --max-model-len 4096 --port 8124 --served-model-name m --dtype bfloat16 $extra > $OUT/serve_cap.log 2>&1 &
  pid=$!
  until curl -sf localhost:8124/health >/dev/null; do sleep 0.1; kill -0 $pid 2>/dev/null || break; done
  echo "[$extra]: /health 200 after $(( ($(date +%s%N) - t0) / 1000000 )) ms"
  grep -E "Captured|start-up " $OUT/serve_cap.log | cut -c1-300
  kill -INT $pid; wait $pid
done
fi
