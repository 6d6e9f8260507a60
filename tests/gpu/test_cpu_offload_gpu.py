"""cpu_offload_gb on a GPU: a tiny llama with half its decoder layers streamed from pinned CPU memory gives the
greedy tokens of the model held on the device; the plan logs the offloaded bytes and CUDA graphs are off."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))

from pagedllm import LLM, SamplingParams  # noqa: E402
from pagedllm.worker.cpu_offload import LayerOffloader  # noqa: E402
from tiny_models import save_tiny_llama  # noqa: E402

PROMPTS = [{"prompt_token_ids": [(7 * i + 3 * j) % 120 + 3 for j in range(20 + 9 * i)]} for i in range(6)]


def test_offloaded_llama_greedy_equals_resident(tmp_path):
    import transformers
    save_tiny_llama(tmp_path, 128, seed=1, num_hidden_layers=4)
    params = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)
    common = dict(skip_tokenizer_init=True, dtype="float32", max_model_len=256, kv_cache_memory_gb=1.0)
    expected = [o.outputs[0].token_ids for o in LLM(str(tmp_path), **common).generate(PROMPTS, params)]
    layer_bytes = 4 * (64 * 64 * 2 + 64 * 32 * 2 + 64 * 128 * 3 + 64 * 2)
    llm = LLM(str(tmp_path), cpu_offload_gb=2 * layer_bytes / (1 << 30), **common)
    runner = llm.llm_engine.core.runner
    assert isinstance(runner.offloader, LayerOffloader) and runner.offloader.num_layers == 2
    assert runner.graph_runner is None                       # CUDA graphs off while offloading
    assert runner.offloader.host[0][next(iter(runner.offloader.host[0]))].is_pinned()
    assert runner.memory_plan.cpu_offload_bytes == runner.offloader.offloaded_bytes
    got = [o.outputs[0].token_ids for o in llm.generate(PROMPTS, params)]
    assert got == expected


def test_offload_stream_overlaps_and_stays_correct():
    """Many layers, repeated forwards with a busy compute stream: the prefetch waits for the slot's last user."""
    torch.manual_seed(0)
    width = 1024
    layers = torch.nn.Sequential(*[torch.nn.Linear(width, width, device="cuda") for _ in range(8)])
    x = torch.randn(64, width, device="cuda")
    with torch.no_grad():
        expected = layers(x)
        LayerOffloader(list(layers), 6 * width * width * 4, torch.device("cuda"))
        for _ in range(5):
            assert torch.allclose(layers(x), expected)
