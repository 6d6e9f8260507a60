"""Scheduler defaults follow vLLM's usage contexts: on a big GPU 16384 tokens per step for the offline LLM class and
8192 behind the server (smaller prefill chunks, lower inter-token latency), vLLM's generic 2048 tokens and 128
sequences for any other context (from_engine_args(usage_context=...)); 2048 on CPU; explicit values win."""
import dataclasses
import pickle

import pytest
import torch
import transformers

from pagedllm import config as cfg_mod
from pagedllm.config import EngineArgs, EngineConfig, ResolvedModel
from pagedllm.usage.usage_lib import UsageContext


def build(device: str, monkeypatch, usage_context: UsageContext, **kwargs) -> EngineConfig:
    monkeypatch.setattr(cfg_mod, "_pick_device", lambda name: torch.device(device))
    monkeypatch.setattr(cfg_mod, "_pick_dtype", lambda name, hf, dev: torch.bfloat16)
    hf = transformers.LlamaConfig(max_position_embeddings=4096)
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
