"""/v1/responses' store, as vLLM's (VLLM_ENABLE_RESPONSES_API_STORE): GET /v1/responses/{id}, previous_response_id,
background and cancel, with the store on and off; on the server's app in-process over a tiny random Llama with the
SmolLM2 tokenizer (greedy, a few tokens)."""
from __future__ import annotations

import asyncio
import json

from app_client import run_on, serve_args


def _app(tiny_llama_dir, tiny_engine, monkeypatch, store: bool):
    from pagedllm.entrypoints.openai.api_server import build_app
    monkeypatch.setenv("VLLM_ENABLE_RESPONSES_API_STORE", "1" if store else "0")
    return build_app(serve_args(tiny_llama_dir), *tiny_engine)


def test_without_the_store_get_and_cancel_are_vllms_404_and_chaining_names_the_variable(tiny_llama_dir, tiny_engine,
                                                                                        monkeypatch):
    # vLLM mounts GET /v1/responses/{id} and POST .../cancel whatever the store: an id it does not hold is its 404
    # "Response with id '...' not found." (they were 'not a route' 404s here).
    app = _app(tiny_llama_dir, tiny_engine, monkeypatch, store=False)
    body = {"model": tiny_llama_dir, "input": "Hi", "max_output_tokens": 2, "temperature": 0}

    async def script(client):
        made = await client.post("/v1/responses", json=body)
        rid = made.json()["id"]
        return (made, await client.get(f"/v1/responses/{rid}"), await client.get("/v1/responses/abc"),
                await client.post(f"/v1/responses/{rid}/cancel"),
                await client.post("/v1/responses", json={**body, "previous_response_id": rid}),
                await client.post("/v1/responses", json={**body, "background": True}))
    made, got, bad, cancel, chained, background = run_on(app, script)
    assert made.status_code == 200 and made.json()["store"] is False
    rid = made.json()["id"]
    assert got.status_code == 404 and got.json()["error"]["message"] == f"Response with id '{rid}' not found."
    assert bad.status_code == 400 and "begins with 'resp'" in bad.json()["error"]["message"]
    assert cancel.status_code == 404
    for r, param in ((chained, "previous_response_id"), (background, "background")):
        assert r.status_code == 400 and r.json()["error"]["param"] == param
        assert "VLLM_ENABLE_RESPONSES_API_STORE" in r.json()["error"]["message"]


def test_store_get_previous_response_id_and_stream(tiny_llama_dir, tiny_engine, monkeypatch):
    app = _app(tiny_llama_dir, tiny_engine, monkeypatch, store=True)
    base = {"model": tiny_llama_dir, "max_output_tokens": 4, "temperature": 0}

    async def script(client):
        first = (await client.post("/v1/responses", json={**base, "input": "Hi", "instructions": "Be brief."})).json()
        got = await client.get(f"/v1/responses/{first['id']}")
        chained = (await client.post("/v1/responses", json={**base, "input": "And then?",
                                                             "previous_response_id": first["id"]})).json()
        # The same conversation sent whole (the first response's instructions are not carried over, as OpenAI says).
        answer = first["output"][0]["content"][0]["text"]
        whole = (await client.post("/v1/responses", json={**base, "store": False, "input": [
            {"role": "user", "content": "Hi"}, {"role": "assistant", "content": answer},
            {"role": "user", "content": "And then?"}]})).json()
        streamed = await client.post("/v1/responses", json={**base, "input": "Hi", "stream": True})
        done = [line for line in streamed.text.splitlines() if line.startswith("data: ")][-1]

        sid = json.loads(done[len("data: "):])["response"]["id"]
        got_streamed = await client.get(f"/v1/responses/{sid}")
        twice = (await client.post("/v1/responses", json={**base, "input": "Hi", "stream": True,
                                                          "previous_response_id": sid}))
        missing = await client.post("/v1/responses", json={**base, "input": "Hi", "previous_response_id": "resp_no"})
        return first, got, chained, whole, got_streamed, twice, missing
    first, got, chained, whole, got_streamed, twice, missing = run_on(app, script)
    assert first["store"] is True and got.status_code == 200 and got.json() == first
    assert chained["previous_response_id"] == first["id"] and first["previous_response_id"] is None
    assert chained["status"] != "failed" and chained["usage"]["input_tokens"] == whole["usage"]["input_tokens"]
    assert chained["output"][0]["content"][0]["text"] == whole["output"][0]["content"][0]["text"]
    assert got_streamed.status_code == 200 and got_streamed.json()["status"] in ("completed", "incomplete")
    assert got_streamed.json()["output"][0]["type"] == "message"
    assert twice.status_code == 200 and ("response.completed" in twice.text or "response.incomplete" in twice.text)
    assert missing.status_code == 404 and missing.json()["error"]["param"] == "previous_response_id"


