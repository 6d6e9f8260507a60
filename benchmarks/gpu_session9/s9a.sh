#!/bin/bash
# Issue 18 on one H200: (1) the config phase with / without the docstring bypass (session 8's change), fresh
# processes on the host's transformers 5.17; (2) `pagedllm serve` 7B dummy from a cold Triton cache to /health 200,
# with the start-up timeline; (3) the served concurrency sweep (benchmarks/serve_sweep.py, one server, c = 1, 16, 64,
# 100, 256); (4) the unchanged serve_workload.py at c = 100 (the ANCHORS.md row).
# From the repo root, carry [".whl", ".bench"] (.bench/sb = ../shared/bench, .whl = ../shared/gpu/wheelhouse.sh).
. benchmarks/gpu_session9/common.sh
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
git log -1 --format='tree at %h %s' 2>/dev/null | cut -c1-120
python3 -c "import transformers, torch, triton; print('transformers', transformers.__version__, 'torch', torch.__version__, 'triton', triton.__version__)"
d=$(mktemp -d); python3 -c "
import json,sys; sys.path.insert(0,'.bench/sb'); from workloads import qwen2_config; json.dump(qwen2_config('qwen2.5-7b'), open('$d/config.json','w'))"
if [ -z "$SKIP_CONFIG" ]; then
for bypass in 1 0 1 0; do
  PYTHONPATH=$R:/tmp/site python3 -c "
import sys, time
from pagedllm.model import hf_configs
if not $bypass:
    import contextlib; hf_configs._config_docstrings_not_generated = contextlib.nullcontext
from pagedllm.engine.core import create_engine_config
from pagedllm.config import EngineArgs
n = len(sys.modules); t = time.perf_counter()
create_engine_config(EngineArgs(model='$d', load_format='dummy', skip_tokenizer_init=True, dtype='bfloat16'))
print('bypass=$bypass config %.2f s, %d new modules, sklearn %s' % (time.perf_counter() - t, len(sys.modules) - n, 'sklearn' in sys.modules))"
done
fi
export TRITON_CACHE_DIR=/tmp/tcache_s9; rm -rf $TRITON_CACHE_DIR
t0=$(date +%s%N)
PYTHONPATH=$R:/tmp/site python3 -m pagedllm.entrypoints.cli serve $d --load-format dummy --skip-tokenizer-init --max-model-len 4096 --port 8124 --served-model-name m --dtype bfloat16 > $OUT/serve_cold.log 2>&1 &
pid=$!
until curl -sf localhost:8124/health >/dev/null; do sleep 0.2; kill -0 $pid 2>/dev/null || break; done
echo "cold: /health 200 after $(( ($(date +%s%N) - t0) / 1000000 )) ms"
grep -E "start-up " $OUT/serve_cold.log | cut -c1-600
kill -INT $pid; wait $pid
export TRITON_CACHE_DIR=/tmp/tcache_s9
PATH=/tmp/bin_new:$PATH PYTHONPATH=/tmp/site timeout 420 python3 benchmarks/serve_sweep.py pagedllm qwen2.5-7b --concs ${CONCS:-1,16,64,100,256} --workloads .bench/sb --log-dir $OUT
echo "late compiles after start-up (sweep): $(grep -c 'after start-up' $OUT/sweep_server_pagedllm_qwen2.5-7b.log)"
if [ -z "$SKIP_C100" ]; then
PATH=/tmp/bin_new:$PATH PYTHONPATH=/tmp/site LOG_DIR=$OUT timeout 150 python3 .bench/sb/serve_workload.py pagedllm qwen2.5-7b sharegpt_like_1000 100
echo "late compiles after start-up (c=100): $(grep -c 'after start-up' $OUT/server_pagedllm_qwen2.5-7b.log)"
fi
