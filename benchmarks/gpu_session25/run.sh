#!/bin/bash
# Session 25. PART=1: session 24's PART=1 files, each in its own pytest process (one -n 4 run of all six files had
# 151 failures on an H100 whose messages the filter cut), full logs under $OUT, first distinct errors printed.
. benchmarks/gpu_session9/common.sh
exec > >(tee $OUT/run25_${PART:-1}.txt) 2>&1
nvidia-smi --query-gpu=name --format=csv,noheader
if [ "${PART:-1}" = 1 ]; then
for f in ${FILES:-tests/gpu/test_quant_packed_kernels.py tests/unit/test_quant_bnb.py tests/models/test_moe.py \
  tests/models/test_prompt_embeds.py tests/unit/test_logits_processors.py tests/models/test_gguf_moe.py}; do
  b=$(basename $f .py)
  PYTHONPATH=$R timeout ${T:-150} python3 -m pytest -q -p no:cacheprovider -n ${N:-4} -rfs --tb=short $f > $OUT/$b.log 2>&1
  echo "== $f: $(tail -1 $OUT/$b.log)"
  grep -E "^E " $OUT/$b.log | sort | uniq -c | sort -rn | head -6 | cut -c1-300
done
fi
if [ "${PART:-1}" = 3 ]; then
PART=3 bash benchmarks/gpu_session24/run.sh
fi
if [ "${PART:-1}" = 4 ]; then
# The cold start after the decode warm-up rows change (prediction: ~0.5 s less; 0 variants built one by one), then
# the tests/gpu files not run this session, in one -v run (a cut run still names each finished test).
SWITCH=PAGEDLLM_LOGGING_LEVEL VALUES="DEBUG" timeout 90 bash benchmarks/gpu_session9/s9e.sh 2>&1 | grep -E "health|start-up " | cut -c1-400
grep -h -E "during start-up|Built .* Triton" $OUT/serve_PAGEDLLM_LOGGING_LEVEL_1.log | cut -c1-300
PYTHONPATH=$R timeout ${T:-200} python3 -m pytest -v -p no:cacheprovider -n 8 --tb=short tests/gpu/test_lora_gpu.py \
  tests/gpu/test_sleep_mode_gpu.py tests/gpu/test_attention_backends_gpu.py tests/gpu/test_quant_awq_engine_gpu.py \
  tests/gpu/test_quant_gptq_engine_gpu.py tests/gpu/test_spec_decode_gpu.py tests/gpu/test_cpu_offload_gpu.py \
  tests/gpu/test_gguf_kept_quantized_gpu.py tests/gpu/test_pdl.py tests/gpu/test_tensor_parallel_gpu.py \
  tests/gpu/test_triton_gemv.py tests/gpu/test_triton_ops.py tests/gpu/test_triton_rotary.py \
  tests/gpu/test_triton_fp8_kv.py tests/gpu/test_quant_fp8_kernels.py "tests/gpu/test_engine_gpu.py::test_fp32_moe_tokens_equal_hf" \
  > $OUT/gpu_rest.log 2>&1
echo "gpu_rest: $(grep -c ' PASSED' $OUT/gpu_rest.log) passed, $(grep -c ' FAILED' $OUT/gpu_rest.log) failed, $(grep -c ' SKIPPED' $OUT/gpu_rest.log) skipped; $(tail -1 $OUT/gpu_rest.log | cut -c1-200)"
grep -E " FAILED" $OUT/gpu_rest.log | sed 's/.*FAILED/FAILED/' | sort -u | head -20
fi