def test_background_runs_on_and_cancel_stops_it(tiny_llama_dir, tiny_engine, monkeypatch):
    app = _app(tiny_llama_dir, tiny_engine, monkeypatch, store=True)
    engine = tiny_engine[0]
    aborted = []
    abort = engine._abort_nowait
    monkeypatch.setattr(engine, "_abort_nowait", lambda rid, *a, **k: (aborted.append(rid), abort(rid, *a, **k)))
    base = {"model": tiny_llama_dir, "input": "Hi", "temperature": 0}

    async def script(client):
        sync = (await client.post("/v1/responses", json={**base, "max_output_tokens": 4})).json()
        queued = (await client.post("/v1/responses", json={**base, "max_output_tokens": 4, "background": True})).json()
        for _ in range(600):
            polled = (await client.get(f"/v1/responses/{queued['id']}")).json()
            if polled["status"] not in ("queued", "in_progress"):
                break
            await asyncio.sleep(0.05)
        # One cancelled while it runs (its engine request is aborted), one before it starts.
        long = (await client.post("/v1/responses", json={**base, "max_output_tokens": 90, "background": True})).json()
        while not engine.output_processor.get_num_unfinished_requests():     # until it runs in the engine
            await asyncio.sleep(0.001)
        cancelled = await client.post(f"/v1/responses/{long['id']}/cancel")
        early = (await client.post("/v1/responses", json={**base, "max_output_tokens": 90, "background": True})).json()
        early_cancelled = await client.post(f"/v1/responses/{early['id']}/cancel")
        for _ in range(100):
            if not engine.output_processor.get_num_unfinished_requests():
                break
            await asyncio.sleep(0.01)
        after = (await client.get(f"/v1/responses/{long['id']}")).json()
        after_early = (await client.get(f"/v1/responses/{early['id']}")).json()
        unfinished = engine.output_processor.get_num_unfinished_requests()
        # An error of the chat completion (past max_model_len=128 here) ends it "failed", with the error.
        too_long = (await client.post("/v1/responses", json={**base, "max_output_tokens": 120, "background": True}))
        await asyncio.sleep(0.2)
        failed = (await client.get(f"/v1/responses/{too_long.json()['id']}")).json()
        again = await client.post(f"/v1/responses/{sync['id']}/cancel")
        streamed = await client.post("/v1/responses", json={**base, "background": True, "stream": True})
        return (sync, queued, polled, long, cancelled, after, again, streamed, early_cancelled, after_early, unfinished,
                failed)
    (sync, queued, polled, long, cancelled, after, again, streamed, early_cancelled, after_early, unfinished,
     failed) = run_on(app, script)
    assert queued["status"] == "queued" and queued["output"] == [] and queued["store"] is True
    assert queued["background"] is True and polled["background"] is True and sync["background"] is False
    assert polled["status"] == sync["status"] and polled["id"] == queued["id"]
    assert polled["output"][0]["content"][0]["text"] == sync["output"][0]["content"][0]["text"]
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    assert after["status"] == "cancelled" and after["output"] == [] and after_early["status"] == "cancelled"
    assert early_cancelled.status_code == 200 and unfinished == 0
    assert [rid.startswith(f"chatcmpl-{long['id'][len('resp_'):]}") for rid in aborted] == [True]   # aborted once
    assert failed["status"] == "failed" and "maximum context length" in failed["error"]["message"]
    assert again.status_code == 400 and again.json()["error"]["message"] == "Cannot cancel a synchronous response."
    assert streamed.status_code == 400 and streamed.json()["error"]["param"] == "background"


def test_background_that_raises_ends_failed(tiny_llama_dir, tiny_engine, monkeypatch):
    # An unexpected exception in the background run leaves the stored response "failed" with the error (it would
    # stay "in_progress" for good, and GET would poll it forever).
    from pagedllm.entrypoints.openai.serving_chat import OpenAIServingChat
    app = _app(tiny_llama_dir, tiny_engine, monkeypatch, store=True)

    async def broken(self, req, raw_request=None):
        raise RuntimeError("engine exploded")
    monkeypatch.setattr(OpenAIServingChat, "create_chat_completion", broken)

    async def script(client):
        queued = (await client.post("/v1/responses", json={"model": tiny_llama_dir, "input": "Hi",
                                                           "background": True})).json()
        await asyncio.sleep(0.1)
        return (await client.get(f"/v1/responses/{queued['id']}")).json()
    got = run_on(app, script)
    assert got["status"] == "failed" and "engine exploded" in got["error"]["message"]
