"""Offline benchmarks' arguments, printed lines and JSON, on a stand-in LLM (fast, no model), and the HF backend on a
tiny random Llama. The real engine runs in test_bench_engine.py."""
from __future__ import annotations

import argparse
import json
import re
from types import SimpleNamespace

import pytest

from pagedllm.bench import latency, long_document_qa, offline, prefix_caching, throughput


class FakeLLM:
    """Answers generate() with max_tokens x n token ids per prompt; records what it was given."""

    instances: list["FakeLLM"] = []

    def __init__(self, **kwargs):
        self.kwargs = kwargs
        self.calls = []
        FakeLLM.instances.append(self)

    def get_tokenizer(self):
        return None

    def start_profile(self):
        self.calls.append("start_profile")

    def stop_profile(self):
        self.calls.append("stop_profile")

    def generate(self, prompts, params, use_tqdm=True, lora_request=None):
        params_list = params if isinstance(params, list) else [params] * len(prompts)
        self.calls.append((prompts, params_list))
        self.lora_requests = lora_request
        outs = []
        for prompt, p in zip(prompts, params_list):
            ids = prompt["prompt_token_ids"]
            outs.append(SimpleNamespace(prompt_token_ids=ids, num_cached_tokens=0 if not self.kwargs.get(
                "enable_prefix_caching") else len(ids) // 2,
                outputs=[SimpleNamespace(token_ids=[0] * p.max_tokens, text="") for _ in range(p.n)]))
        return outs


@pytest.fixture
def fake_engine(monkeypatch):
    FakeLLM.instances = []
    make = lambda kwargs: FakeLLM(**kwargs)   # noqa: E731
    sp = lambda **kw: SimpleNamespace(**{"n": 1, **kw})   # noqa: E731
    for module in (offline, throughput, latency):
        monkeypatch.setattr(module, "create_llm", make)
        monkeypatch.setattr(module, "sampling_params", sp)
    monkeypatch.setattr(offline, "measure_in_fresh_process", offline.measure_generate)
    return FakeLLM


def parse(module, *argv):
    parser = argparse.ArgumentParser()
    module.add_cli_args(parser)
    return parser.parse_args(list(argv))


def test_throughput_prints_vllm_lines_and_json(fake_engine, tmp_path, capsys):
    out = tmp_path / "t.json"
    args = parse(throughput, "--backend", "vllm", "--input-len", "12", "--output-len", "5", "--num-prompts", "3",
                 "--n", "2", "--output-json", str(out), "--max-model-len", "512", "--enforce-eager")
    result = throughput.main(args)
    stdout = capsys.readouterr().out
    assert "When dataset path is not set, it will default to random dataset" in stdout
    assert re.search(r"^Throughput: [\d.]+ requests/s, [\d.]+ total tokens/s, [\d.]+ output tokens/s$", stdout, re.M)
    assert "Total num prompt tokens:  36\n" in stdout and "Total num output tokens:  30\n" in stdout
    saved = json.loads(out.read_text())
    assert saved["num_requests"] == 3 and saved["total_num_tokens"] == 66
    assert saved["tokens_per_second"] == pytest.approx(66 / saved["elapsed_time"])
    assert result == saved
    llm = fake_engine.instances[0]
    assert llm.kwargs["max_model_len"] == 512 and llm.kwargs["enforce_eager"] is True   # engine flags reach LLM
    prompts, params = llm.calls[0]
    assert [len(p["prompt_token_ids"]) for p in prompts] == [12, 12, 12]
    assert all(p.ignore_eos and p.temperature == 1.0 and p.top_p == 1.0 and p.n == 2 and p.max_tokens == 5
               for p in params)


def test_throughput_lora_path_gives_every_request_the_adapter(fake_engine, capsys):
    """vLLM's --lora-path: every request carries the adapter, under ids drawn from 1..max_loras (seeded)."""
    argv = ["--input-len", "6", "--output-len", "2", "--num-prompts", "40", "--enable-lora", "--max-loras", "3",
            "--lora-path", "/adapters/sql", "--num-warmups", "2"]
    throughput.main(parse(throughput, *argv))
    llm = fake_engine.instances[0]
    assert llm.kwargs["enable_lora"] is True and llm.kwargs["max_loras"] == 3
    loras = llm.lora_requests
    assert len(loras) == 40 and {r.lora_path for r in loras} == {"/adapters/sql"}
    assert {r.lora_int_id for r in loras} == {1, 2, 3} and all(r.lora_name == f"lora-{r.lora_int_id}" for r in loras)
    throughput.main(parse(throughput, *argv))                      # the same seed: the same draw
    assert [r.lora_int_id for r in fake_engine.instances[1].lora_requests] == [r.lora_int_id for r in loras]
    with pytest.raises(ValueError, match="--lora-path needs --enable-lora"):
        throughput.validate_args(parse(throughput, "--input-len", "4", "--lora-path", "/a"))
    with pytest.raises(ValueError, match="--lora-path is for the pagedllm"):
        throughput.validate_args(parse(throughput, "--backend", "hf", "--hf-max-batch-size", "2", "--input-len",
                                       "4", "--lora-path", "/a", "--enable-lora"))


