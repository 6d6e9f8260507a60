#!/bin/bash
# Prepared in session 12 after the device time was spent, NOT RUN yet. (1) The GPU tests that have not run on a GPU:
# the wide int4 kernel's (test_quant_packed_kernels.py) and the fused rotary + KV store + decode attention's
# (test_triton_attention.py -k rope, test_attention_backends_gpu.py, test_engine_gpu.py -k fused_rope). (2) The
# A/B of PAGEDLLM_DECODE_ROPE_FUSED 0 / 1 / 2 (off / fused / fused + first tile before the PDL wait), alternating
# processes. Prediction (docs/perf.md session 12): 1: bs1 ~261 -> ~262, latency ~4.56 -> ~4.50 s; 2: bs1 ~266-268,
# latency as 1 (7B's QKV projection at 8 rows is cuBLAS: no early launch after it). (3), (4) below.
# Everything also to $OUT/next.txt. Carry [".whl", ".bench"] (~12 min: two calls,
# PART=1 for (1)-(2), PART=2 for (3)-(4)); PART=3: (5) the wide kernel's new kperm candidates in the probe.
. benchmarks/gpu_session9/common.sh
exec > >(tee $OUT/next.txt) 2>&1
if [ "${PART:-1}" = 1 ]; then
PYTHONPATH=$R timeout 300 python3 -m pytest -q -p no:cacheprovider -n 8 -rf --tb=line tests/gpu/test_quant_packed_kernels.py tests/gpu/test_triton_attention.py tests/gpu/test_attention_backends_gpu.py tests/gpu/test_pdl.py 2>&1 | grep -E "^FAILED|passed|failed|rror" | cut -c1-240 | head -30
PYTHONPATH=$R timeout 200 python3 -m pytest -q -p no:cacheprovider -rf --tb=line tests/gpu/test_engine_gpu.py -k "fused_rope or triton_greedy" 2>&1 | grep -E "^FAILED|passed|failed|rror" | cut -c1-240
for v in 0 1 2 0 1 2; do
  PAGEDLLM_DECODE_ROPE_FUSED=$v PYTHONPATH=$R timeout 100 python3 .bench/sb/offline_workload.py pagedllm qwen2.5-7b bs1_128_256 latency_8x1024x1024 2>&1 | python3 -c "
import sys, json
for l in sys.stdin:
    if l.startswith('{'):
        d = json.loads(l); print('fused $v', d['workload'], d['seconds'], d['output_tok_s'])"
done
fi
if [ "${PART:-1}" = 2 ]; then
# (3) AWQ ShareGPT with the wide routing (base) vs dequantize + cuBLAS (awq-scratch), the in-session A/B s12d could not finish
# (session 12: 9,064.5 tok/s with it; 8,589 without in session 11).
AWQ='{"quantization_config": {"quant_method": "awq", "bits": 4, "group_size": 128, "zero_point": true, "version": "gemm"}}'
for v in base awq-scratch base awq-scratch; do
  ANCHOR_CFG="$AWQ" PYTHONPATH=$R timeout 150 python3 benchmarks/kernels/route_ab.py $v qwen2.5-7b sharegpt_like_1000 2>&1 | python3 -c "
import sys, json
for l in sys.stdin:
    if l.startswith('{'):
        d = json.loads(l); print('awq $v', d['workload'], d['seconds'], d['output_tok_s'])"
done
# (4) The latency run with 7B qkv at 2..16 rows on the skinny GEMM, so that the fused decode kernel (2) can start
# early after it (cuBLAS's qkv does not let it): fused 2 with and without.
for v in base qkv-skinny base qkv-skinny; do
  PAGEDLLM_DECODE_ROPE_FUSED=2 PYTHONPATH=$R timeout 100 python3 benchmarks/kernels/route_ab.py $v qwen2.5-7b latency_8x1024x1024 2>&1 | python3 -c "
import sys, json
for l in sys.stdin:
    if l.startswith('{'):
        d = json.loads(l); print('fused 2 $v', d['workload'], d['seconds'], d['output_tok_s'])"
done
fi
if [ "${PART:-1}" = 3 ]; then
# (5) helper-30's kperm + w_as_a candidates (static model: gate_up ~45-62 µs at 24-48 rows, ~75-85 at 128, against
# 85-96 / 140-161 for the routed configs); a second call with --ms 32,64,96 --shapes gate_up,qkv,down if budget.
PYTHONPATH=$R timeout 260 python3 benchmarks/kernels/awq_fused_probe.py --deadline 200 --ms 24,48,128 --shapes gate_up,down,o
fi
