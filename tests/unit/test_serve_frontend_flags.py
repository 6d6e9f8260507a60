"""``pagedllm serve``'s frontend flags that change how the server is reached or what it logs: ``--uds`` (a Unix
domain socket), on a tiny random Llama with the SmolLM2 tokenizer, as a user runs them."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time

import httpx


def _start_serve(model_dir: str, *flags: str, log_path: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "pagedllm.entrypoints.cli", "serve", model_dir, "--dtype", "float32",
           "--max-model-len", "128", "--kv-cache-memory-gb", "0.01", "--seed", "0", *flags]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with open(log_path, "w") as log:
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_uds_serves_health_and_completions_over_the_socket(tiny_llama_dir):
    folder = tempfile.mkdtemp(prefix="pl_uds_", dir="/tmp")     # short: a socket path is at most 107 bytes
    sock, log_path = os.path.join(folder, "server.sock"), os.path.join(folder, "server.log")
    proc = _start_serve(tiny_llama_dir, "--uds", sock, "--disable-uvicorn-access-log", log_path=log_path)
    try:
        client = httpx.Client(transport=httpx.HTTPTransport(uds=sock), base_url="http://localhost", timeout=60)
        deadline = time.time() + 120
        while True:
            assert proc.poll() is None, open(log_path).read()[-3000:]
            try:
                if client.get("/health").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.time() < deadline, open(log_path).read()[-3000:]
            time.sleep(0.2)
        r = client.post("/v1/completions", json={"model": tiny_llama_dir, "prompt": "Hello", "max_tokens": 3,
                                                 "temperature": 0})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["object"] == "text_completion" and body["usage"]["completion_tokens"] == 3
        assert f"Starting the server on unix:{sock}" in open(log_path).read()
    finally:
        _stop(proc)