def test_throughput_profile_wraps_the_timed_run(fake_engine, capsys):
    """vLLM's --profile: the engine's profiler (LLM.start_profile / stop_profile, --profiler-config) around the timed
    generate only, not the warm-up."""
    throughput.main(parse(throughput, "--input-len", "6", "--output-len", "2", "--num-prompts", "3",
                          "--num-warmups", "1", "--profile"))
    calls = fake_engine.instances[0].calls
    assert [c if isinstance(c, str) else len(c[0]) for c in calls] == [1, "start_profile", 3, "stop_profile"]
    throughput.main(parse(throughput, "--input-len", "6", "--output-len", "2", "--num-prompts", "3"))
    assert "start_profile" not in fake_engine.instances[1].calls
    with pytest.raises(ValueError, match="--profile is not implemented for the hf backend"):
        throughput.validate_args(parse(throughput, "--backend", "hf", "--hf-max-batch-size", "2", "--input-len",
                                       "4", "--profile"))


def test_throughput_argument_checks():
    with pytest.raises(ValueError, match="input_len must be provided"):
        throughput.validate_args(parse(throughput, "--num-prompts", "2"))
    with pytest.raises(ValueError, match="HF max batch size is required"):
        throughput.validate_args(parse(throughput, "--backend", "hf", "--input-len", "4"))
    with pytest.raises(ValueError, match="only for HF backend"):
        throughput.validate_args(parse(throughput, "--input-len", "4", "--hf-max-batch-size", "2"))


def test_latency_prints_and_json(fake_engine, tmp_path, capsys):
    out = tmp_path / "l.json"
    args = parse(latency, "--batch-size", "3", "--input-len", "7", "--output-len", "4", "--num-iters-warmup", "2",
                 "--num-iters", "5", "--output-json", str(out))
    latency.main(args)
    stdout = capsys.readouterr().out
    assert stdout.splitlines()[0] == "Warming up..."
    assert re.search(r"^Avg latency: \S+ seconds$", stdout, re.M)
    assert [int(x) for x in re.findall(r"^(\d+)% percentile latency: \S+ seconds$", stdout, re.M)] == \
        [10, 25, 50, 75, 90, 99]
    saved = json.loads(out.read_text())
    assert len(saved["latencies"]) == 5 and list(saved["percentiles"]) == ["10", "25", "50", "75", "90", "99"]
    llm = fake_engine.instances[0]
    assert llm.kwargs["enable_prefix_caching"] is False      # latency turns prefix caching off by default
    assert len(llm.calls) == 7                               # 2 warm-up + 5 timed
    prompts, params = llm.calls[0]
    assert len(prompts) == 3 and all(len(p["prompt_token_ids"]) == 7 for p in prompts)
    assert params[0].ignore_eos and params[0].max_tokens == 4


def test_latency_profile_uses_the_engine_profiler(fake_engine, tmp_path, monkeypatch, capsys):
    """vLLM's `bench latency --profile`: with VLLM_TORCH_PROFILER_DIR (or --profiler-config) the engine's profiler
    (LLM.start_profile / stop_profile) records one batch after the warm-up, its traces in that folder."""
    monkeypatch.setenv("VLLM_TORCH_PROFILER_DIR", str(tmp_path))
    latency.main(parse(latency, "--batch-size", "2", "--input-len", "3", "--output-len", "2", "--num-iters-warmup",
                       "1", "--profile"))
    calls = fake_engine.instances[0].calls
    assert [c if isinstance(c, str) else len(c[0]) for c in calls] == [2, "start_profile", 2, "stop_profile"]
    assert f"Profiling (results will be saved to '{tmp_path}')..." in capsys.readouterr().out


def test_prefix_caching_runs_both_modes(fake_engine, tmp_path, capsys):
    out = tmp_path / "p.json"
    args = parse(prefix_caching, "--model", "x", "--skip-tokenizer-init", "--num-prompts", "3", "--repeat-count",
                 "2", "--prefix-len", "10", "--input-length-range", "4:6", "--output-len", "3",
                 "--output-json", str(out))
    prefix_caching.main(args)
    stdout = capsys.readouterr().out
    assert "prefix caching OFF" in stdout and "prefix caching ON" in stdout
    assert re.search(r"^Speedup with prefix caching: [\d.]+x$", stdout, re.M)
    assert [llm.kwargs["enable_prefix_caching"] for llm in fake_engine.instances] == [False, True]
    prompts = fake_engine.instances[0].calls[1][0]          # calls[0] is the warm-up
    assert len(prompts) == 6 and len({tuple(p["prompt_token_ids"][:10]) for p in prompts}) == 1
    assert all(14 <= len(p["prompt_token_ids"]) <= 16 for p in prompts)
    saved = json.loads(out.read_text())
    assert saved["prefix_caching_on"]["cached_prompt_tokens"] > 0 and "speedup" in saved
    # an explicit flag runs only that mode
    fake_engine.instances = []
    prefix_caching.main(parse(prefix_caching, "--model", "x", "--skip-tokenizer-init", "--no-enable-prefix-caching"))
    assert [llm.kwargs["enable_prefix_caching"] for llm in fake_engine.instances] == [False]


