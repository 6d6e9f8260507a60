"""vLLM's benchmark script names in benchmarks/: backend_request_func.py (importable request functions, called the
way vLLM's are) against the fake streaming server, and benchmark_prioritization.py on the bundled model."""
from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import re
import subprocess
import sys

import pytest

from pagedllm.bench import offline, prioritization

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "benchmarks", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_backend_request_func_vllm_calls(fake_server):
    brf = load_script("backend_request_func")
    assert brf.ASYNC_REQUEST_FUNCS["vllm"] is brf.async_request_openai_completions
    assert brf.ASYNC_REQUEST_FUNCS["openai-chat"] is brf.async_request_openai_chat_completions
    assert set(brf.OPENAI_COMPATIBLE_BACKENDS) == set(brf.ASYNC_REQUEST_FUNCS) - {"openai-embeddings"}   # as vLLM
    assert brf.ASYNC_REQUEST_FUNCS["openai-embeddings"] is brf.async_request_openai_embeddings
    fake_server.reset(ttft_s=0.05, itl_s=0.01)

    class Counter:
        n = 0

        def update(self, k):
            self.n += k

    pbar = Counter()

    async def run():
        completion = await brf.async_request_openai_completions(brf.RequestFuncInput(
            prompt="w1 w2 w3", api_url=fake_server.base_url + "/v1/completions", prompt_len=3, output_len=4,
            model="fake-model"), pbar=pbar)
        chat = await brf.async_request_openai_chat_completions(brf.RequestFuncInput(
            prompt="w1 w2", api_url=fake_server.base_url + "/v1/chat/completions", prompt_len=2, output_len=3,
            model="fake-model"), pbar)
        return completion, chat

    completion, chat = asyncio.run(run())
    assert completion.success and completion.generated_text == " w0 w1 w2 w3" and completion.output_tokens == 4
    assert completion.ttft >= 0.05 and len(completion.itl) == 3 and completion.latency >= completion.ttft
    assert chat.success and chat.generated_text == " w0 w1 w2" and chat.output_tokens == 3
    assert pbar.n == 2
    assert [r.body["max_tokens"] for r in fake_server.requests[:1]] == [4]
    assert fake_server.requests[1].body["messages"] == [{"role": "user", "content": "w1 w2"}]


def test_prioritization_script_flags():
    result = subprocess.run([sys.executable, os.path.join(REPO, "benchmarks", "benchmark_prioritization.py"),
                             "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    for flag in ("--backend", "--dataset", "--input-len", "--output-len", "--n", "--num-prompts", "--output-json",
                 "--detokenize", "--model", "--max-model-len"):
        assert flag in result.stdout


def parse(*argv: str):
    return prioritization.add_cli_args(__import__("argparse").ArgumentParser()).parse_args(list(argv))


def test_prioritization_needs_lengths_without_dataset():
    with pytest.raises(ValueError, match="--input-len and --output-len"):
        prioritization.validate_args(parse("--input-len", "8"))
    with pytest.raises(ValueError, match="cannot be combined with --dataset"):
        prioritization.validate_args(parse("--dataset", "x.json", "--input-len", "8"))


def test_prioritization_on_bundled_model(tmp_path, capsys, monkeypatch):
    priorities = []
    real_create = offline.create_llm

    def create_recording_llm(kwargs):
        llm = real_create(kwargs)
        generate = llm.generate

        def recording_generate(prompts, params, **kw):
            priorities.extend(kw["priority"])
            outputs = generate(prompts, params, **kw)
            assert [len(o.outputs[0].token_ids) for o in outputs] == [3] * len(prompts)   # ignore_eos
            return outputs
        llm.generate = recording_generate
        return llm

    monkeypatch.setattr(prioritization, "create_llm", create_recording_llm)
    out = tmp_path / "prio.json"
    args = parse("--model", "HuggingFaceTB/SmolLM2-135M-Instruct", "--input-len", "8", "--output-len", "3",
                 "--num-prompts", "12", "--max-model-len", "64", "--kv-cache-memory-gb", "0.05",
                 "--output-json", str(out))
    prioritization.main(args)
    printed = capsys.readouterr().out
    assert re.search(r"^Throughput: \d+\.\d\d requests/s, \d+\.\d\d tokens/s$", printed, re.M), printed
    results = json.loads(out.read_text())
    assert set(results) == {"elapsed_time", "num_requests", "total_num_tokens", "requests_per_second",
                            "tokens_per_second"}
    assert results["num_requests"] == 12 and results["total_num_tokens"] == 12 * (8 + 3)
    assert len(priorities) == 12 and set(priorities) == {0, 1}     # both levels drawn, seeded
