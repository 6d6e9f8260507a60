#!/bin/bash
# Issue 21 on a machine with 2 GPUs (kind nvidia-h200-x2), prepared on the CPU in session 13, never run yet.
# Run from the repo root with carry [".whl", ".bench"] (.bench/sb = a copy of ../shared/bench/*.py), one part a call:
#   PART=1  (~7 min) GPU topology; tests/gpu/test_tensor_parallel_gpu.py (TP=2 / PP=2 on NCCL, eager and CUDA graphs,
#           the opt-in one-shot all-reduce, Ray if installed); the 1.5B-shaped random-weight parity (tp_parity.py);
#           NCCL vs one-shot all-reduce at decode sizes (allreduce_bench.py)
#   PART=2  (~6 min) offline 7B dummy: bs1_128_256, latency_8x1024x1024, sharegpt_like_1000 at TP=1, TP=2, TP=2 with
#           PAGEDLLM_CUSTOM_ALL_REDUCE_KIB=${KIB:-256} (issue 21's targets: TP=2 bs1 >= 1.6x TP=1, ShareGPT >= 1.7x)
#   PART=3  (~7 min) served 7B at TP=2: serve_sweep.py over c = 1, 16, 64, 100, 256 (docs/perf.md has TP=1's sweep)
# Everything is also written to $OUT/tp2_partN.txt (output_tail keeps only the last 12,000 characters).
. benchmarks/gpu_session9/common.sh
export NCCL_NVLS_ENABLE=0 PAGEDLLM_BENCH_DIR=.bench/sb
exec > >(tee "$OUT/tp2_part${PART:-1}.txt") 2>&1
git log --oneline -1 2>/dev/null; nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
case "${PART:-1}" in
1)
  nvidia-smi topo -m
  PYTHONPATH=$R timeout 300 python3 -m pytest -q -p no:cacheprovider -rfs --tb=short tests/gpu/test_tensor_parallel_gpu.py \
    2>&1 | grep -E "^FAILED|^SKIPPED|^E |passed|failed|rror" | cut -c1-240 | head -40
  PYTHONPATH=$R timeout 200 python3 benchmarks/gpu_multi/tp_parity.py --workloads .bench/sb 2>&1 | grep -v Warning | tail -20
  PYTHONPATH=$R timeout 120 python3 benchmarks/gpu_multi/allreduce_bench.py 2>&1 | grep -v Warning | tail -12
  ;;
2)
  for kw in '{}' '{"tensor_parallel_size": 2}'; do
    ANCHOR_KW="$kw" PYTHONPATH=$R:/tmp/site timeout 170 python3 .bench/sb/offline_workload.py pagedllm qwen2.5-7b \
      bs1_128_256 latency_8x1024x1024 sharegpt_like_1000 2>&1 | grep '^{' | cut -c1-400
  done
  PAGEDLLM_CUSTOM_ALL_REDUCE_KIB=${KIB:-256} ANCHOR_KW='{"tensor_parallel_size": 2}' PYTHONPATH=$R:/tmp/site timeout 170 \
    python3 .bench/sb/offline_workload.py pagedllm qwen2.5-7b bs1_128_256 latency_8x1024x1024 sharegpt_like_1000 2>&1 \
    | grep '^{' | sed "s/^/one-shot<=${KIB:-256}KiB /" | cut -c1-420
  ;;
3)
  mkdir -p "$OUT/serve_tp2"
  PATH=/tmp/bin_new:$PATH PYTHONPATH=/tmp/site timeout 560 python3 benchmarks/serve_sweep.py pagedllm qwen2.5-7b \
    --concs ${CONCS:-1,16,64,100,256} --workloads .bench/sb --log-dir "$OUT/serve_tp2" \
    --server-args "--tensor-parallel-size 2" | sed "s/^/tp2 /" | python3 -c "$SUMM"
  grep -E "start-up|late compile|all-reduce" "$OUT/serve_tp2/"*.log | cut -c1-220 | head
  ;;
esac
