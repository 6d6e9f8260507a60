"""``pagedllm serve -tp 3`` on the CPU (the bundled SmolLM2: 9 heads, 3 KV heads, vocab 49152 split three ways)
answers the openai client with TP=1's greedy text, and its worker processes end with the server."""
from __future__ import annotations

import os
import signal

import openai
import psutil

from server_utils import MAX_MODEL_LEN, MODEL, SERVER_ARGS, start_servers

PROMPT = "The capital of France is"


def test_serve_tp3_matches_tp1_and_leaves_no_workers():
    from pagedllm import LLM, SamplingParams
    llm = LLM(model=MODEL, max_model_len=MAX_MODEL_LEN, kv_cache_memory_gb=0.1, seed=0)
    expected = llm.generate([PROMPT], SamplingParams(temperature=0.0, max_tokens=16), use_tqdm=False)[0].outputs[0].text
    del llm
    # With -tp the engine core runs in the server's process (no --disable-frontend-multiprocessing needed): the
    # workers are the server's children.
    (server,) = start_servers(["serve", MODEL, "-tp", "3"] + SERVER_ARGS)
    try:
        workers = psutil.Process(server.proc.pid).children(recursive=True)
        assert len(workers) >= 3, server.log_tail()
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused")
        out = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=16, temperature=0.0)
        assert out.choices[0].text == expected
        os.kill(server.proc.pid, signal.SIGTERM)      # the server alone, not its process group
        server.proc.wait(30)
        _, alive = psutil.wait_procs(workers, timeout=10)
        assert not alive, f"workers outlived the server: {[p.pid for p in alive]}"
    finally:
        server.stop()


def test_a_killed_worker_gives_503_and_ends_the_server():
    """Issue 12: a tensor-parallel worker that dies mid-run ends the engine (the rank named in the server log); the
    server answers 503 in the OpenAI error shape instead of hanging, /health says 503, and the server exits."""
    import httpx
    (server,) = start_servers(["serve", MODEL, "-tp", "3"] + SERVER_ARGS)
    try:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused")
        client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=2, temperature=0.0)
        # the spawned rank processes (not multiprocessing's resource tracker, also a spawned child)
        workers = [p for p in psutil.Process(server.proc.pid).children(recursive=True)
                   if "spawn_main" in " ".join(p.cmdline())]
        assert len(workers) == 3, [p.cmdline() for p in psutil.Process(server.proc.pid).children(recursive=True)]
        workers[-1].kill()
        response = httpx.post(server.url + "/v1/completions", timeout=30,
                              json={"model": MODEL, "prompt": PROMPT, "max_tokens": 4, "temperature": 0.0})
        assert response.status_code == 503, (response.status_code, response.text, server.log_tail())
        assert set(response.json()["error"]) >= {"message", "type", "code"}
        try:
            health = httpx.get(server.url + "/health", timeout=5).status_code
        except httpx.TransportError:
            health = None      # already gone: the server exits a few seconds after its engine died
        assert health in (503, None)
        assert server.proc.wait(30) != 0
        assert "died" in server.log_tail() or "Worker rank" in server.log_tail(), server.log_tail()
    finally:
        server.stop()


def test_process_group_sigterm_drains_with_tp_workers_alive():
    """SIGTERM to the whole process group (systemd, docker stop) while a request is in flight: the rank workers
    ignore it and keep serving until the drain is over (--shutdown-timeout), the request completes, the server exits
    0 and no worker outlives it."""
    import threading
    import time

    import httpx
    (server,) = start_servers(["serve", MODEL, "-tp", "3", "--shutdown-timeout", "60"] + SERVER_ARGS)
    try:
        workers = [p for p in psutil.Process(server.proc.pid).children(recursive=True)
                   if "spawn_main" in " ".join(p.cmdline())]
        assert len(workers) == 3
        result: dict = {}

        def request() -> None:
            result["response"] = httpx.post(server.url + "/v1/completions", timeout=120, json={
                "model": MODEL, "prompt": PROMPT, "max_tokens": 24, "ignore_eos": True, "temperature": 0})
        thread = threading.Thread(target=request)
        thread.start()
        time.sleep(1.0)
        os.killpg(server.proc.pid, signal.SIGTERM)
        thread.join(120)
        response = result["response"]
        assert response.status_code == 200, (response.text, server.log_tail())
        assert response.json()["usage"]["completion_tokens"] == 24
        assert server.proc.wait(60) == 0, server.log_tail()
        _, alive = psutil.wait_procs(workers, timeout=10)
        assert not alive, f"workers outlived the server: {[p.pid for p in alive]}"
    finally:
        server.stop()
