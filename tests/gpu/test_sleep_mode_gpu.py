"""Sleep mode on a GPU (not run on the CPU CI): sleep(level=1 / 2) gives the weights', KV cache's and CUDA graphs'
device memory back (this process's reserved CUDA memory, what nvidia-smi shows for it), and after wake_up the
re-captured decode and piecewise CUDA graphs give the same greedy tokens as before the sleep."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))

from pagedllm import LLM, SamplingParams  # noqa: E402
from tiny_models import save_tiny_llama  # noqa: E402

PROMPTS = [{"prompt_token_ids": [(7 * i + 3 * j) % 120 + 3 for j in range(20 + 9 * i)]} for i in range(6)]


@pytest.mark.parametrize("level", [1, 2])
def test_sleep_frees_device_memory_and_graphs_replay_after_wake_up(tmp_path, level):
    save_tiny_llama(tmp_path, 128, seed=1, num_hidden_layers=4)
    # A cached 600 MB segment that a live 4 MB tensor keeps: without a pool of its own the KV cache lands in its
    # free rest, and freeing it gives nothing back to the driver (what the GPU suite met by chance in session 29).
    keeper = torch.empty(600 << 20, dtype=torch.uint8, device="cuda")
    del keeper
    keeper = torch.empty(4 << 20, dtype=torch.uint8, device="cuda")
    params = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)
    llm = LLM(str(tmp_path), skip_tokenizer_init=True, dtype="float32", max_model_len=256,
              kv_cache_memory_gb=1.0, enable_sleep_mode=True)
    runner = llm.llm_engine.runner
    assert runner.graph_runner is not None                  # CUDA graphs on
    expected = [o.outputs[0].token_ids for o in llm.generate(PROMPTS, params)]
    kv_bytes = sum(t.numel() * t.element_size() for t in runner.kv_caches)
    torch.cuda.synchronize()
    # This process's reserve, not the device's free memory: pytest -n 8 runs other engines on the same GPU, and
    # their allocations between the two readings made the device-wide difference fail (H100, session 27).
    reserved_before = torch.cuda.memory_reserved()
    allocated_before = torch.cuda.memory_allocated()
    llm.sleep(level=level)
    assert reserved_before - torch.cuda.memory_reserved() >= kv_bytes     # at least the KV cache (weights: tiny)
    assert torch.cuda.memory_allocated() <= allocated_before - kv_bytes
    llm.wake_up()
    assert runner.graph_runner is not None and runner.graph_runner.graphs     # captured again
    got = [o.outputs[0].token_ids for o in llm.generate(PROMPTS, params)]
    assert got == expected
    del keeper         # held to here
