"""Load and faults against a real ``pagedllm serve`` of the bundled SmolLM2 with a KV cache small enough to preempt:
many concurrent streams, a fifth of them disconnecting at random, then the checks a user or an operator would make —
every completed greedy text equals the same prompt served alone, every disconnect was aborted on the server, every KV
block is back in the pool (its own counter), preemptions appear in the log and in /metrics. Then the engine core
process is killed mid-run."""
from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import time

import httpx
import pytest

from load_utils import FULL, MODEL, RemoteServer, engine_core_pid, metric, metric_with_label, metrics_text

NUM_STREAMS = 500 if FULL else 32
DISCONNECT_FRACTION = 0.2
MAX_TOKENS = 24
NUM_BLOCKS = 40          # x 16 tokens = 640: about 14 of the ~45-token sequences at once, so the scheduler preempts
PROMPTS = [f"Question {i}: name a colour and explain why you like it." for i in range(8)]
LOAD_ARGS = ["serve", MODEL, "--max-model-len", "256", "--num-gpu-blocks-override", str(NUM_BLOCKS),
             "--max-num-seqs", "32", "--seed", "0", "--disable-uvicorn-access-log"]


async def _stream(client: httpx.AsyncClient, url: str, prompt: str, disconnect_after: float | None) -> dict:
    """One streamed greedy completion; with ``disconnect_after``, the client goes away that many seconds after its
    first chunk (before the end: MAX_TOKENS steps take longer)."""
    body = {"model": MODEL, "prompt": prompt, "max_tokens": MAX_TOKENS, "temperature": 0, "stream": True,
            "ignore_eos": True}
    text, finish, t0, first_at = [], None, time.monotonic(), None
    async with client.stream("POST", url + "/v1/completions", json=body, timeout=1800) as r:
        assert r.status_code == 200, await r.aread()
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            assert "error" not in chunk, chunk
            choice = chunk["choices"][0]
            text.append(choice["text"])
            finish = choice["finish_reason"] or finish
            if first_at is None:
                first_at = time.monotonic()
            if disconnect_after is not None and time.monotonic() - first_at >= disconnect_after:
                return {"disconnected": True, "finished": finish is not None}
    return {"disconnected": False, "text": "".join(text), "finish": finish, "seconds": time.monotonic() - t0}


async def _run_load(url: str, rng: random.Random) -> list[dict]:
    limits = httpx.Limits(max_connections=NUM_STREAMS + 8, max_keepalive_connections=0)
    async with httpx.AsyncClient(limits=limits) as client:
        jobs = []
        for i in range(NUM_STREAMS):
            disconnect = rng.random() < DISCONNECT_FRACTION
            jobs.append(_stream(client, url, PROMPTS[i % len(PROMPTS)],
                                rng.uniform(0.0, 0.3) if disconnect else None))
        return await asyncio.gather(*jobs)


def _wait_idle(url: str, timeout: float = 120) -> str:
    deadline = time.time() + timeout
    while True:
        text = metrics_text(url)
        idle = (metric(url, "pagedllm:num_requests_running", text) == 0
                and metric(url, "pagedllm:num_requests_waiting", text) == 0)
        if idle or time.time() > deadline:
            return text
        time.sleep(0.3)


@pytest.fixture(scope="module")
def load_server():
    server = RemoteServer(LOAD_ARGS).wait_ready()
    yield server
    server.stop()


def test_streams_with_disconnects_preempt_abort_and_leak_nothing(load_server):
    url = load_server.url
    # The reference: each prompt served alone.
    reference = {}
    for prompt in PROMPTS:
        r = httpx.post(url + "/v1/completions", json={"model": MODEL, "prompt": prompt, "max_tokens": MAX_TOKENS,
                                                      "temperature": 0, "ignore_eos": True}, timeout=300)
        assert r.status_code == 200, r.text
        reference[prompt] = r.json()["choices"][0]["text"]
    before = metrics_text(url)
    aborts_before = metric_with_label(before, "pagedllm:request_success_total", 'finished_reason="abort"')
    preemptions_before = metric(url, "pagedllm:num_preemptions_total", before)

    t0 = time.monotonic()
    results = asyncio.run(_run_load(url, random.Random(17)))
    wall = time.monotonic() - t0
    after = _wait_idle(url)

    completed = [(i, r) for i, r in enumerate(results) if not r["disconnected"]]
    disconnects = [r for r in results if r["disconnected"]]
    mismatched = [i for i, r in completed if r["text"] != reference[PROMPTS[i % len(PROMPTS)]]]
    aborts = metric_with_label(after, "pagedllm:request_success_total", 'finished_reason="abort"') - aborts_before
    preemptions = metric(url, "pagedllm:num_preemptions_total", after) - preemptions_before
    free = metric(url, "pagedllm:kv_cache_free_blocks", after)
    total = metric(url, "pagedllm:kv_cache_num_blocks", after)
    log = open(load_server.log.name).read()
    print(f"\nLOAD streams={NUM_STREAMS} completed={len(completed)} disconnects={len(disconnects)} "
          f"server_aborts={aborts:.0f} preemptions={preemptions:.0f} mismatched_texts={len(mismatched)} "
          f"leaked_blocks={total - free:.0f} of {total:.0f} wall={wall:.1f}s")
    assert disconnects and completed
    assert not mismatched, f"{len(mismatched)} greedy texts differ from the single-request text"
    assert all(r["finish"] == "length" for _, r in completed)
    assert aborts == len([r for r in disconnects if not r["finished"]]), (aborts, len(disconnects))
    assert total == NUM_BLOCKS and free == total, "KV blocks did not return to the pool"
    assert preemptions > 0, "the KV cache was meant to be small enough to preempt"
    assert "is preempted by recompute" in log
    # The server still serves, and /health is fine.
    assert httpx.get(url + "/health").status_code == 200


