#!/bin/bash
# Session 12 (s12c's first half again, its output was cut): (1) decode attention merge / early plan A/B end to end
# (AB_MERGE_CHUNK 0 = the old serial merge, AB_EARLY = plan before the PDL wait); prediction bs1 257.7 -> ~262,
# latency 4.61 -> ~4.49 s. (2) GPU tests of the attention kernels (chunk 4) and of the packed kernels (the wide
# kernel's new tests and the routing). (3) AWQ 7B end to end with the wide kernel routed at 17..128 rows (table from
# s12c's probe) vs AB_WIDE=0 (dequantize + cuBLAS as before); prediction ShareGPT 8,589 -> ~9,500-10,000.
# Everything also to $OUT/s12d.txt. Carry [".whl", ".bench"] (~6 min).
. benchmarks/gpu_session9/common.sh
exec > >(tee $OUT/s12d.txt) 2>&1
summ() { python3 -c "
import sys, json
for l in sys.stdin:
    if l.startswith('{'):
        d = json.loads(l); print('$1', d['workload'], d['seconds'], d['output_tok_s'])"; }
for v in "0 0" "4 1" "0 0" "4 1"; do
  set -- $v
  AB_MERGE_CHUNK=$1 AB_EARLY=$2 PYTHONPATH=$R timeout 100 python3 .bench/sb/offline_workload.py pagedllm qwen2.5-7b bs1_128_256 latency_8x1024x1024 2>&1 | summ "chunk $1 early $2"
done
AB_MERGE_CHUNK=4 PYTHONPATH=$R timeout 200 python3 -m pytest -q -p no:cacheprovider -n 8 -rf --tb=line tests/gpu/test_triton_attention.py tests/gpu/test_pdl.py tests/gpu/test_attention_backends_gpu.py tests/gpu/test_triton_fp8_kv.py tests/gpu/test_quant_packed_kernels.py 2>&1 | grep -E "^FAILED|passed|failed|rror" | cut -c1-240 | head -30
AWQ='{"quantization_config": {"quant_method": "awq", "bits": 4, "group_size": 128, "zero_point": true, "version": "gemm"}}'
for w in 1 0; do
  AB_WIDE=$w ANCHOR_CFG="$AWQ" AB_MERGE_CHUNK=4 PYTHONPATH=$R timeout 150 python3 .bench/sb/offline_workload.py pagedllm qwen2.5-7b sharegpt_like_1000 2>&1 | summ "awq wide $w"
done
