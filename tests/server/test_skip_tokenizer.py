"""The speed harness's mode: `--load-format dummy --skip-tokenizer-init`, token-id prompts, streamed with usage
(what /work/shared/bench/serve_workload.py sends and reads), on a tiny random Qwen2 config."""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

import httpx
import pytest

from server_utils import start_servers

TINY_QWEN2 = dict(architectures=["Qwen2ForCausalLM"], model_type="qwen2", hidden_act="silu",
                  max_position_embeddings=4096, rope_theta=1000000.0, rms_norm_eps=1e-6, torch_dtype="bfloat16",
                  use_sliding_window=False, bos_token_id=0, eos_token_id=1, hidden_size=64, intermediate_size=128,
                  num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, vocab_size=1000,
                  tie_word_embeddings=True)


@pytest.fixture(scope="module")
def server():
    folder = Path(tempfile.mkdtemp(prefix="pagedllm_tiny_qwen2_"))
    (folder / "config.json").write_text(json.dumps(TINY_QWEN2))
    (s,) = start_servers(["serve", str(folder), "--load-format", "dummy", "--skip-tokenizer-init",
                          "--max-model-len", "1024", "--served-model-name", "m", "--kv-cache-memory-gb", "0.05",
                          "--disable-uvicorn-access-log"])
    yield s
    s.stop()


def stream_events(url: str, body: dict) -> list[dict]:
    events = []
    with httpx.stream("POST", url + "/v1/completions", json=body, timeout=120) as r:
        assert r.status_code == 200, r.read()
        buf = b""
        for chunk in r.iter_bytes():
            buf += chunk
            while b"\n\n" in buf:
                ev, buf = buf.split(b"\n\n", 1)
                ev = ev.strip()
                if ev.startswith(b"data: ") and ev != b"data: [DONE]":
                    events.append(json.loads(ev[6:]))
    return events


def test_token_id_prompt_streams_with_usage(server):
    ids = list(range(100, 164))
    body = {"model": "m", "prompt": ids, "max_tokens": 12, "ignore_eos": True, "temperature": 0.0, "stream": True,
            "stream_options": {"include_usage": True}}
    events = stream_events(server.url, body)
    token_chunks = [e for e in events if e.get("choices")]
    # One chunk per step; steps that finish while the previous chunk is still being sent arrive merged.
    assert 2 <= len(token_chunks) <= 12
    assert all(e["choices"][0]["text"] == "" for e in token_chunks)  # no tokenizer, no text
    token_ids = [t for e in token_chunks for t in e["choices"][0]["token_ids"]]
    assert len(token_ids) == 12 and all(0 <= t < 1000 for t in token_ids)
    assert token_chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert events[-1]["usage"] == {"prompt_tokens": 64, "completion_tokens": 12, "total_tokens": 76,
                                   "prompt_tokens_details": None}
    # The same request without streaming gives the same tokens (greedy).
    r = httpx.post(server.url + "/v1/completions", json={**body, "stream": False, "stream_options": None},
                   timeout=120).json()
    assert r["choices"][0]["token_ids"] == token_ids and r["usage"]["completion_tokens"] == 12


def test_text_needs_a_tokenizer(server):
    r = httpx.post(server.url + "/v1/completions", json={"model": "m", "prompt": "hello", "max_tokens": 2})
    assert r.status_code == 400 and "tokenizer" in r.json()["error"]["message"]
    r = httpx.post(server.url + "/v1/chat/completions",
                   json={"model": "m", "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 400 and "tokenizer" in r.json()["error"]["message"]
    assert httpx.get(server.url + "/health").status_code == 200
