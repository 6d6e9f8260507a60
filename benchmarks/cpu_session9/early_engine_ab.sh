#!/bin/bash
# Issue 18 on the CPU VM: `pagedllm serve` to /health 200 with the engine process spawned first from the command line
# (PAGEDLLM_EARLY_ENGINE=1) or after the server's imports (0). The CPU host forks by default, so spawn is forced.
# Model: a 2-layer dummy Qwen2 (hidden 64) written to a temp folder. Usage: early_engine_ab.sh 1|0
cd "$(dirname "$0")/../.."
d=$(mktemp -d)
.venv/bin/python -c "
import json
json.dump(dict(architectures=['Qwen2ForCausalLM'], model_type='qwen2', hidden_act='silu', max_position_embeddings=4096,
               rope_theta=10000.0, rms_norm_eps=1e-6, torch_dtype='bfloat16', hidden_size=64, intermediate_size=128,
               num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, vocab_size=512,
               tie_word_embeddings=True), open('$d/config.json', 'w'))"
t0=$(date +%s%N)
PAGEDLLM_EARLY_ENGINE=$1 PAGEDLLM_ENGINE_START_METHOD=spawn OMP_NUM_THREADS=1 .venv/bin/pagedllm serve "$d" \
  --load-format dummy --skip-tokenizer-init --port 8131 --served-model-name m > "$d/serve.log" 2>&1 &
pid=$!
until curl -sf localhost:8131/health >/dev/null; do sleep 0.1; kill -0 $pid 2>/dev/null || break; done
echo "early=$1 /health after $(( ($(date +%s%N) - t0) / 1000000 )) ms"
curl -s localhost:8131/v1/completions -H 'Content-Type: application/json' \
  -d '{"model":"m","prompt":[1,2,3],"max_tokens":4}' | cut -c1-150; echo
kill -INT $pid; wait $pid
grep -E "Started the engine|start-up  " "$d/serve.log" | cut -c1-250
rm -rf "$d"
