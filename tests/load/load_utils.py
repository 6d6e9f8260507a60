"""Shared by the load and fault suite (issue 17): the server helpers of tests/server (a real ``pagedllm serve`` process
on a free localhost port), the engine-core process's pid, and Prometheus parsing.

A bounded subset runs in the main CI suite; ``PAGEDLLM_LOAD_FULL=1 pytest -q -s tests/load`` runs the full counts (500
streams, a longer fuzz run, the starvation measurement). Each test prints its figures on a line starting with ``LOAD``.
(A module name no other test folder uses: tests/server's modules are imported by name the same way.)"""
from __future__ import annotations

import os
import re
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "server"))
from server_utils import MODEL, RemoteServer, free_port, metric_value  # noqa: E402,F401

FULL = os.environ.get("PAGEDLLM_LOAD_FULL", "") not in ("", "0")


def metrics_text(url: str) -> str:
    return httpx.get(url + "/metrics", timeout=10).text


def metric(url: str, name: str, text: str | None = None) -> float:
    value = metric_value(text if text is not None else metrics_text(url), name)
    assert value is not None, f"{name} is not in /metrics"
    return value


def metric_with_label(text: str, name: str, label: str) -> float:
    """The sample of ``name`` whose labels contain ``label`` (e.g. 'finished_reason="abort"'); 0 when absent."""
    for line in text.splitlines():
        if line.startswith(name + "{") and label in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def engine_core_pid(server: RemoteServer, timeout: float = 30.0) -> int:
    """The engine-core process's pid, from the server's start-up log line."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        with open(server.log.name) as f:
            m = re.search(r"engine core process pid (\d+)", f.read())
        if m:
            return int(m.group(1))
        time.sleep(0.2)
    raise AssertionError("no 'engine core process pid' line in the server log:\n" + server.log_tail())
