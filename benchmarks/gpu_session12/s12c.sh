#!/bin/bash
# Session 12: (1) the decode kernel's split merge loads the partials a chunk at a time (one dependent round trip per
# chunk instead of per split) and the request's split plan is read before the PDL wait. A/B switches AB_MERGE_CHUNK
# (0 = the old serial merge) and AB_EARLY (plan before the wait), temporary. Prediction (from s12b's leave-one-out:
# attention adds 6.7 us a layer at bs1, 16.5 at M = 8): bs1 257.7 -> ~262 tok/s, latency 4.61 -> ~4.49 s.
# (2) helper-29's int4 wide kernel against the scratch path and bf16 at 24..256 rows (awq_fused_probe.py).
# Carry [".whl", ".bench"] (~8 min).
. benchmarks/gpu_session9/common.sh
AB_MERGE_CHUNK=4 PYTHONPATH=$R timeout 150 python3 -m pytest -q -p no:cacheprovider -n 4 -rf --tb=line tests/gpu/test_triton_attention.py tests/gpu/test_pdl.py tests/gpu/test_attention_backends_gpu.py tests/gpu/test_triton_fp8_kv.py 2>&1 | grep -E "^FAILED|passed|failed" | cut -c1-240
for v in "0 0" "4 1" "8 1" "0 1" "4 1"; do
  set -- $v
  AB_MERGE_CHUNK=$1 AB_EARLY=$2 PYTHONPATH=$R timeout 100 python3 .bench/sb/offline_workload.py pagedllm qwen2.5-7b bs1_128_256 latency_8x1024x1024 2>&1 | grep '^{' | python3 -c "
import sys, json
for l in sys.stdin:
    d = json.loads(l); print('chunk $1 early $2', d['workload'], d['seconds'], d['output_tok_s'])"
done
PYTHONPATH=$R timeout 230 python3 benchmarks/kernels/awq_fused_probe.py --deadline 190 2>&1 | grep -v Warning | tail -80