def test_long_document_qa_repeat_modes(fake_engine, capsys):
    assert long_document_qa.repeat_prompts(["a", "b"], 2, "tile", 0) == ["a", "b", "a", "b"]
    assert long_document_qa.repeat_prompts(["a", "b"], 2, "interleave", 0) == ["a", "a", "b", "b"]
    assert sorted(long_document_qa.repeat_prompts(["a", "b"], 2, "random", 0)) == ["a", "a", "b", "b"]
    long_document_qa.main(parse(long_document_qa, "--model", "x", "--skip-tokenizer-init", "--num-documents", "3",
                                "--document-length", "50", "--repeat-count", "2", "--output-len", "1"))
    stdout = capsys.readouterr().out
    assert "Time to execute all requests (prefix caching on):" in stdout
    warmup, prompts = [c[0] for c in fake_engine.instances[0].calls]
    docs = {tuple(p["prompt_token_ids"]) for p in prompts}
    assert len(prompts) == 6 and len(docs) == 3 and all(len(d) == 50 for d in docs)
    assert len({d[0] for d in docs} | {warmup[0]["prompt_token_ids"][0]}) == 4   # no shared first token


def test_hf_backend_on_tiny_llama(tmp_path, word_tokenizer_dir, capsys):
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=5002, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         pad_token_id=1, eos_token_id=0, bos_token_id=0)
    model_dir = tmp_path / "tiny"
    LlamaForCausalLM(config).save_pretrained(str(model_dir))
    AutoTokenizer.from_pretrained(word_tokenizer_dir).save_pretrained(str(model_dir))
    out = tmp_path / "hf.json"
    args = parse(throughput, "--backend", "hf", "--model", str(model_dir), "--hf-max-batch-size", "2",
                 "--input-len", "8", "--output-len", "4", "--random-range-ratio", "0.5", "--num-prompts", "5",
                 "--output-json", str(out))
    throughput.main(args)
    stdout = capsys.readouterr().out
    assert re.search(r"^Throughput: [\d.]+ requests/s, [\d.]+ total tokens/s, [\d.]+ output tokens/s$", stdout, re.M)
    saved = json.loads(out.read_text())
    assert saved["num_requests"] == 5 and saved["total_num_tokens"] > 5 * (4 + 2)
    long_reqs = [SimpleNamespace(prompt_len=1500, expected_output_len=600)] * 3
    assert [len(b) for b in throughput._hf_batches(long_reqs, 4)] == [1, 1, 1]   # 1500 + 600 > 2048 tokens
    short_reqs = [SimpleNamespace(prompt_len=100, expected_output_len=50)] * 5
    assert [len(b) for b in throughput._hf_batches(short_reqs, 2)] == [2, 2, 1]


def test_startup_prints_vllm_lines_and_json(monkeypatch, tmp_path, capsys):
    """vLLM's `bench startup`: cold starts each on fresh, empty cache folders (removed afterwards), a warm-up, then
    warm starts on the usual caches; vLLM's printed sections and JSON keys (compilation times 0: no torch.compile)."""
    import os

    from pagedllm.bench import startup
    starts = []

    def fake_start(kwargs, env):
        starts.append(dict(env))
        for folder in env.values():
            assert not os.path.exists(folder) or not os.listdir(folder)
        assert kwargs["max_model_len"] == 256
        return float(len(starts))
    monkeypatch.setattr(startup, "measure_startup", fake_start)
    out = tmp_path / "startup.json"
    result = startup.main(parse(startup, "--num-iters-cold", "2", "--num-iters-warmup", "1", "--num-iters-warm",
                                "2", "--output-json", str(out), "--max-model-len", "256"))
    cold_envs = starts[:2]
    assert all(set(env) == {"PAGEDLLM_CACHE_DIR", "TRITON_CACHE_DIR"} for env in cold_envs)
    assert cold_envs[0] != cold_envs[1] and starts[2:] == [{}, {}, {}]
    assert not any(os.path.exists(folder) for env in cold_envs for folder in env.values())
    stdout = capsys.readouterr().out
    assert "STARTUP TIME BENCHMARK RESULTS" in stdout and "\nCOLD STARTUP:\nAvg total startup time: 1.50 seconds" \
        in stdout and "\nWARM STARTUP:\nAvg total startup time: 4.50 seconds" in stdout
    saved = json.loads(out.read_text())
    assert saved["cold_startup_times"] == [1.0, 2.0] and saved["warm_startup_times"] == [4.0, 5.0]
    assert saved["avg_cold_compilation_time"] == 0.0 and saved["cold_startup_percentiles"]["50"] == 1.5
    assert result["avg_warm_startup_time"] == 4.5
    with pytest.raises(ValueError, match="--num-iters-cold must be >= 1, got 0"):
        startup.main(parse(startup, "--num-iters-cold", "0"))
