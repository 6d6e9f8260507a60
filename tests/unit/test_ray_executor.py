"""distributed_executor_backend="ray" on the CPU, on a simulated two-node Ray cluster (``ray.cluster_utils.Cluster``:
two nodes of two CPUs on this machine, one Ray instance for the whole module): TP=2 gives the same greedy tokens as
TP=1 (and as the multi-process executor, test_tensor_parallel.py), and so does PP=2, with the ranks on one node
(STRICT_PACK) or one per node (STRICT_SPREAD: the rendezvous at rank 0's node address, the steps through the object
store); a cluster too small for the ranks is a ValueError naming what it lacks, at once or after the placement
timeout; a killed actor ends the engine with the rank named within seconds; without Ray the option is a ValueError
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
from pagedllm.envs import forwarded_env
from pagedllm.worker.ray_executor import actor_cuda_device, local_ranks
from tests.unit.test_tensor_parallel import VOCAB, _tokens
from tests.unit.tiny_models import save_tiny_llama

CPUS_PER_NODE = 2


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray")
    from ray.cluster_utils import Cluster
    if ray.is_initialized():     # a Ray of some earlier test: this module needs its own two-node cluster
        ray.shutdown()
    node_args = {"num_cpus": CPUS_PER_NODE, "object_store_memory": 100 << 20}
    cluster = Cluster(initialize_head=True, head_node_args={**node_args, "include_dashboard": False})
    cluster.add_node(**node_args)
    ray.init(address=cluster.address, log_to_driver=False)
    yield ray
    ray.shutdown()
    cluster.shutdown()


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    """A tiny random Llama's folder and its greedy tokens from one process (the reference)."""
    path = tmp_path_factory.mktemp("tiny_llama")
    save_tiny_llama(path, VOCAB)
    single = LLM(model=str(path), skip_tokenizer_init=True, dtype="float32", max_num_batched_tokens=16,
                 max_model_len=128, kv_cache_memory_gb=0.01)
    expected = _tokens(single)
    del single
    return path, expected


def _ray_llm(path, tp: int, pp: int = 1) -> LLM:
    return LLM(model=str(path), skip_tokenizer_init=True, dtype="float32", tensor_parallel_size=tp,
               pipeline_parallel_size=pp, distributed_executor_backend="ray", max_num_batched_tokens=16,
               max_model_len=128, kv_cache_memory_gb=0.01)


def _placement_groups_alive() -> int:
    from ray.util import placement_group_table
    return sum(1 for pg in placement_group_table().values() if pg["state"] != "REMOVED")


def test_ray_tp2_and_pp2_greedy_tokens_match_tp1(tiny_llama, ray_cluster, monkeypatch):
    path, expected = tiny_llama
    # Settings the ranks must share with the driver reach the actors (Ray starts them with the raylet's
    # environment, not this process's).
    monkeypatch.setenv("NCCL_DEBUG", "WARN")
    monkeypatch.setenv("PAGEDLLM_TEST_FORWARDED", "from-the-driver")
    llm = _ray_llm(path, 2)
    executor = llm.llm_engine.core.executor
    for actor in executor._actors:
        seen = ray_cluster.get(actor.__ray_call__.remote(
            lambda _self: (os.environ.get("NCCL_DEBUG"), os.environ.get("PAGEDLLM_TEST_FORWARDED"))))
        assert seen == ("WARN", "from-the-driver")
    assert llm.llm_engine.core.config.executor_backend == "ray"
    assert len(executor.actor_nodes) == 2
    assert len(set(executor.actor_node_ids)) == 1, "STRICT_PACK (the default) put the ranks on different nodes"
    assert executor.local_ranks == [0, 1]
    assert _tokens(llm) == expected
    executor.shutdown()
    assert _placement_groups_alive() == 0, "the placement group outlived shutdown()"
    # Pipeline parallel: the last stage's sampled tokens reach the first stage through the same object store.
    llm = _ray_llm(path, 1, pp=2)
    assert _tokens(llm) == expected
    llm.llm_engine.core.executor.shutdown()


@pytest.mark.parametrize("tp, pp", [(1, 2), (2, 1)])
def test_ray_one_rank_per_node_matches_tp1(tiny_llama, ray_cluster, monkeypatch, tp, pp):
    """Multi-node: STRICT_SPREAD puts each rank on its own node (asserted by the actors' node ids); the group meets
    at rank 0's node address, the hidden states (PP) or the all-reduces (TP) cross nodes through torch.distributed
    and the steps through Ray's object store: the same tokens as one process."""
    path, expected = tiny_llama
    monkeypatch.setenv("PAGEDLLM_RAY_PLACEMENT_STRATEGY", "STRICT_SPREAD")
    llm = _ray_llm(path, tp, pp=pp)
    executor = llm.llm_engine.core.executor
    try:
        assert len(set(executor.actor_node_ids)) == 2, executor.actor_node_ids
        assert executor.local_ranks == [0, 0]        # each rank alone on its node
        # vLLM's Worker.rank / .local_rank as functions given to collective_rpc read them
        assert llm.collective_rpc(lambda worker: (worker.rank, worker.local_rank)) == [(0, 0), (1, 0)]
        assert _tokens(llm) == expected
    finally:
        executor.shutdown()
    assert _placement_groups_alive() == 0


