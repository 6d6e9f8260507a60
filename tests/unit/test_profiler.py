"""``LLM.start_profile()`` / ``stop_profile()`` and the server's POST /start_profile, /stop_profile (vLLM's): a torch
profiler trace of the engine's steps lands in PAGEDLLM_TORCH_PROFILER_DIR / VLLM_TORCH_PROFILER_DIR; without it,
a clear error offline and no endpoints on the server. On a tiny random Llama with the SmolLM2 tokenizer."""
from __future__ import annotations


import gzip
import json

import pytest

from pagedllm import LLM, SamplingParams
from app_client import run_on, serve_in_process

GREEDY = SamplingParams(temperature=0, max_tokens=2)


def traces(folder) -> list:
    return sorted(folder.glob("*.pt.trace.json.gz"))


def test_offline_profile_writes_a_trace(tiny_llama_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("VLLM_TORCH_PROFILER_DIR", str(tmp_path))
    # Without Python stacks: with them, torch's profiler start hung once in the full suite (session 16, not
    # reproduced alone); vLLM's VLLM_TORCH_PROFILER_WITH_STACK=0 is honoured.
    monkeypatch.setenv("VLLM_TORCH_PROFILER_WITH_STACK", "0")
    from pagedllm.config import profiler_settings
    assert profiler_settings(None).torch_profiler_with_stack is False
    monkeypatch.setenv("VLLM_TORCH_PROFILER_WITH_STACK", "1")
    assert profiler_settings(None).torch_profiler_with_stack is True
    monkeypatch.setenv("VLLM_TORCH_PROFILER_WITH_STACK", "0")
    llm = LLM(tiny_llama_dir, dtype="float32", max_model_len=128, kv_cache_memory_gb=0.01)
    llm.start_profile()
    with pytest.raises(ValueError, match="The profiler is already running"):
        llm.start_profile()
    llm.generate("Hello there", GREEDY, use_tqdm=False)
    llm.stop_profile()
    (trace,) = traces(tmp_path)
    events = json.loads(gzip.decompress(trace.read_bytes()))["traceEvents"]
    assert any(e.get("name", "").startswith("aten::") for e in events)      # the model's ops were recorded
    with pytest.raises(ValueError, match="The profiler is not running"):
        llm.stop_profile()
    llm.start_profile(profile_prefix="run2")
    llm.stop_profile()
    assert [t.name.split(".")[0] for t in traces(tmp_path) if t.name.startswith("run2")] == ["run2_pp0_tp0"]


def test_offline_profile_needs_the_folder(tiny_llama_dir, monkeypatch):
    monkeypatch.delenv("VLLM_TORCH_PROFILER_DIR", raising=False)
    monkeypatch.delenv("PAGEDLLM_TORCH_PROFILER_DIR", raising=False)
    llm = LLM(tiny_llama_dir, dtype="float32", max_model_len=128, kv_cache_memory_gb=0.01)
    with pytest.raises(RuntimeError, match=r"Profiler is not enabled: start the engine with profiler_config="):
        llm.start_profile()


def test_server_profile_endpoints(tiny_llama_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("PAGEDLLM_TORCH_PROFILER_DIR", str(tmp_path))
    monkeypatch.setenv("PAGEDLLM_TORCH_PROFILER_WITH_STACK", "0")      # as above

    async def script(client):
        assert (await client.post("/start_profile")).status_code == 200
        body = {"prompt": "Hello there", "max_tokens": 2, "temperature": 0}
        assert (await client.post("/v1/completions", json=body)).status_code == 200
        assert (await client.post("/stop_profile")).status_code == 200
        again = await client.post("/stop_profile")
        assert again.status_code == 400 and "The profiler is not running" in again.json()["error"]["message"]
    with serve_in_process(tiny_llama_dir) as (app, engine):
        run_on(app, script)
    assert len(traces(tmp_path)) == 1
    monkeypatch.delenv("PAGEDLLM_TORCH_PROFILER_DIR")

    async def script2(client):
        assert (await client.post("/start_profile")).status_code == 404
    with serve_in_process(tiny_llama_dir) as (app, engine):
        run_on(app, script2)

