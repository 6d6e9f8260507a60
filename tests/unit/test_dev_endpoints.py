"""vLLM's development endpoints (PAGEDLLM_SERVER_DEV_MODE=1 / VLLM_SERVER_DEV_MODE=1, entrypoints/dev_routes.py):
POST /sleep, /wake_up, GET /is_sleeping, POST /reset_prefix_cache, /reset_mm_cache, /reset_encoder_cache, POST /pause,
/resume, GET /is_paused. Driven in-process through the app the server runs (``build_app`` over ASGI), on a tiny random
Llama with the SmolLM2 tokenizer."""
from __future__ import annotations

import asyncio

from app_client import run_on, serve_in_process

BODY = {"prompt": "The capital of France is the city of Paris, which lies on the river Seine and has", "max_tokens": 5,
        "temperature": 0}


def test_sleep_wake_up_is_sleeping(tiny_llama_dir, monkeypatch):
    monkeypatch.setenv("VLLM_SERVER_DEV_MODE", "1")

    async def script(client):
        first = (await client.post("/v1/completions", json=BODY)).json()["choices"][0]["text"]
        assert (await client.get("/is_sleeping")).json() == {"is_sleeping": False}
        assert (await client.post("/sleep?level=1")).status_code == 200
        assert (await client.get("/is_sleeping")).json() == {"is_sleeping": True}
        assert engine.engine.runner.kv_caches == []
        # A request while the engine sleeps waits in its queue (as vLLM's) and runs after wake-up.
        waiting = asyncio.create_task(client.post("/v1/completions", json=BODY))
        await asyncio.sleep(0.5)
        assert not waiting.done()
        assert (await client.post("/wake_up")).status_code == 200
        answer = await waiting
        assert answer.status_code == 200 and answer.json()["choices"][0]["text"] == first
        assert (await client.get("/is_sleeping")).json() == {"is_sleeping": False}
        # Partial wake-up after level 2: sleeping until every tag is back.
        assert (await client.post("/sleep?level=2")).status_code == 200
        assert (await client.post("/wake_up?tags=weights")).status_code == 200
        assert (await client.get("/is_sleeping")).json() == {"is_sleeping": True}
        assert (await client.post("/wake_up?tags=kv_cache")).status_code == 200
        assert (await client.get("/is_sleeping")).json() == {"is_sleeping": False}
        again = (await client.post("/v1/completions", json=BODY)).json()["choices"][0]["text"]
        assert again == first
        bad = await client.post("/sleep?level=3")
        assert bad.status_code == 400 and "sleep level must be 0" in bad.json()["error"]["message"]
        bad = await client.post("/wake_up?tags=weight")
        assert bad.status_code == 400 and "Unknown wake_up tag(s) ['weight']" in bad.json()["error"]["message"]
        assert (await client.post("/reset_prefix_cache")).status_code == 200
        assert (await client.post("/reset_prefix_cache?reset_running_requests=true")).status_code == 200
        bad = await client.post("/reset_prefix_cache?reset_running_requests=maybe")
        assert bad.status_code == 400 and "reset_running_requests" in bad.json()["error"]["message"]
        # vLLM's cache routes of its dev mode (benchmarks call them between runs): nothing cached, 200 as vLLM's.
        assert (await client.post("/reset_mm_cache")).status_code == 200
        assert (await client.post("/reset_encoder_cache")).status_code == 200
    with serve_in_process(tiny_llama_dir, "--enable-sleep-mode") as (app, engine):
        run_on(app, script)


def test_dev_endpoints_need_dev_mode_and_sleep_mode(tiny_llama_dir, monkeypatch):
    monkeypatch.delenv("VLLM_SERVER_DEV_MODE", raising=False)
    monkeypatch.delenv("PAGEDLLM_SERVER_DEV_MODE", raising=False)

    async def script(client):
        for path in ("/sleep", "/wake_up", "/collective_rpc", "/reset_prefix_cache", "/pause", "/resume",
                     "/reset_mm_cache", "/reset_encoder_cache"):
            assert (await client.post(path)).status_code == 404, path
        assert (await client.get("/is_sleeping")).status_code == 404
        assert (await client.get("/is_paused")).status_code == 404
    with serve_in_process(tiny_llama_dir) as (app, engine):
        run_on(app, script)
    monkeypatch.setenv("PAGEDLLM_SERVER_DEV_MODE", "1")

    async def script2(client):
        response = await client.post("/sleep")
        assert response.status_code == 400
        assert response.json()["error"]["message"].startswith("Sleep mode is not enabled: create the engine with "
                                                              "enable_sleep_mode=True (--enable-sleep-mode)")
        assert (await client.get("/is_sleeping")).json() == {"is_sleeping": False}
    with serve_in_process(tiny_llama_dir) as (app, engine):
        run_on(app, script2)



def test_pause_resume_is_paused(tiny_llama_dir, monkeypatch):
    # vLLM's RL weight-sync routes: a request that arrives while paused waits, and runs after /resume.
    monkeypatch.setenv("VLLM_SERVER_DEV_MODE", "1")

    async def script(client):
        first = (await client.post("/v1/completions", json=BODY)).json()["choices"][0]["text"]
        assert (await client.get("/is_paused")).json() == {"is_paused": False}
        paused = await client.post("/pause?mode=keep&clear_cache=false")
        assert paused.status_code == 200 and paused.json() == {"status": "paused"}
        assert (await client.get("/is_paused")).json() == {"is_paused": True}
        waiting = asyncio.create_task(client.post("/v1/completions", json=BODY))
        await asyncio.sleep(0.5)
        assert not waiting.done()
        resumed = await client.post("/resume")
        assert resumed.status_code == 200 and resumed.json() == {"status": "resumed"}
        answer = await waiting
        assert answer.status_code == 200 and answer.json()["choices"][0]["text"] == first
        assert (await client.get("/is_paused")).json() == {"is_paused": False}
        bad = await client.post("/pause?mode=later")
        assert bad.status_code == 400 and bad.json() == {
            "error": "mode='later': pause_generation's mode is one of abort, wait, keep."}
    with serve_in_process(tiny_llama_dir) as (app, engine):
        run_on(app, script)
