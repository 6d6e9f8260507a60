"""Helpers of the server tests: a real server process on a free localhost port (one per test module).

The bundled SmolLM2-135M-Instruct loads offline on CPU; a short context (512) and a small KV cache keep the server
light. ``RemoteServer`` waits on /health and kills the process group on teardown; if the server dies, the test
failure shows the tail of its log.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time

import httpx
import pytest
from ports import free_port  # tests/ports.py

MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
MAX_MODEL_LEN = 512
# Common flags: short context, a 0.1 GiB KV cache (plenty for 32 requests of 512 tokens), fixed seed.
SERVER_ARGS = ["--max-model-len", str(MAX_MODEL_LEN), "--kv-cache-memory-gb", "0.1", "--seed", "0",
               "--disable-uvicorn-access-log"]


class RemoteServer:
    def __init__(self, args: list[str], module: str = "pagedllm.entrypoints.cli", env: dict | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tempfile.NamedTemporaryFile("w+", prefix="pagedllm_server_", suffix=".log", delete=False)
        cmd = [sys.executable, "-m", module] + args + ["--host", "127.0.0.1", "--port", str(self.port)]
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
                                     env={**os.environ, **(env or {})})

    def wait_ready(self, timeout: float = 240.0) -> "RemoteServer":
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"server not healthy after {timeout} s:\n{self.log_tail()}")

    def log_tail(self, n: int = 60) -> str:
        with open(self.log.name) as f:
            return "".join(f.readlines()[-n:])

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()


def start_servers(*specs: list[str] | tuple[str, list[str]]) -> list[RemoteServer]:
    """Start several servers at once (they load in parallel) and wait until all are healthy. A spec is the
    ``pagedllm`` command line, or ``(python module, its command line)``."""
    servers = [RemoteServer(spec[1], module=spec[0]) if isinstance(spec, tuple) else RemoteServer(spec)
               for spec in specs]
    try:
        for s in servers:
            s.wait_ready()
    except BaseException:
        for s in servers:
            s.stop()
        raise
    return servers


def metric_value(text: str, name: str) -> float | None:
    """The value of the first sample of ``name`` in Prometheus text (labels ignored)."""
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


def server_fixture(*flags: str):
    """A module-scoped ``server`` fixture: ``pagedllm serve`` with the bundled model, SERVER_ARGS and ``flags``."""
    @pytest.fixture(scope="module")
    def server():
        (s,) = start_servers(["serve", MODEL, *flags] + SERVER_ARGS)
        yield s
        s.stop()
    return server


def openai_client(server: RemoteServer):
    """The official ``openai`` client of ``server``: no retries, a generous timeout (CPU generation)."""
    import openai
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=120)
