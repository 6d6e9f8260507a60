#!/bin/bash
# Queued by session 26 for the next GPU session (carry [".whl", ".bench"]; .whl from `../shared/gpu/wheelhouse.sh
# bitsandbytes opentelemetry-api importlib-metadata zipp`; prefer an H200: issues 13 / 18 are H200 rows).
# PART=1: the whole tests/gpu tree after session 26's LoRA changes (cuda_graphs keys, LoRAStep through every model),
#         in one -v run with the full log kept (a cut run still names each finished test).
# PART=2: issue 13's AWQ rows and issue 18's bf16 rows on this GPU (session 25's next.sh PART=2), then LoRA at 7B
#         with both graph variants (bs1 base on a LoRA engine: session 26 measured only 1.5B).
. benchmarks/gpu_session9/common.sh
exec > >(tee $OUT/next26_${PART:-1}.txt) 2>&1
nvidia-smi --query-gpu=name --format=csv,noheader
if [ "${PART:-1}" = 1 ]; then
PYTHONPATH=$R timeout ${T:-540} python3 -m pytest -v -p no:cacheprovider -n 8 --tb=short tests/gpu tests/models/test_moe.py \
  "tests/unit/test_lora.py::test_adapter_on_the_other_llama_shaped_families" tests/unit/test_swap_preemption.py \
  > $OUT/gpu_all.log 2>&1
echo "gpu_all: $(grep -c ' PASSED' $OUT/gpu_all.log) passed, $(grep -c ' FAILED' $OUT/gpu_all.log) failed, $(grep -c ' SKIPPED' $OUT/gpu_all.log) skipped; $(tail -1 $OUT/gpu_all.log | cut -c1-200)"
grep -E " FAILED" $OUT/gpu_all.log | sed 's/.*FAILED/FAILED/' | sort -u | head -30
fi
if [ "${PART:-1}" = 2 ]; then
PART=2 bash benchmarks/gpu_session25/next.sh
ENGINES="lora graphs,lora graphs one variant,no lora graphs" PYTHONPATH=$R:.bench/sb timeout 240 python3 \
  benchmarks/gpu_session26/lora_graphs.py qwen2.5-7b 2>&1 | grep -E "^\{|Error"
fi
