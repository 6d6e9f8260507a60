#!/usr/bin/env bash
# The single-device seed snippets, as a new user runs them, against the bundled model on the CPU: offline generate
# and chat, `pagedllm serve` + curl + the openai client + /generate, and `pagedllm bench latency / throughput /
# serve` with tiny counts. Under 5 minutes on 2 cores; exits non-zero at the first failure and always stops its server.
#
#   bash scripts/seed_smoke.sh            (PYTHON=... picks the interpreter; default .venv/bin/python, else python3)
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -n "${PYTHON:-}" ]; then PY=$PYTHON; elif [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
MODEL=HuggingFaceTB/SmolLM2-135M-Instruct
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
# The `pagedllm` command of the interpreter in use (the same entry point as .venv/bin/pagedllm).
pagedllm() { "$PY" -m pagedllm.entrypoints.cli "$@"; }

WORK=$(mktemp -d)
SERVER_PID=
cleanup() {
    if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill -TERM -- "-$SERVER_PID" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.2; done
        kill -KILL -- "-$SERVER_PID" 2>/dev/null || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT
step() { printf '\n==> %s\n' "$*"; }
fail() { echo "seed_smoke: FAILED: $*" >&2; [ -f "$WORK/serve.log" ] && tail -30 "$WORK/serve.log" >&2; exit 1; }
START=$SECONDS

step "offline: LLM.generate and LLM.chat"
"$PY" - <<'PYEOF' || fail "offline snippet"
from pagedllm import LLM, SamplingParams
llm = LLM(model="HuggingFaceTB/SmolLM2-135M-Instruct", max_model_len=512, kv_cache_memory_gb=0.1)
outputs = llm.generate(["Hello, my name is", "The capital of France is"],
                       SamplingParams(temperature=0.8, top_p=0.95, max_tokens=16))
for o in outputs:
    print(f"Prompt: {o.prompt!r}, Generated text: {o.outputs[0].text!r}")
    assert o.outputs[0].text, "empty completion"
chat = llm.chat([{"role": "user", "content": "What is the capital of France?"}],
                SamplingParams(temperature=0, max_tokens=16))
print("chat:", repr(chat[0].outputs[0].text))
assert "Paris" in chat[0].outputs[0].text
PYEOF

step "pagedllm serve $MODEL"
PORT=$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
URL=http://127.0.0.1:$PORT
setsid "$PY" -m pagedllm.entrypoints.cli serve "$MODEL" --host 127.0.0.1 --port "$PORT" --max-model-len 512 \
    --kv-cache-memory-gb 0.1 --disable-uvicorn-access-log >"$WORK/serve.log" 2>&1 &
SERVER_PID=$!
for _ in $(seq 600); do
    curl -sf "$URL/health" >/dev/null && break
    kill -0 "$SERVER_PID" 2>/dev/null || fail "the server exited"
    sleep 0.3
done
curl -sf "$URL/health" >/dev/null || fail "the server did not become healthy"

step "curl /v1/models, /v1/completions, /v1/chat/completions"
curl -sf "$URL/v1/models" | grep -q "\"$MODEL\"" || fail "/v1/models"
curl -sf "$URL/v1/completions" -H 'Content-Type: application/json' \
    -d "{\"model\": \"$MODEL\", \"prompt\": \"San Francisco is a\", \"max_tokens\": 7, \"temperature\": 0}" \
    | tee "$WORK/completion.json" | grep -q '"text_completion"' || fail "/v1/completions"
cat "$WORK/completion.json"; echo
curl -sf "$URL/v1/chat/completions" -H 'Content-Type: application/json' \
    -d "{\"model\": \"$MODEL\", \"messages\": [{\"role\": \"user\", \"content\": \"Who won the world series in 2020?\"}], \"max_tokens\": 16}" \
    | grep -q '"chat.completion"' || fail "/v1/chat/completions"

step "openai client"
OPENAI_BASE=$URL/v1 "$PY" - <<'PYEOF' || fail "openai client snippet"
import os
from openai import OpenAI
client = OpenAI(api_key="EMPTY", base_url=os.environ["OPENAI_BASE"])
model = client.models.list().data[0].id
completion = client.completions.create(model=model, prompt="San Francisco is a", max_tokens=7, temperature=0)
print("completion:", repr(completion.choices[0].text))
assert completion.choices[0].text
chat = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Say hello"}], max_tokens=8)
print("chat:", repr(chat.choices[0].message.content))
stream = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Count to 3"}],
                                        max_tokens=8, stream=True)
assert sum(1 for chunk in stream if chunk.choices and chunk.choices[0].delta.content) >= 1
PYEOF

step "POST /generate (the demo server's body, on the OpenAI server)"
GEN_URL=$URL/generate "$PY" - <<'PYEOF' || fail "/generate snippet"
import json, os
import requests
response = requests.post(os.environ["GEN_URL"], json={"prompt": "San Francisco is a", "temperature": 0.0,
                                                      "max_tokens": 8, "n": 1})
result = json.loads(response.content)
print(result)
assert result["text"][0].startswith("San Francisco is a")
PYEOF

step "pagedllm bench serve"
pagedllm bench serve --port "$PORT" --model "$MODEL" --dataset-name random --random-input-len 16 \
    --random-output-len 8 --num-prompts 4 --ignore-eos | tee "$WORK/bench_serve.txt" || fail "bench serve"
grep -Eq "Successful requests: +4" "$WORK/bench_serve.txt" || fail "bench serve: not 4 successful requests"

kill -TERM -- "-$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null || true; SERVER_PID=

step "pagedllm bench latency"
pagedllm bench latency --model "$MODEL" --input-len 16 --output-len 8 --batch-size 2 --num-iters-warmup 1 \
    --num-iters 2 --max-model-len 256 --kv-cache-memory-gb 0.05 | tee "$WORK/latency.txt" || fail "bench latency"
grep -q "Avg latency:" "$WORK/latency.txt" || fail "bench latency: no 'Avg latency' line"

step "pagedllm bench throughput"
pagedllm bench throughput --model "$MODEL" --input-len 16 --output-len 8 --num-prompts 4 --max-model-len 256 \
    --kv-cache-memory-gb 0.05 | tee "$WORK/throughput.txt" || fail "bench throughput"
grep -q "^Throughput:" "$WORK/throughput.txt" || fail "bench throughput: no 'Throughput' line"

echo
echo "seed_smoke: all snippets passed in $((SECONDS - START)) s"
