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
