#!/bin/bash
# Session 39 (carry [".whl", ".bench"]; run from the repo root). One PART a call; keep the machine warm.
# Session 38's PART=2 (H100): the served 7B at a 2,048-token piecewise cap with shared buffers: 8,827 tok/s, ITL P99
#   25.0 ms, graph pool 0.94 GiB, against the 512 cap without sharing: 8,871, 24.1 ms, 3.18 GiB; 2,048 without
#   sharing ran out of memory. So PAGEDLLM_PIECEWISE_SHARED_BUFFERS is now on by default (cap stays 512).
# PART=1 (~250 s): the GPU tests of the graphs with the new default (test_engine_gpu: piecewise, graphs, borrowed,
#   LoRA-in-graphs, engine), sleep mode, speculative decoding, CPU offload, AWQ engine (the engine
#   tests whose prompts run through the piecewise graphs).
# PART=2 (~250 s): served 7B at the 512 cap, sharing on (the default) against off, alternating, and offline 7B
#   ShareGPT both ways. Prediction: pool ~0.4-0.6 GiB with sharing (3.18 without); tok/s within noise (+-2%).
. benchmarks/gpu_session9/common.sh
case "${PART:-1}" in
1)
exec > >(tee $OUT/next39_1.txt) 2>&1
nvidia-smi --query-gpu=name --format=csv,noheader
for f in test_engine_gpu test_sleep_mode_gpu test_spec_decode_gpu test_cpu_offload_gpu test_quant_awq_engine_gpu; do
  echo "== $f"; PYTHONPATH=$R timeout 250 python3 -m pytest -q -p no:cacheprovider tests/gpu/$f.py -rf --tb=short 2>&1 \
    | grep -E "^(FAILED|ERROR)|passed|failed|^E " | tail -10
done
;;
2)
exec > >(tee $OUT/next39_2.txt) 2>&1
nvidia-smi --query-gpu=name --format=csv,noheader
for shared in 0 1 0 1; do
  mkdir -p $OUT/log39_$shared; echo "== piecewise cap 512, shared buffers $shared"
  PAGEDLLM_PIECEWISE_SHARED_BUFFERS=$shared LOG_DIR=$OUT/log39_$shared PATH=/tmp/bin_new:$PATH timeout 100 \
    python3 .bench/sb/serve_workload.py pagedllm qwen2.5-7b sharegpt_like_1000 100 2>&1 | tail -1 | cut -c1-400
  grep -rh -E "CUDA-graph pool|KV cache +[0-9]" $OUT/log39_$shared | tail -2 | cut -c1-200
done
for shared in 0 1; do
  PAGEDLLM_PIECEWISE_SHARED_BUFFERS=$shared PYTHONPATH=$R timeout 100 python3 .bench/sb/offline_workload.py pagedllm \
    qwen2.5-7b sharegpt_like_1000 2>&1 | offline_summary "7b shared=$shared"
done
;;
esac
# PART=3 (~150 s): the 7B's pure-decode step at the served batch (96 requests, contexts ~600-700) by kernel
#   (torch.profiler, PDL off so waits are not counted as busy). Served steady state: ~8.1 ms a no-prompt step at
#   96-100 running (session 38/39 traces) against a ~5.1 ms weight-read floor (15.2 GB at 3.0 TB/s) plus ~1 ms of
#   KV reads. Prediction: GEMM ~5.5 ms, attention ~1.2 ms, the rest ~0.8 ms a step.
case "${PART:-1}" in
3)
exec > >(tee $OUT/next39_3.txt) 2>&1
nvidia-smi --query-gpu=name --format=csv,noheader
PAGEDLLM_PDL=0 PAGEDLLM_BENCH_DIR=.bench/sb PYTHONPATH=$R timeout 200 python3 benchmarks/gpu_session39/profile_b96.py \
  2>&1 | grep -v -E "^(INFO|WARNING|  +KV cache)" | tail -45
;;
esac
# PART=4 (~300 s; carry also ".st39", built here by st_dense_build.py): GPU checks of session 39's CPU helpers'
#   changes: cudagraph_mode PIECEWISE (decode steps through the piecewise graphs) / FULL_DECODE_ONLY / -O0,
#   max_model_len='auto' on the profiled budget, the sentence-transformers Dense projector on the GPU, then the LoRA
#   (load_inplace, adapter generations in the prefix-cache key) and Qwen2-VL (per-prompt mm_processor_kwargs) tests,
#   speculative decoding, and the CPU-tier / swap unit tests on CUDA (the reset that moves cached blocks to the tier).
case "${PART:-1}" in
4)
exec > >(tee $OUT/next39_4.txt) 2>&1
nvidia-smi --query-gpu=name --format=csv,noheader
PYTHONPATH=$R timeout 200 python3 -m pytest -q -p no:cacheprovider tests/gpu/test_engine_gpu.py -rf --tb=short \
  -k "(cudagraph_modes or max_model_len_auto or piecewise) and qwen2" 2>&1 | grep -E "^(FAILED|ERROR)|passed|failed|^E " | tail -12
PYTHONPATH=$R timeout 60 python3 benchmarks/gpu_session39/st_dense_check.py .st39 2>&1 | tail -3
for f in gpu/test_lora_gpu gpu/test_qwen2_vl_gpu gpu/test_spec_decode_gpu unit/test_swap_preemption \
    gpu/test_quant_gptq_engine_gpu gpu/test_quant_fp8_block_engine_gpu; do
  echo "== $f"; PYTHONPATH=$R timeout 150 python3 -m pytest -q -p no:cacheprovider tests/$f.py -rf --tb=short 2>&1 \
    | grep -E "^(FAILED|ERROR)|passed|failed|^E " | tail -10
done
;;
esac
# PART=5 (~190 s): PART=4 trimmed to what session 39's remaining device time (311 s with a start) allowed: the graph
#   modes and max_model_len='auto' (engine subset), the Dense projector, the GPTQ and FP8-block engine tests.
case "${PART:-1}" in
5)
exec > >(tee $OUT/next39_5.txt) 2>&1
nvidia-smi --query-gpu=name --format=csv,noheader
PYTHONPATH=$R timeout 100 python3 -m pytest -q -p no:cacheprovider tests/gpu/test_engine_gpu.py -rf --tb=short -x \
  -k "(cudagraph_modes or max_model_len_auto) and qwen2" 2>&1 | grep -E "^(FAILED|ERROR)|passed|failed|^E " | tail -12
PYTHONPATH=$R timeout 30 python3 benchmarks/gpu_session39/st_dense_check.py .st39 2>&1 | tail -3
for f in test_quant_gptq_engine_gpu test_quant_fp8_block_engine_gpu; do
  echo "== $f"; PYTHONPATH=$R timeout 45 python3 -m pytest -q -p no:cacheprovider tests/gpu/$f.py -rf --tb=short -x 2>&1 \
    | grep -E "^(FAILED|ERROR)|passed|failed|^E " | tail -8
done
;;
esac
