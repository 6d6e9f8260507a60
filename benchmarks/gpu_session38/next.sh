#!/bin/bash
# Session 38 (carry [".whl", ".bench"]; run from the repo root). One PART a call; keep the machine warm.
# Queued for session 39, in this order: PART=2 here (any H100 / H200), PART=3 here, then on an H200 `PART=6 bash
#   benchmarks/gpu_session37/next.sh` (issue 13 / 18 rows and cold start). Session 37's PART=7, 8, 3 and 4 ran here.
# PART=1 (~250 s, any H100 / H200): where the time goes now, for issue 18's two open rows that an H100 can inform.
#   (a) 1.5B bs1_128_256: every step timed and steps 100..199 under torch.profiler (kernel table by category; the
#       last full profile is session 3's, ~250 kernels and 1.48 ms GPU busy a step on the H200 then).
#   (b) served 7B at c=100 with PAGEDLLM_STEP_TRACE: the engine-process time per step by batch band and the ITL P99's
#       source. Question: are the slowest 1% of inter-token gaps steps carrying a full 2,048-token prefill (then a
#       smaller prefill share per step is the lever) or host-side stalls (gaps / send / msgs in the trace)?
. benchmarks/gpu_session9/common.sh
case "${PART:-1}" in
1)
exec > >(tee $OUT/next38_1.txt) 2>&1
nvidia-smi --query-gpu=name --format=csv,noheader
PAGEDLLM_BENCH_DIR=.bench/sb PYTHONPATH=$R timeout 120 python3 benchmarks/profile_offline.py qwen2.5-1.5b bs1_128_256 \
  --steps 100:200 2>&1 | grep -v -E "^(INFO|WARNING|  +KV cache)" | tail -45
rm -f /tmp/steps38.jsonl
PAGEDLLM_STEP_TRACE=/tmp/steps38.jsonl PATH=/tmp/bin_new:$PATH timeout 150 python3 .bench/sb/serve_workload.py \
  pagedllm qwen2.5-7b sharegpt_like_1000 100 2>&1 | tail -1
cp /tmp/steps38.jsonl $OUT/ 2>/dev/null
python3 benchmarks/serve_step_trace.py /tmp/steps38.jsonl 2>&1 | tail -30
;;
esac
# PART=2 (~330 s): PART=1's trace showed the served 7B's slow rows (30-50 ms, ITL P99) are the steps
#   of 513-2,048 tokens (2,048 now the 7B's default budget) that run eagerly above the piecewise graphs' 512-token
#   cap: rows before a step with 513+ prompt tokens took 33-40 ms against ~10.5 ms for <= 256. Served 7B with
#   PAGEDLLM_PIECEWISE_MAX_TOKENS=2048 (every step graphed) against 512, a fresh server each, step traces kept.
#   Prediction (H100): ITL P99 ~46 -> ~20-25 ms; tok/s +5-10% (96 of 1,750 steady-state rows ~20 ms shorter);
#   the graph pool grows by several GiB (session 9: 1.35 -> 10.11 GiB at 8,192 tokens a step). Then the same cap
#   with PAGEDLLM_PIECEWISE_SHARED_BUFFERS=1 (prediction: pool ~1.5-2.5 GiB, same tokens and speed as cap 2048); its
#   GPU tests first (test_engine_gpu -k "piecewise or borrowed").
case "${PART:-1}" in
2)
exec > >(tee $OUT/next38_2.txt) 2>&1
nvidia-smi --query-gpu=name --format=csv,noheader
PYTHONPATH=$R timeout 120 python3 -m pytest -q -p no:cacheprovider tests/gpu/test_engine_gpu.py \
  -k "piecewise or borrowed" 2>&1 | grep -E "^(FAILED|ERROR)|passed|failed|^E " | tail -8
for v in 512:0 2048:1 2048:0; do      # 2048:0 last: its pool may not fit an H100's 8 GiB headroom
  cap=${v%:*}; shared=${v#*:}
  mkdir -p $OUT/log38_$cap$shared; rm -f /tmp/steps38_$cap.jsonl; echo "== piecewise cap $cap, shared buffers $shared"
  PAGEDLLM_PIECEWISE_SHARED_BUFFERS=$shared PAGEDLLM_PIECEWISE_MAX_TOKENS=$cap \
    PAGEDLLM_STEP_TRACE=/tmp/steps38_$cap.jsonl LOG_DIR=$OUT/log38_$cap$shared \
    PATH=/tmp/bin_new:$PATH timeout 110 python3 .bench/sb/serve_workload.py pagedllm qwen2.5-7b sharegpt_like_1000 \
    100 2>&1 | tail -1
  cp /tmp/steps38_$cap.jsonl $OUT/steps38_$cap$shared.jsonl 2>/dev/null
  grep -rh -E "CUDA-graph pool|Captured piecewise|start-up " $OUT/log38_$cap$shared | cut -c1-300
done
;;
3)
# ~250 s: the GPU tests of what session 38's CPU helpers changed in paths the graphs and kernels also run: the
# prefix-cache key of an adapter now holds its folder (90ddd49), an adapter id's folder is checked (878ab08), images
# given as 4-D arrays / parts without a type (e9fe404, 9eb0ad3), and the metrics' per-step request list (75b903c).
exec > >(tee $OUT/next38_3.txt) 2>&1
nvidia-smi --query-gpu=name --format=csv,noheader
for f in test_lora_gpu test_llava_gpu test_qwen2_vl_gpu; do
  echo "== $f"; PYTHONPATH=$R timeout 200 python3 -m pytest -q -p no:cacheprovider tests/gpu/$f.py -rf --tb=short 2>&1 \
    | grep -E "^(FAILED|ERROR)|passed|failed|^E " | tail -12
done
;;
esac
