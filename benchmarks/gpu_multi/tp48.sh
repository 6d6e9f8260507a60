#!/bin/bash
# Issue 22 on a machine with 4 or 8 GPUs (kinds nvidia-h200-x4 / -x8), prepared on the CPU in session 13, never run.
# Run from the repo root with carry [".whl", ".bench"], one part a call; N = the GPUs (4 or 8, from nvidia-smi):
#   PART=1  (~7 min) topology; tests/gpu/test_tensor_parallel_gpu.py (TP=2 x PP=2 needs 4); parity of a 1.5B-shaped
#           random-weight model (16 heads so that 8 divides them) at TP=N, TP=N/2 x PP=2 against one GPU, fp32 and
#           bf16; NCCL vs one-shot all-reduce at N ranks (hidden 5120)
#   PART=2  (~9 min) offline, a Qwen2.5-32B-shaped dummy (the 7B entry of workloads.py with 32B's shapes through
#           ANCHOR_CFG): seed 001's latency run (latency_8x1024x1024) and sharegpt_like_1000 at TP=N, then at
#           TP=N/2 x PP=2, then TP=N with PAGEDLLM_CUSTOM_ALL_REDUCE_KIB=${KIB:-512}
# Output also in $OUT/tp48_partN.txt.
. benchmarks/gpu_session9/common.sh
export NCCL_NVLS_ENABLE=0 PAGEDLLM_BENCH_DIR=.bench/sb
exec > >(tee "$OUT/tp48_part${PART:-1}.txt") 2>&1
N=$(nvidia-smi --query-gpu=name --format=csv,noheader | wc -l)
git log --oneline -1 2>/dev/null; nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | head -1; echo "GPUs: $N"
Q32='{"hidden_size": 5120, "intermediate_size": 27648, "num_hidden_layers": 64, "num_attention_heads": 40, "num_key_value_heads": 8}'
case "${PART:-1}" in
1)
  nvidia-smi topo -m
  PYTHONPATH=$R timeout 300 python3 -m pytest -q -p no:cacheprovider -rfs --tb=short tests/gpu/test_tensor_parallel_gpu.py \
    2>&1 | grep -E "^FAILED|^SKIPPED|^E |passed|failed|rror" | cut -c1-240 | head -40
  PYTHONPATH=$R timeout 240 python3 benchmarks/gpu_multi/tp_parity.py --workloads .bench/sb --tokens 48 \
    --override '{"num_attention_heads": 16}' \
    --settings "float32:$N:1,float32:$((N / 2)):2,bfloat16:$N:1" 2>&1 | grep -v Warning | tail -20
  PYTHONPATH=$R timeout 120 python3 benchmarks/gpu_multi/allreduce_bench.py --world "$N" --hidden 5120 2>&1 | grep -v Warning | tail -12
  ;;
2)
  for kw in "{\"tensor_parallel_size\": $N}" "{\"tensor_parallel_size\": $((N / 2)), \"pipeline_parallel_size\": 2}"; do
    ANCHOR_CFG="$Q32" ANCHOR_KW="$kw" PYTHONPATH=$R:/tmp/site timeout 200 python3 .bench/sb/offline_workload.py pagedllm \
      qwen2.5-7b latency_8x1024x1024 sharegpt_like_1000 2>&1 | grep '^{' | sed 's/qwen2.5-7b/qwen2.5-32b-shaped/' | cut -c1-420
  done
  PAGEDLLM_CUSTOM_ALL_REDUCE_KIB=${KIB:-512} ANCHOR_CFG="$Q32" ANCHOR_KW="{\"tensor_parallel_size\": $N}" PYTHONPATH=$R:/tmp/site \
    timeout 170 python3 .bench/sb/offline_workload.py pagedllm qwen2.5-7b latency_8x1024x1024 sharegpt_like_1000 2>&1 \
    | grep '^{' | sed "s/qwen2.5-7b/qwen2.5-32b-shaped/; s/^/one-shot<=${KIB:-512}KiB /" | cut -c1-440
  ;;
esac
