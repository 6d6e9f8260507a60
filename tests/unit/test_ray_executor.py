"""distributed_executor_backend="ray" on the CPU: a local Ray instance with two CPUs, one actor per rank. TP=2
gives the same greedy tokens as TP=1 (and as the multi-process executor, test_tensor_parallel.py), and so does
PP=2; a killed actor ends the engine with the rank named within seconds; without Ray the option is a ValueError
naming the pip command."""
from __future__ import annotations

import os
import signal
import sys
import time

import pytest

from pagedllm import LLM
from pagedllm.config import EngineArgs
from pagedllm.engine.core import create_engine_config
from tests.unit.test_tensor_parallel import VOCAB, _tokens
from tests.unit.tiny_models import save_tiny_llama


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray")
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    if started:
        ray.shutdown()


def _ray_llm(path, tp: int, pp: int = 1) -> LLM:
    return LLM(model=str(path), skip_tokenizer_init=True, dtype="float32", tensor_parallel_size=tp,
               pipeline_parallel_size=pp, distributed_executor_backend="ray", max_num_batched_tokens=16,
               max_model_len=128, kv_cache_memory_gb=0.01)


def _placement_groups_alive() -> int:
    from ray.util import placement_group_table
    return sum(1 for pg in placement_group_table().values() if pg["state"] != "REMOVED")


def test_ray_tp2_and_pp2_greedy_tokens_match_tp1(tmp_path, ray_cluster):
    save_tiny_llama(tmp_path, VOCAB)
    single = LLM(model=str(tmp_path), skip_tokenizer_init=True, dtype="float32", max_num_batched_tokens=16,
                 max_model_len=128, kv_cache_memory_gb=0.01)
    expected = _tokens(single)
    del single
    llm = _ray_llm(tmp_path, 2)
    executor = llm.llm_engine.core.executor
    assert llm.llm_engine.core.config.executor_backend == "ray"
    assert len(executor.actor_nodes) == 2
    assert _tokens(llm) == expected
    executor.shutdown()
    assert _placement_groups_alive() == 0, "the placement group outlived shutdown()"
    # Pipeline parallel: the last stage's sampled tokens reach the first stage through the same object store.
    llm = _ray_llm(tmp_path, 1, pp=2)
    assert _tokens(llm) == expected
    llm.llm_engine.core.executor.shutdown()


def test_ray_killed_actor_is_named_within_seconds(tmp_path, ray_cluster):
    save_tiny_llama(tmp_path, VOCAB)
    llm = _ray_llm(tmp_path, 2)
    executor = llm.llm_engine.core.executor
    _, pid = executor.actor_nodes[1]
    os.kill(pid, signal.SIGKILL)
    t0 = time.time()
    with pytest.raises(RuntimeError, match=r"rank 1, a Ray actor .*died"):
        llm.generate([{"prompt_token_ids": [11, 12, 13, 14, 15]}], use_tqdm=False)
    assert time.time() - t0 < 10
    assert _placement_groups_alive() == 0, "the placement group outlived the dead actor"


def test_ray_missing_is_a_clear_error(tmp_path, monkeypatch):
    save_tiny_llama(tmp_path, VOCAB)
    monkeypatch.setitem(sys.modules, "ray", None)     # `import ray` fails as if it were not installed
    with pytest.raises(ValueError,
                       match=r"distributed_executor_backend='ray' needs Ray.*pip install 'pagedllm\[ray\]'"):
        create_engine_config(EngineArgs(model=str(tmp_path), skip_tokenizer_init=True, tensor_parallel_size=2,
                                        distributed_executor_backend="ray"))
