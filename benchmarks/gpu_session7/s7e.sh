#!/bin/bash
# Session 7, call E (last): fused int4 prefill GEMM tests + sweep, table applied here, AWQ ShareGPT end to end;
# then the served 7B c=100 row (TP=1 check after the TP/PP merge; start-up timeline with the hand-over).
[ -d /tmp/site/fastapi ] || python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
export NCCL_NVLS_ENABLE=0 PYTHONUNBUFFERED=1
R=$PWD
timeout 90 env PYTHONPATH=$R python3 -m pytest -q -n 8 -p no:cacheprovider tests/gpu/test_quant_packed_kernels.py -k "fused_gemm or routing" 2>&1 | grep -v -i warn | tail -6
timeout 150 env PYTHONPATH=$R python3 benchmarks/quant_kernels.py --gemm --gemm-ms 256,4096 --deadline 120 --save-gemm-table $OUT/gemm_table.py 2>&1 | grep -v "^$" | tail -60
if [ -f $OUT/gemm_table.py ]; then
  PYTHONPATH=$R python3 benchmarks/quant_kernels.py --apply-gemm-table $OUT/gemm_table.py 2>&1 | tail -1
  ANCHOR_CFG='{"quantization_config": {"quant_method": "awq", "bits": 4, "group_size": 128, "zero_point": true, "version": "gemm"}}' PYTHONPATH=$R:/tmp/site timeout 100 python3 .bench/sb/offline_workload.py pagedllm qwen2.5-7b sharegpt_like_1000 2>$OUT/err_awq.log
  grep -E "start-up|after start-up" $OUT/err_awq.log | head -3 | cut -c1-250; tail -1 $OUT/err_awq.log | cut -c1-200
fi
mkdir -p /tmp/bin_new $OUT/srv
printf '#!/bin/bash\nPYTHONPATH=%s:/tmp/site exec python3 -m pagedllm.entrypoints.cli "$@"\n' "$R" > /tmp/bin_new/pagedllm
chmod +x /tmp/bin_new/pagedllm
PATH=/tmp/bin_new:$PATH PYTHONPATH=/tmp/site LOG_DIR=$OUT/srv timeout 130 python3 .bench/sb/serve_workload.py pagedllm qwen2.5-7b sharegpt_like_1000 100 | tee $OUT/served.json
grep -E "start-up " $OUT/srv/server_pagedllm_qwen2.5-7b.log | cut -c1-300; grep -c "after start-up" $OUT/srv/server_pagedllm_qwen2.5-7b.log
