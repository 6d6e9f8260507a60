#!/bin/bash
# Session 7, call D: served 7B c=100 on a cold Triton cache (start-up timeline after the overlap change; TP=1 check
# after the CUDA TP/PP merge), offline 7B rows, AWQ 7B with the new batch-1 GEMV.
[ -d /tmp/site/fastapi ] || python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
export NCCL_NVLS_ENABLE=0 PYTHONUNBUFFERED=1
R=$PWD
mkdir -p /tmp/bin_new
printf '#!/bin/bash\nPYTHONPATH=%s:/tmp/site exec python3 -m pagedllm.entrypoints.cli "$@"\n' "$R" > /tmp/bin_new/pagedllm
chmod +x /tmp/bin_new/pagedllm
export TRITON_CACHE_DIR=/tmp/tcache_s7d; rm -rf $TRITON_CACHE_DIR
mkdir -p $OUT/cold
PATH=/tmp/bin_new:$PATH PYTHONPATH=/tmp/site LOG_DIR=$OUT/cold timeout 200 python3 .bench/sb/serve_workload.py pagedllm qwen2.5-7b sharegpt_like_1000 100
grep -E "start-up |ready in" $OUT/cold/server_pagedllm_qwen2.5-7b.log | cut -c1-300; grep -c "after start-up" $OUT/cold/server_pagedllm_qwen2.5-7b.log
PYTHONPATH=$R:/tmp/site timeout 150 python3 .bench/sb/offline_workload.py pagedllm qwen2.5-7b bs1_128_256 sharegpt_like_1000 2>$OUT/err_off.log
tail -1 $OUT/err_off.log | cut -c1-200
ANCHOR_CFG='{"quantization_config": {"quant_method": "awq", "bits": 4, "group_size": 128, "zero_point": true, "version": "gemm"}}' PYTHONPATH=$R:/tmp/site timeout 150 python3 .bench/sb/offline_workload.py pagedllm qwen2.5-7b bs1_128_256 2>$OUT/err_awq.log
grep -E "after start-up" $OUT/err_awq.log | head -3 | cut -c1-300; tail -1 $OUT/err_awq.log | cut -c1-200