def test_engine_killed_mid_run_fails_requests_answers_503_and_exits():
    server = RemoteServer(["serve", MODEL, "--max-model-len", "256", "--num-gpu-blocks-override", "64", "--seed", "0",
                           "--disable-uvicorn-access-log"]).wait_ready()
    try:
        pid = engine_core_pid(server)

        async def run() -> tuple[list, httpx.Response, int, float]:
            async with httpx.AsyncClient() as client:
                async def one(i: int):
                    body = {"model": MODEL, "prompt": f"Story {i}:", "max_tokens": 200, "ignore_eos": True,
                            "stream": i % 2 == 0}
                    if i % 2 == 0:
                        events = []
                        async with client.stream("POST", server.url + "/v1/completions", json=body,
                                                 timeout=120) as r:
                            async for line in r.aiter_lines():
                                if line.startswith("data: "):
                                    events.append(line[6:])
                        return ("stream", r.status_code, events)
                    r = await client.post(server.url + "/v1/completions", json=body, timeout=120)
                    return ("json", r.status_code, r.json())
                tasks = [asyncio.ensure_future(one(i)) for i in range(6)]
                await asyncio.sleep(3.0)                      # all running (the model is generating)
                os.kill(pid, signal.SIGKILL)
                t_kill = time.monotonic()
                results = await asyncio.gather(*tasks)
                fail_seconds = time.monotonic() - t_kill
                new = await client.post(server.url + "/v1/completions",
                                        json={"model": MODEL, "prompt": "Hi", "max_tokens": 2}, timeout=30)
                health = (await client.get(server.url + "/health", timeout=30)).status_code
                return results, new, health, fail_seconds

        results, new, health, fail_seconds = asyncio.run(run())
        print(f"\nLOAD engine_killed in_flight={len(results)} failed_within={fail_seconds:.2f}s "
              f"new_request={new.status_code} health={health}")
        for kind, status, payload in results:
            if kind == "json":
                assert status == 503 and payload["error"]["type"] == "ServiceUnavailableError", payload
            elif status != 503:           # (a 503 before the stream began: it had not reached the engine yet)
                assert status == 200
                errors = [json.loads(e) for e in payload if e.startswith("{") and '"error"' in e]
                assert errors and errors[0]["error"]["code"] == 503, payload[-3:]
        assert new.status_code == 503 and "engine is dead" in new.json()["error"]["message"]
        assert health == 503
        assert server.proc.wait(60) == 1, server.log_tail()
        assert "Traceback" not in open(server.log.name).read().split("The engine core stopped")[-1]
    finally:
        server.stop()


@pytest.mark.skipif(not FULL, reason="the starvation measurement needs minutes of an otherwise idle CPU: "
                                     "PAGEDLLM_LOAD_FULL=1")
def test_starvation_latency_is_printed():
    """The issue's figure: a 2-token request while an 8k-token prompt and an n=256 request run (serve defaults).
    Printed, not asserted on wall time (a shared CI machine); the scheduling bound is asserted in
    tests/unit/test_kv_cache.py."""
    from measure_starvation import BIG_N, measure
    server = RemoteServer(["serve", MODEL, "--max-n", str(BIG_N), "--disable-uvicorn-access-log"]).wait_ready()
    try:
        seconds = asyncio.run(measure(server.url, MODEL, probes=5))
    finally:
        server.stop()
    print(f"\nLOAD starvation_seconds={','.join(f'{s:.2f}' for s in seconds)} median={sorted(seconds)[2]:.2f}")
    assert all(s < 60 for s in seconds)
