"""vLLM's development and profiling endpoints on a real ``pagedllm serve`` (the engine in its own process), driven as a
user does with curl: POST /sleep, /wake_up, GET /is_sleeping, POST /collective_rpc, /start_profile, /stop_profile."""
from __future__ import annotations

import httpx

from server_utils import MODEL, SERVER_ARGS, RemoteServer

BODY = {"model": MODEL, "prompt": "San Francisco is a", "max_tokens": 6, "temperature": 0}


def test_sleep_collective_rpc_and_profile_through_the_engine_process(tmp_path):
    server = RemoteServer(["serve", MODEL, "--enable-sleep-mode"] + SERVER_ARGS,
                          env={"VLLM_SERVER_DEV_MODE": "1", "VLLM_TORCH_PROFILER_DIR": str(tmp_path)})
    try:
        server.wait_ready()
        with httpx.Client(base_url=server.url, timeout=120) as client:
            text = client.post("/v1/completions", json=BODY).json()["choices"][0]["text"]
            assert client.post("/sleep", params={"level": 1}).status_code == 200
            assert client.get("/is_sleeping").json() == {"is_sleeping": True}
            assert client.post("/wake_up").status_code == 200
            assert client.get("/is_sleeping").json() == {"is_sleeping": False}
            assert client.post("/v1/completions", json=BODY).json()["choices"][0]["text"] == text
            rpc = client.post("/collective_rpc", json={"method": "reload_weights"})
            assert rpc.status_code == 200 and rpc.json() == {"results": [None]}
            assert client.post("/start_profile").status_code == 200
            assert client.post("/v1/completions", json=BODY).json()["choices"][0]["text"] == text
            assert client.post("/stop_profile").status_code == 200
            # sleep's default mode aborts a request in flight: its stream ends with the error, as vLLM's.
            stream = {**BODY, "max_tokens": 400, "ignore_eos": True, "stream": True}
            with client.stream("POST", "/v1/completions", json=stream) as response:
                lines = response.iter_lines()
                assert next(lines).startswith("data: ")
                assert client.post("/sleep", params={"level": 1}).status_code == 200
                rest = [line for line in lines if line]
            assert rest[-1] == "data: [DONE]" and "the engine was put to sleep" in rest[-2]
            assert client.post("/wake_up").status_code == 200
        assert len(list(tmp_path.glob("*.pt.trace.json.gz"))) == 1
        assert "Sleep mode freed" in server.log_tail(400)
    finally:
        server.stop()
