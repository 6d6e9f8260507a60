"""``LLM.collective_rpc`` / ``apply_model`` (vLLM's) and the server's dev-mode POST /collective_rpc: a worker method by
name or a function of the worker on every rank, each rank's result in rank order; in this process (the "uni"
executor) and in two tensor-parallel worker processes (the "mp" executor, gloo), where a lambda travels with
cloudpickle. On tiny random Llamas."""
from __future__ import annotations

import pytest
import torch

from app_client import run_on, serve_in_process
from pagedllm import LLM, SamplingParams
from tiny_models import save_tiny_llama

GREEDY = SamplingParams(temperature=0.0, max_tokens=5, ignore_eos=True)
PROMPT = {"prompt_token_ids": [11, 12, 13, 14, 15, 16, 17]}


def params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def echo_rank(self):
    """vLLM's own collective_rpc test's function: the worker's rank (it was AttributeError here)."""
    return self.rank


def test_collective_rpc_and_apply_model_in_process(tiny_llama_dir):
    llm = LLM(tiny_llama_dir, dtype="float32", max_model_len=128, kv_cache_memory_gb=0.01)
    before = llm.generate(PROMPT, GREEDY, use_tqdm=False)[0].outputs[0].token_ids
    assert llm.apply_model(lambda model: type(model).__name__) == ["LlamaForCausalLM"]
    # A function gets the worker first, as vLLM's: worker.model_runner and worker.get_model() work.
    assert llm.collective_rpc(lambda worker, k: worker.model_runner.block_size * k, args=(2,)) == [32]
    assert llm.collective_rpc(lambda worker, k=0: k, kwargs={"k": 7}) == [7]
    assert llm.collective_rpc(echo_rank) == [0]
    assert llm.collective_rpc(lambda worker: worker.local_rank) == [0]
    assert llm.collective_rpc("reload_weights") == [None]       # vLLM's worker method: the checkpoint again
    assert llm.generate(PROMPT, GREEDY, use_tqdm=False)[0].outputs[0].token_ids == before
    with pytest.raises(ValueError, match="collective_rpc: the worker has no method 'no_such_method'"):
        llm.collective_rpc("no_such_method")
    with pytest.raises(ValueError, match=r"collective_rpc\(timeout=...\) is not supported yet"):
        llm.collective_rpc("get_model", timeout=5)


def test_collective_rpc_reaches_every_tensor_parallel_rank(tmp_path):
    pytest.importorskip("cloudpickle")      # how a lambda reaches the worker processes (as vLLM sends it)
    save_tiny_llama(tmp_path, 1024)
    whole = LLM(model=str(tmp_path), skip_tokenizer_init=True, dtype="float32", max_model_len=128,
                kv_cache_memory_gb=0.01).apply_model(params)[0]
    llm = LLM(model=str(tmp_path), skip_tokenizer_init=True, dtype="float32", tensor_parallel_size=2,
              max_model_len=128, kv_cache_memory_gb=0.01)
    shards = llm.apply_model(lambda model: sum(p.numel() for p in model.parameters()))   # a lambda: cloudpickle
    assert len(shards) == 2 and shards[0] == shards[1] and whole / 2 < shards[0] < whole
    from pagedllm.distributed import get_tp_rank
    assert llm.collective_rpc(lambda worker: get_tp_rank()) == [0, 1]
    assert llm.collective_rpc(echo_rank) == [0, 1]                  # vLLM's Worker.rank and .local_rank
    assert llm.collective_rpc(lambda worker: worker.local_rank) == [0, 1]
    # Each rank runs the thread count the config gave it (its share of the cores unless a count is given).
    assert llm.collective_rpc(lambda worker: torch.get_num_threads()) == [llm.llm_engine.config.cpu_threads] * 2
    # A call that fails raises the rank's error and the engine lives on (as with one rank, and vLLM's workers);
    # before, the failed call ended every worker and each later call raised WorkerDied.
    before = llm.generate(PROMPT, GREEDY, use_tqdm=False)[0].outputs[0].token_ids
    with pytest.raises(ValueError, match="collective_rpc: the worker has no method 'no_such_method'"):
        llm.collective_rpc("no_such_method")

    def fails_on_rank_1(worker):
        if get_tp_rank() == 1:
            raise KeyError("rank one")
        return "fine"
    with pytest.raises(KeyError, match="rank one") as e:
        llm.collective_rpc(fails_on_rank_1)
    assert "raised in collective_rpc on worker rank 1" in e.value.__notes__[0]
    assert llm.collective_rpc(lambda worker: get_tp_rank()) == [0, 1]
    assert llm.generate(PROMPT, GREEDY, use_tqdm=False)[0].outputs[0].token_ids == before


def test_server_collective_rpc(tiny_llama_dir, monkeypatch):
    monkeypatch.setenv("VLLM_SERVER_DEV_MODE", "1")

    async def script(client):
        response = await client.post("/collective_rpc", json={"method": "reload_weights"})
        assert response.status_code == 200 and response.json() == {"results": [None]}
        response = await client.post("/collective_rpc", json={"method": "get_model"})
        assert response.json()["results"][0].startswith("LlamaForCausalLM(")       # not JSON: its string, as vLLM
        response = await client.post("/collective_rpc", json={"args": []})
        assert response.status_code == 400 and response.json()["error"]["message"] == "Missing 'method' in request body"
        response = await client.post("/collective_rpc", json={"method": "nope"})
        assert response.status_code == 400
        assert response.json()["error"]["message"] == "collective_rpc: the worker has no method 'nope'."
    with serve_in_process(tiny_llama_dir) as (app, engine):
        run_on(app, script)


def test_dummy_weights_then_update_config_and_reload_weights(tiny_llama_dir):
    # vLLM's skip_loading_weights_in_engine_init example: start on dummy weights, switch the worker's load_config
    # to the checkpoint and reload in place; the outputs are then the checkpoint's.
    real = LLM(tiny_llama_dir, dtype="float32", max_model_len=128, kv_cache_memory_gb=0.01)
    expected = real.generate(PROMPT, GREEDY, use_tqdm=False)[0].outputs[0].token_ids
    llm = LLM(tiny_llama_dir, dtype="float32", max_model_len=128, kv_cache_memory_gb=0.01, load_format="dummy")
    assert llm.generate(PROMPT, GREEDY, use_tqdm=False)[0].outputs[0].token_ids != expected
    assert llm.collective_rpc("update_config", args=({"load_config": {"load_format": "auto"}},)) == [None]
    assert llm.collective_rpc("reload_weights") == [None]
    assert llm.generate(PROMPT, GREEDY, use_tqdm=False)[0].outputs[0].token_ids == expected
    with pytest.raises(ValueError, match="update_config: 'model_config' is not supported yet.*load_config"):
        llm.collective_rpc("update_config", args=({"model_config": {"max_model_len": 64}},))
    with pytest.raises(ValueError, match="update_config: load_config has no field 'load_fmt'"):
        llm.collective_rpc("update_config", args=({"load_config": {"load_fmt": "auto"}},))
    with pytest.raises(ValueError, match="load_format must be one of"):
        llm.collective_rpc("update_config", args=({"load_config": {"load_format": "nope"}},))
