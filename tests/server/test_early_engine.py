"""`pagedllm serve` where the engine process is spawned (a GPU host) starts that process first, from the command line,
before the server's own imports (entrypoints/early_engine.py), and the server adopts it. CI has no GPU:
PAGEDLLM_ENGINE_START_METHOD=spawn makes this CPU host spawn too."""
from __future__ import annotations

import os
import re
import subprocess
import sys

import httpx

from server_utils import MODEL, SERVER_ARGS, RemoteServer
from pagedllm.config import EngineArgs
from pagedllm.engine.core_client import EngineCoreClient, engine_args_fingerprint
from pagedllm.engine.messages import EarlyEngineArgs
from pagedllm.entrypoints.early_engine import PrestartedCore

SPAWN = {"PAGEDLLM_ENGINE_START_METHOD": "spawn", "OMP_NUM_THREADS": "1"}


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    with open(f"/proc/{pid}/stat") as f:          # a zombie is gone too
        return f.read().split(")")[-1].split()[0] == "Z"


def test_serve_answers_from_the_engine_it_started_from_the_command_line():
    server = RemoteServer(["serve", MODEL, *SERVER_ARGS], env=SPAWN).wait_ready()
    try:
        r = httpx.post(server.url + "/v1/completions", timeout=60,
                       json={"model": MODEL, "prompt": "The capital of France is", "max_tokens": 5,
                             "temperature": 0})
        assert r.status_code == 200, r.text
        assert r.json()["usage"]["completion_tokens"] == 5
        log = server.log_tail(400)
        started = re.findall(r"Started the engine core process pid (\d+)(.*)", log)
        assert len(started) == 1, log
        assert "from the command line, before the server's own imports" in started[0][1]
        pid = int(started[0][0])
    finally:
        server.stop()
    assert server.proc.returncode == 0
    assert _gone(pid)


def test_a_bad_flag_is_reported_once_and_the_early_engine_ends():
    proc = subprocess.run([sys.executable, "-m", "pagedllm.entrypoints.cli", "serve", MODEL, "--max-num-seqs", "abc"],
                          env={**os.environ, **SPAWN}, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.count("invalid int value: 'abc'") == 1, proc.stderr


def test_the_early_engine_parses_the_command_line_without_the_servers_imports():
    # The engine process parses `serve`'s whole command line before it builds the model (on the start-up's
    # critical path): FastAPI (~0.5 s) and transformers are the server's and the config's, not the parser's.
    code = ("import sys; from pagedllm.entrypoints.cli import make_parser; "
            "from pagedllm.entrypoints.early_engine import _engine_args; "
            "a = _engine_args(['serve', 'm', '--max-request-body-bytes', '5', '--max-num-seqs', '3'], make_parser); "
            "print(a.max_num_seqs, sorted(m for m in ('fastapi', 'starlette', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.split("\n")[0] == "3 []", out.stdout + out.stderr


class _Conn:
    def __init__(self, *msgs):
        self.msgs, self.closed = list(msgs), False

    def recv(self):
        if not self.msgs:
            raise EOFError
        return self.msgs.pop(0)

    def close(self):
        self.closed = True


class _Process:
    killed = False

    def is_alive(self):
        return not self.killed

    def kill(self):
        self.killed = True

    def join(self, timeout=None):
        pass


def _client(engine_args, prestarted):
    return EngineCoreClient(engine_args, engine_process=True, prestarted=prestarted, on_message=lambda m: None,
                            on_idle=lambda: None, on_closed=lambda e: None)


def test_an_early_engine_with_other_arguments_is_ended_not_used():
    engine_args = EngineArgs(model="some/model", max_num_seqs=8)
    other = PrestartedCore(_Process(), _Conn(EarlyEngineArgs(engine_args_fingerprint(EngineArgs(model="some/model")))))
    client = _client(engine_args, other)
    assert client._adopt(other) is False
    assert other.process.killed and other.conn.closed
    quiet = PrestartedCore(_Process(), _Conn(EarlyEngineArgs(None)))    # it parsed nothing it would serve
    assert _client(engine_args, quiet)._adopt(quiet) is False and quiet.process.killed
    same = PrestartedCore(_Process(), _Conn(EarlyEngineArgs(engine_args_fingerprint(engine_args))))
    client = _client(engine_args, same)
    assert client._adopt(same) is True
    assert client._worker is same.process and not same.process.killed
