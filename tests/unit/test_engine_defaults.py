"""Scheduler defaults follow vLLM's usage contexts: on a big GPU 16384 tokens per step for the offline LLM class and,
behind the server, 8192 down to 2048 as the model grows (smaller prefill chunks, lower inter-token latency:
config.served_tokens_per_step), vLLM's generic 2048 tokens and 128 sequences for any other context
(from_engine_args(usage_context=...)); vLLM's CPU table on the CPU; explicit values win."""
import dataclasses
import pickle

import pytest
import torch
import transformers

from pagedllm import config as cfg_mod
from pagedllm.config import EngineArgs, EngineConfig, ResolvedModel
from pagedllm.usage.usage_lib import UsageContext


# Qwen2.5-1.5B's and -7B's shapes, and one between (Qwen2.5-3B's).
SMALL = dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
             num_key_value_heads=2)
MIDDLE = dict(hidden_size=2048, intermediate_size=11008, num_hidden_layers=36, num_attention_heads=16,
              num_key_value_heads=2)
LARGE = dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
             num_key_value_heads=4)


def build(device: str, monkeypatch, usage_context: UsageContext, shape: dict | None = None,
          **kwargs) -> EngineConfig:
    monkeypatch.setattr(cfg_mod, "_pick_device", lambda name: torch.device(device))
    monkeypatch.setattr(cfg_mod, "_pick_dtype", lambda name, hf, dev: torch.bfloat16)
    hf = transformers.LlamaConfig(max_position_embeddings=4096, **(shape or SMALL))
    args = EngineArgs(model="m", **kwargs)
    args.usage_context = usage_context          # as the server entrypoint does
    # It travels with the arguments to the engine process (pickled) but is not an LLM keyword.
    args = pickle.loads(pickle.dumps(args))
    assert "usage_context" not in dataclasses.asdict(args)
    return EngineConfig.build(args, ResolvedModel("m", hf, None))


@pytest.mark.parametrize("context, expected", [(UsageContext.LLM_CLASS, (16384, 1024)),
                                               (UsageContext.OPENAI_API_SERVER, (8192, 1024)),
                                               (UsageContext.ENGINE_CONTEXT, (2048, 128)),
                                               (UsageContext.OPENAI_BATCH_RUNNER, (2048, 128))])
def test_gpu_tokens_per_step_by_usage_context(monkeypatch, context, expected):
    cfg = build("cuda", monkeypatch, usage_context=context)
    assert (cfg.max_num_batched_tokens, cfg.max_num_seqs) == expected


@pytest.mark.parametrize("shape, tokens", [(SMALL, 8192), (MIDDLE, 4096), (LARGE, 2048)])
def test_served_tokens_per_step_follow_the_weights_each_gpu_multiplies(monkeypatch, shape, tokens):
    # A 7B's 8192-token prefill step stalls 100 streams for ~150 ms (H100: 2048 gave 3-7% more tok/s and a 25% lower
    # ITL P99); a 1.5B's is short, and smaller steps cost it throughput. The offline LLM keeps 16384.
    served = build("cuda", monkeypatch, usage_context=UsageContext.OPENAI_API_SERVER, shape=shape)
    assert served.max_num_batched_tokens == tokens
    assert build("cuda", monkeypatch, usage_context=UsageContext.LLM_CLASS,
                 shape=shape).max_num_batched_tokens == 16384
    # Tensor parallel: each GPU multiplies half of each token's weights, so a 7B at TP=2 takes twice the tokens.
    assert cfg_mod.served_tokens_per_step(transformers.LlamaConfig(**LARGE), tensor_parallel_size=2) == 4096


@pytest.mark.parametrize("context, parallel, expected", [
    (UsageContext.LLM_CLASS, {}, (4096, 256)), (UsageContext.OPENAI_API_SERVER, {}, (2048, 128)),
    (UsageContext.LLM_CLASS, {"tensor_parallel_size": 2}, (8192, 512)),
    (UsageContext.OPENAI_API_SERVER, {"tensor_parallel_size": 2, "pipeline_parallel_size": 2}, (8192, 512)),
    (UsageContext.ENGINE_CONTEXT, {}, (2048, 128))])
def test_cpu_defaults_are_vllms_cpu_table(monkeypatch, context, parallel, expected):
    """vLLM's CPU backend defaults (EngineArgs' CPU table, times the tensor x pipeline parallel ranks): the LLM class
    4096 tokens per step and 256 sequences, the server 2048 and 128; other contexts SchedulerConfig's 2048 and 128.
    They were 2048 and 256 everywhere (the V0 numbers)."""
    cfg = build("cpu", monkeypatch, usage_context=context, **parallel)
    assert (cfg.max_num_batched_tokens, cfg.max_num_seqs) == expected


def test_cpu_and_explicit(monkeypatch):
    assert build("cpu", monkeypatch, usage_context=UsageContext.OPENAI_API_SERVER).max_num_batched_tokens == 2048
    assert build("cuda", monkeypatch, usage_context=UsageContext.OPENAI_API_SERVER,
                 max_num_batched_tokens=4096).max_num_batched_tokens == 4096


def test_llm_does_not_take_usage_context():
    with pytest.raises(TypeError, match="usage_context"):
        EngineArgs.from_kwargs("m", usage_context="openai_api_server")


def test_for_usage_context_copies_and_checks():
    args = EngineArgs(model="m")
    served = args.for_usage_context("OPENAI_API_SERVER")
    assert served.usage_context is UsageContext.OPENAI_API_SERVER and served is not args
    assert args.usage_context is UsageContext.LLM_CLASS                 # the caller's instance is left alone
    assert args.for_usage_context(None) is args
    assert args.for_usage_context(UsageContext.ENGINE_CONTEXT).usage_context is UsageContext.ENGINE_CONTEXT
    with pytest.raises(ValueError, match="usage_context='telemetry' is not a UsageContext"):
        args.for_usage_context("telemetry")
