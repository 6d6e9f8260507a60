#!/bin/bash
# PAGEDLLM_NORM_IN was removed after this session (kept below as run; the variable is now ignored): docs/perf.md, session 18.
# Session 18 (NVIDIA H200 lent, 1,800 device seconds). Carry [".whl", ".bench"]; each PART's timeouts add up to
# under the 600 s a call. Three changes, all off by default until measured here:
#   F3   PAGEDLLM_DECODE_ROPE_FUSED=3: the step's new key / value join the decode softmax from registers, so every
#        split's first tile (the writer's too) and the rotary factors are read before the PDL wait, and the writer
#        stores without a barrier or a read-back. Prediction: ~3 dependent round trips (~0.6-1 us each) off the
#        writer's chain a layer: 7B bs1 259 -> ~262-264, latency 4.50 -> ~4.45 s, 1.5B bs1 725 -> ~750-760.
#   SILU PAGEDLLM_GATE_UP_SILU=1: SiLU-and-mul in the gate_up skinny GEMM's epilogue (one kernel a layer less).
#        Prediction from session 12's leave-one-out (SiLU 35 us a step at 7B bs1, 46 at M = 8): 7B bs1 +0.9%,
#        latency -1.0%; 1.5B bs1 +2%.
#   NORM PAGEDLLM_NORM_IN=1: the residual add + input RMSNorm inside the QKV skinny GEMM (one pass over K, the
#        1 / rms applied to the sums; one kernel a layer less). Prediction: half of session 12's RMSNorm
#        leave-one-out (70 us a step at 7B bs1, 136 at M = 8): 7B bs1 +0.9%, latency -1.5%; 1.5B +2%.
#        NORM=2: also the post-attention norm inside gate_up (with SILU): the other half; risk: gate_up's 2,240
#        (1.5B) / 4,736 (7B) batch-1 programs each read the residual and norm weight too (session 3's two-pass
#        version lost 2% there).
#   EARLY PAGEDLLM_PDL_EARLY_TRIGGER=1: each PDL kernel lets the next launch before its own wait, not after, so the
#        next's constant loads (first weight tiles, the decode kernel's first K / V tile) start up to two kernels
#        early. Prediction: +1-3% at bs1 if the dependents' pre-wait loads are on the critical path; risk: their
#        traffic slows the running kernel (as session 17's L2 prefetch did).
#   ONE  route_ab.py onetile-qkv / onetile-qkv-o: batch-1 qkv (and o) read their whole K in one tile before the
#        PDL wait. Prediction: 1.5B bs1 +2-4% (two post-wait HBM round trips of ~1 us each off qkv and o a layer).
# PART=1: the GPU tests of F3, SILU and NORM, test_engine_gpu.py and the routing-table test (session 15's fix,
#   never run); 7B bs1 + latency base (F2) / F3 / F3+SILU+NORM2; 1.5B bs1 base / F3+SILU+NORM2 / +EARLY.
# PART=2: session 16's int4 GEMV l2_ahead (gpu_session16/next.sh PART=4: tests, the M = 1 sweep, AWQ bs1 swept vs
#   committed).
# PART=3: the second round, with NORM=1; 1.5B with ONE(qkv-o); 7B with EARLY.
# PART=5: PART=1 for a short device budget: the tests (150 s), 7B and 1.5B base against F3+SILU+NORM2 only.
# PART=4: 7B ShareGPT, F / SILU / NORM as given (default all three) against the base, two rounds (the changes touch
#   decode steps of up to 16 requests only).
. benchmarks/gpu_session9/common.sh
exec > >(tee $OUT/run18_${PART:-1}.txt) 2>&1
AB="python3 benchmarks/kernels/route_ab.py"
run() {   # run TAG TIMEOUT FUSED SILU NORM VARIANT MODEL WORKLOAD...
  local tag=$1 t=$2 f=$3 silu=$4 norm=$5 v=$6; shift 6
  PAGEDLLM_DECODE_ROPE_FUSED=$f PAGEDLLM_GATE_UP_SILU=$silu PAGEDLLM_NORM_IN=$norm PYTHONPATH=$R timeout $t $AB $v "$@" 2>&1 \
    | offline_summary "$tag"
}
gpu_tests() {   # gpu_tests TIMEOUT: the GPU tests of the session's changes
  PYTHONPATH=$R timeout $1 python3 -m pytest -q -p no:cacheprovider -n 8 -rfs --tb=short \
    tests/gpu/test_triton_attention.py tests/gpu/test_attention_backends_gpu.py tests/gpu/test_engine_gpu.py \
    tests/gpu/test_triton_gemv.py \
    -k "decode_rope or new_key or fused_rope or routing or gated or silu or norm or engine" 2>&1 \
    | grep -vE "^\s*$" | cut -c1-300 | tail -40
}
if [ "${PART:-1}" = 1 ]; then
gpu_tests 180
run "7b base" 85 2 0 0 base qwen2.5-7b bs1_128_256 latency_8x1024x1024
run "7b f3" 85 3 0 0 base qwen2.5-7b bs1_128_256 latency_8x1024x1024
run "7b f3+silu+norm2" 85 3 1 2 base qwen2.5-7b bs1_128_256 latency_8x1024x1024
run "1.5b base" 45 2 0 0 base qwen2.5-1.5b bs1_128_256
run "1.5b f3+silu+norm2" 45 3 1 2 base qwen2.5-1.5b bs1_128_256
export PAGEDLLM_PDL_EARLY_TRIGGER=1
run "1.5b f3+silu+norm2+early" 45 3 1 2 base qwen2.5-1.5b bs1_128_256
unset PAGEDLLM_PDL_EARLY_TRIGGER
fi
if [ "${PART:-1}" = 2 ]; then
PART=4 bash benchmarks/gpu_session16/next.sh
fi
if [ "${PART:-1}" = 3 ]; then
run "7b f3+silu+norm2 r2" 85 3 1 2 base qwen2.5-7b bs1_128_256 latency_8x1024x1024
run "7b f3+silu+norm1" 85 3 1 1 base qwen2.5-7b bs1_128_256 latency_8x1024x1024
run "7b base r2" 85 2 0 0 base qwen2.5-7b bs1_128_256 latency_8x1024x1024
run "1.5b f3+silu+norm2 r2" 45 3 1 2 base qwen2.5-1.5b bs1_128_256
run "1.5b f3+silu+norm1" 45 3 1 1 base qwen2.5-1.5b bs1_128_256
run "1.5b base r2" 45 2 0 0 base qwen2.5-1.5b bs1_128_256
run "1.5b f3+silu+norm2+one-qkv-o" 45 3 1 2 onetile-qkv-o qwen2.5-1.5b bs1_128_256
export PAGEDLLM_PDL_EARLY_TRIGGER=1
run "7b f3+silu+norm2+early" 85 3 1 2 base qwen2.5-7b bs1_128_256 latency_8x1024x1024
unset PAGEDLLM_PDL_EARLY_TRIGGER
fi
if [ "${PART:-1}" = 4 ]; then
run "7b best sharegpt" 70 ${F:-3} ${SILU:-1} ${NORM:-2} base qwen2.5-7b sharegpt_like_1000
run "7b base sharegpt" 70 2 0 0 base qwen2.5-7b sharegpt_like_1000
run "7b best sharegpt r2" 70 ${F:-3} ${SILU:-1} ${NORM:-2} base qwen2.5-7b sharegpt_like_1000
run "7b base sharegpt r2" 70 2 0 0 base qwen2.5-7b sharegpt_like_1000
fi
if [ "${PART:-1}" = 5 ]; then
gpu_tests 150
run "7b base" 85 2 0 0 base qwen2.5-7b bs1_128_256 latency_8x1024x1024
run "7b f3+silu+norm2" 85 3 1 2 base qwen2.5-7b bs1_128_256 latency_8x1024x1024
run "1.5b base" 45 2 0 0 base qwen2.5-1.5b bs1_128_256
run "1.5b f3+silu+norm2" 45 3 1 2 base qwen2.5-1.5b bs1_128_256
fi
