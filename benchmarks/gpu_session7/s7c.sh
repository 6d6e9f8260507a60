#!/bin/bash
# Session 7, call C: helper-23's CUDA rank-path tests, helper-25's int4 GEMV tests + sweep, transformers' import chain.
export NCCL_NVLS_ENABLE=0 PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
git log --oneline -1 2>/dev/null
timeout 170 python3 -m pytest -q -n 4 -p no:cacheprovider tests/gpu/test_tensor_parallel_gpu.py tests/gpu/test_engine_gpu.py tests/gpu/test_cpu_offload_gpu.py 2>&1 | tail -15
timeout 100 python3 -m pytest -q -n 8 -p no:cacheprovider tests/gpu/test_quant_packed_kernels.py -k "gemv or m1_routing" 2>&1 | tail -12
timeout 190 python3 benchmarks/quant_kernels.py --gemv --deadline 160 --save-m1-table $OUT/m1_table.py 2>&1 | tail -60
python3 -X importtime -c "import pagedllm.model.hf_configs; from transformers import AutoConfig; from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS" 2>$OUT/imp.txt; sort -t'|' -k2 -n -r $OUT/imp.txt | head -30 | cut -c1-150