def test_ray_cluster_too_small_is_a_clear_error(tiny_llama, ray_cluster, monkeypatch):
    path, _ = tiny_llama
    # 8 ranks on a cluster of 4 CPUs in all: at once, naming both numbers.
    t0 = time.time()
    with pytest.raises(ValueError, match=r"needs 8 CPUs \(one per rank: tensor_parallel_size=4 x "
                                         r"pipeline_parallel_size=2\); the Ray cluster has 4"):
        _ray_llm(path, 4, pp=2)
    # 4 ranks on one node (STRICT_PACK) where each node has 2: no placement ever fits; the error comes after the
    # timeout, naming the strategy, the CPUs per node and the way out, and leaves no placement group behind.
    monkeypatch.setenv("PAGEDLLM_RAY_PLACEMENT_TIMEOUT_S", "3")
    with pytest.raises(ValueError, match=r"did not grant 4 x \{'CPU': 1\} \(strategy STRICT_PACK\) within 3 s.*"
                                         r"CPUs per node: .*: 2, .*: 2\..*PAGEDLLM_RAY_PLACEMENT_STRATEGY=PACK"):
        _ray_llm(path, 4)
    assert time.time() - t0 < 60
    assert _placement_groups_alive() == 0


def test_forwarded_env_keeps_the_ranks_settings_only():
    env = {"PAGEDLLM_CPU_THREADS": "1", "NCCL_SOCKET_IFNAME": "eth0", "TORCH_NCCL_BLOCKING_WAIT": "1",
           "GLOO_SOCKET_IFNAME": "eth0", "HF_HOME": "/h", "CUDA_VISIBLE_DEVICES": "0,1", "PATH": "/bin",
           "OMP_NUM_THREADS": "4", "VLLM_PP_LAYER_PARTITION": "3,5", "VLLM_HOST_IP": "10.0.0.5"}
    assert forwarded_env(env) == {k: env[k] for k in ("PAGEDLLM_CPU_THREADS", "NCCL_SOCKET_IFNAME",
                                                      "TORCH_NCCL_BLOCKING_WAIT", "GLOO_SOCKET_IFNAME", "HF_HOME",
                                                      "VLLM_PP_LAYER_PARTITION")}


def test_actor_cuda_device_and_local_ranks():
    # Ray shows an actor only its GPU: index 0 whatever the physical id.
    assert actor_cuda_device([3], "3", local_rank=1) == 0
    # Ray left CUDA_VISIBLE_DEVICES alone: the id's place among the node's visible devices, or the id itself.
    assert actor_cuda_device([3], "0,2,3", local_rank=1) == 2
    assert actor_cuda_device(["5"], None, local_rank=0) == 5
    # No GPU id (a CPU actor) or an id it cannot place: the local rank.
    assert actor_cuda_device([], None, local_rank=1) == 1
    assert actor_cuda_device(["GPU-1234"], None, local_rank=2) == 2
    assert local_ranks(["a", "b", "a", "a", "b"]) == [0, 0, 1, 2, 1]


def test_ray_killed_actor_is_named_within_seconds(tiny_llama, ray_cluster):
    llm = _ray_llm(tiny_llama[0], 2)
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


def test_vllm_host_ip_is_the_rendezvous_address(ray_cluster, monkeypatch):
    """vLLM's VLLM_HOST_IP (a node's own address, set where `ray start` ran) is the address a rank reports for the
    rendezvous, instead of Ray's; it was ignored. The driver's value never reaches the actors (each node its own)."""
    from pagedllm.worker.ray_executor import RankActor
    monkeypatch.delenv("VLLM_HOST_IP", raising=False)
    assert RankActor().placement()["ip"] == ray_cluster.util.get_node_ip_address()
    monkeypatch.setenv("VLLM_HOST_IP", "10.9.8.7")
    assert RankActor().placement()["ip"] == "10.9.8.7"
    assert "VLLM_HOST_IP" not in forwarded_env()


def test_ray_interrupted_start_ends_the_actors_at_once(tiny_llama, ray_cluster, monkeypatch):
    """Ctrl-C while the actors load: the actors and the placement group go at once, while the exception is held
    (they lived as long as its traceback, which keeps the executor)."""
    from pagedllm.worker.ray_executor import RayExecutor
    path, _ = tiny_llama

    def interrupted(self):
        raise KeyboardInterrupt
    monkeypatch.setattr(RayExecutor, "_collect_start", interrupted)
    with pytest.raises(KeyboardInterrupt) as stopped:
        _ray_llm(path, 2)
    assert _placement_groups_alive() == 0 and stopped.tb is not None
