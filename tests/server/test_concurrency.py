"""Continuous batching through the server: concurrent streams share steps; a client that disconnects frees its KV
blocks."""
from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest

from server_utils import MODEL, metric_value

MAX_TOKENS = 16


async def stream_completion(client: httpx.AsyncClient, prompt: str) -> tuple[int, str, float]:
    """One streamed completion: (number of chunks, text, seconds); checks that all tokens came."""
    t0 = time.perf_counter()
    body = {"model": MODEL, "prompt": prompt, "max_tokens": MAX_TOKENS, "temperature": 0, "ignore_eos": True,
            "stream": True, "return_token_ids": True}
    chunks, tokens, text = 0, 0, ""
    async with client.stream("POST", "/v1/completions", json=body) as r:
        assert r.status_code == 200
        async for line in r.aiter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                choice = json.loads(line[6:])["choices"][0]
                chunks += 1
                tokens += len(choice["token_ids"])
                text += choice["text"]
    assert tokens == MAX_TOKENS
    return chunks, text, time.perf_counter() - t0


def kv_usage(url: str) -> tuple[float, float]:
    text = httpx.get(url + "/metrics").text
    return metric_value(text, "pagedllm:kv_cache_usage_perc"), metric_value(text, "pagedllm:num_requests_running")


def test_idle_server_reports_its_whole_block_pool(server):
    # First in this module: a fresh server, no request yet. Its pool gauges are the built engine's, every block free
    # (they read 0 and 0 until the first step, while cache_config_info already named the pool's size).
    text = httpx.get(server.url + "/metrics").text
    info = next(line for line in text.splitlines() if line.startswith("pagedllm:cache_config_info{"))
    num_gpu_blocks = int(info.split('num_gpu_blocks="')[1].split('"')[0])
    assert num_gpu_blocks > 0
    assert metric_value(text, "pagedllm:kv_cache_num_blocks") == num_gpu_blocks
    assert metric_value(text, "pagedllm:kv_cache_free_blocks") == num_gpu_blocks


def test_concurrent_streams_share_batches(server):
    async def main():
        async with httpx.AsyncClient(base_url=server.url, timeout=300) as client:
            await stream_completion(client, "Warm up")
            _, _, single = await stream_completion(client, "The weather today is")
            prompts = [f"Request number {i} says that the weather today is" for i in range(32)]
            t0 = time.perf_counter()
            results = await asyncio.gather(*[stream_completion(client, p) for p in prompts])
            return single, time.perf_counter() - t0, results

    single, total, results = asyncio.run(main())
    # Each streamed step by step (a step's tokens arrive merged only if the server fell a step behind).
    assert all(chunks >= MAX_TOKENS // 2 for chunks, _, _ in results)
    assert len({text for _, text, _ in results}) > 1               # each got its own text
    # Sequential service would take ~32 x single; shared decode steps make it a small multiple.
    assert total < 10 * single, f"32 concurrent streams took {total:.1f} s, one alone {single:.1f} s"
    text = httpx.get(server.url + "/metrics").text
    assert metric_value(text, "pagedllm:num_requests_running") == 0


def test_disconnected_stream_frees_blocks(server):
    idle_usage, running = kv_usage(server.url)
    assert running == 0
    body = {"model": MODEL, "prompt": "Tell me a very long story about a dragon. " * 8, "max_tokens": 400,
            "temperature": 0, "ignore_eos": True, "stream": True}
    with httpx.Client(base_url=server.url, timeout=120) as client:
        with client.stream("POST", "/v1/completions", json=body) as r:
            assert r.status_code == 200
            received = 0
            for line in r.iter_lines():
                if line.startswith("data: "):
                    received += 1
                if received == 3:
                    usage_mid, running_mid = kv_usage(server.url)
                    assert running_mid == 1 and usage_mid > idle_usage
                    break
        # leaving the block closes the connection mid-stream
    deadline = time.time() + 30
    while time.time() < deadline:
        usage, running = kv_usage(server.url)
        if running == 0 and usage == pytest.approx(idle_usage):
            break
        time.sleep(0.2)
    assert running == 0 and usage == pytest.approx(idle_usage), (usage, idle_usage)
    text = httpx.get(server.url + "/metrics").text
    assert 'finished_reason="abort"' in text
    # The server keeps serving.
    r = httpx.post(server.url + "/v1/completions", json={"prompt": "Hi", "max_tokens": 2}, timeout=120)
    assert r.status_code == 200


def test_disconnected_non_streaming_request_is_aborted(server):
    body = {"model": MODEL, "prompt": "Write a poem.", "max_tokens": 400, "temperature": 0, "ignore_eos": True}
    with pytest.raises(httpx.TimeoutException):
        httpx.post(server.url + "/v1/completions", json=body, timeout=1.5)
    deadline = time.time() + 30
    running = None
    while time.time() < deadline:
        _, running = kv_usage(server.url)
        if running == 0:
            break
        time.sleep(0.2)
    assert running == 0


def test_dead_engine_process_makes_health_fail(server):
    """Last in this module (it kills the engine): the engine core process dies -> /health 503, requests 503 (OpenAI's
    error shape), and the server exits with code 1 a few seconds later (entrypoints/shutdown.py)."""
    import os
    import signal
    import subprocess

    children = subprocess.run(["pgrep", "-P", str(server.proc.pid)], capture_output=True, text=True).stdout.split()
    assert len(children) >= 1, "the server should run its engine in a child process"
    for pid in children:
        os.kill(int(pid), signal.SIGKILL)
    deadline = time.time() + 30
    while time.time() < deadline and httpx.get(server.url + "/health").status_code == 200:
        time.sleep(0.05)
    assert httpx.get(server.url + "/health").status_code == 503
    r = httpx.post(server.url + "/v1/completions", json={"prompt": "Hi", "max_tokens": 2}, timeout=30)
    assert r.status_code == 503 and r.json()["error"]["type"] == "ServiceUnavailableError"
    assert "engine is dead" in r.json()["error"]["message"]
    assert server.proc.wait(60) == 1
