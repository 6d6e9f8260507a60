"""The Ray executor (distributed_executor_backend="ray"): one Ray actor per rank, so the ranks may live on several
machines of a Ray cluster (``ray start --head`` on one, ``ray start --address=HEAD:6379`` on the others, pagedllm
installed on every one). Ray is an optional extra: ``pip install pagedllm[ray]``.

- Cluster: as vLLM, a Ray already initialised in this process is used as it is; otherwise ``ray.init()`` without an
  address, which joins the cluster that ``RAY_ADDRESS`` names or the one ``ray start`` left running on this node, and
  only when there is none starts a local Ray instance (the CPU tests run that way).
- Placement: a placement group of one bundle per rank ({"GPU": 1} on CUDA, {"CPU": 1} on the CPU), strategy
  STRICT_PACK (every rank on one node) unless ``PAGEDLLM_RAY_PLACEMENT_STRATEGY`` says PACK (spread over nodes when
  one is not enough), SPREAD or STRICT_SPREAD; rank r's actor sits in bundle r. A cluster that cannot hold the group
  is a ValueError naming what it lacks (at once when the cluster is too small in all, after
  ``PAGEDLLM_RAY_PLACEMENT_TIMEOUT_S`` when no placement fits), not a hang.
- Group: rank 0's actor picks a free port on its node; every rank joins torch.distributed (NCCL on CUDA, gloo on
  the CPU) at tcp://<rank 0's node IP>:<port>, so ranks on other machines reach it. The node IP is Ray's, or the
  VLLM_HOST_IP that node's raylet environment sets (vLLM's variable, for hosts whose Ray address is not the one the
  others reach).
- Devices: Ray gives each rank's actor one GPU and shows it only that one (CUDA_VISIBLE_DEVICES), so the actor runs
  on cuda:0; ``actor_cuda_device`` finds the GPU among the visible ones when Ray leaves CUDA_VISIBLE_DEVICES alone.
  A rank's local rank is its position among the ranks on its node (``local_ranks``).
- Steps: each message (a ``SchedulerOutput``, a grammar bitmask, ...) is put in Ray's object store once
  (``ray.put``) and its reference handed to every actor's call, which Ray resolves on the actor's node: the object
  store is the broadcast (the shared-memory ring of the multi-process executor works on one host only). Ray runs one
  actor's calls in the order this process submits them, so "launch" then "finish" keep their order as on the pipe.
- The engine core's calls, the output rank and pipeline parallel's sampled-token hand-off are the ones of every
  ``DistributedExecutor`` (executor.py); the actor runs the same ``RankWorker`` as a worker process.
- Environment: Ray starts an actor with its raylet's environment (the shell `ray start` ran in), not this
  process's, so the settings a rank must share with the driver (``PAGEDLLM_*``, vLLM's ``VLLM_*``, ``NCCL_*``,
  ``TORCH_*``, ``GLOO_*``, ``TRITON_*``, ``HF_*``, ``TRANSFORMERS_*``: ``envs.forwarded_env``) go with each actor as
  its runtime_env's env_vars, as vLLM copies its own to its Ray workers. CUDA_VISIBLE_DEVICES is Ray's to set and is
  never forwarded.
- A dead actor fails its pending calls with Ray's ActorDiedError, found within the second: the error names the rank
  and the engine ends every actor. Shutdown kills the actors and removes the placement group.
"""
from __future__ import annotations

import logging
import os
import random
import weakref
from typing import Any

from pagedllm import envs
from pagedllm.config import EngineConfig
from pagedllm.gc_heap import freeze_gc_heap
from pagedllm.worker.executor import DistributedExecutor, RankWorker, free_port, start_rank_worker

logger = logging.getLogger(__name__)

PLACEMENT_STRATEGIES = ("STRICT_PACK", "PACK", "SPREAD", "STRICT_SPREAD")


def actor_cuda_device(gpu_ids: list, visible_devices: str | None, local_rank: int) -> int:
    """The index, among the devices an actor sees, of the GPU Ray gave it (``ray.get_gpu_ids()``). Ray sets an
    actor's CUDA_VISIBLE_DEVICES to its own GPUs (the one is then index 0); without that (Ray told not to, by
    RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES) it is the id's place in the node's list, or the id itself when the
    node shows every device. No id (not a GPU actor): the rank's local rank on its node."""
    if not gpu_ids:
        return local_rank
    gpu = str(gpu_ids[0])
    if visible_devices:
        shown = [d.strip() for d in visible_devices.split(",")]
        return shown.index(gpu) if gpu in shown else local_rank
    return int(gpu) if gpu.isdigit() else local_rank


def local_ranks(node_ids: list[str]) -> list[int]:
    """Each rank's position among the ranks on its node (``node_ids[r]``: rank r's node), in rank order."""
    seen: dict[str, int] = {}
    ranks = []
    for node in node_ids:
        ranks.append(seen.get(node, 0))
        seen[node] = ranks[-1] + 1
    return ranks


class RankActor:
    """The body of one rank's Ray actor: a ``RankWorker`` once ``start`` has built it."""

    def __init__(self) -> None:
        self.worker: RankWorker | None = None

    def placement(self) -> dict:
        """Where this actor runs: its node's IP and Ray id, its process id, the GPUs Ray gave it and the devices
        the process sees, and a TCP port free on its node now (rank 0's hosts the group's rendezvous)."""
        import ray
        # The node's own VLLM_HOST_IP (set where `ray start` ran) wins over Ray's address, as in vLLM's get_ip().
        return {"ip": envs.VLLM_HOST_IP or ray.util.get_node_ip_address(),
                "node_id": ray.get_runtime_context().get_node_id(),
                "pid": os.getpid(), "gpu_ids": list(ray.get_gpu_ids()),
                "visible_devices": envs.CUDA_VISIBLE_DEVICES, "port": free_port("")}

    def ping(self) -> None:
        return None

    def start(self, *args: Any) -> tuple[str, Any, str]:
        self.worker, reply = start_rank_worker(*args)
        if self.worker is not None:
            freeze_gc_heap("ray rank")      # the actor's process only serves this rank
        return reply

    def execute(self, msg: tuple) -> tuple[str, Any, str] | None:
        return self.worker.handle(*msg)


class RayExecutor(DistributedExecutor):
    def __init__(self, config: EngineConfig):
        super().__init__(config)
        import ray
        from ray.util.placement_group import placement_group, remove_placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy
        self._ray = ray
        self._pending: list = []      # the calls of the last broadcast, one per rank
        if not ray.is_initialized():
            ray.init()        # RAY_ADDRESS's cluster, else the one `ray start` left on this node, else a local one
        strategy = envs.PAGEDLLM_RAY_PLACEMENT_STRATEGY
        if strategy not in PLACEMENT_STRATEGIES:
            raise ValueError(f"PAGEDLLM_RAY_PLACEMENT_STRATEGY must be one of {PLACEMENT_STRATEGIES}, "
                             f"got {strategy!r}.")
        on_gpu = config.device.type == "cuda"
        resource = "GPU" if on_gpu else "CPU"
        self._check_cluster_size(resource)
        self._placement_group = placement_group([{resource: 1}] * self.world_size, strategy=strategy)
        self._actors: list = []
        # Actors and placement group go when the executor does, even without shutdown() (a deleted LLM).
        self._finalizer = weakref.finalize(self, _stop_actors, ray, self._actors, self._placement_group,
                                           remove_placement_group)
        self._wait_for_placement(strategy, resource)
        actor_class = ray.remote(RankActor)
        env = envs.forwarded_env()
        if env:
            logger.info("Ray executor: the actors get this process's %s", ", ".join(sorted(env)))
        for rank in range(self.world_size):
            self._actors.append(actor_class.options(
                num_cpus=0 if on_gpu else 1, num_gpus=1 if on_gpu else 0, runtime_env={"env_vars": env},
                scheduling_strategy=PlacementGroupSchedulingStrategy(
                    placement_group=self._placement_group, placement_group_bundle_index=rank)).remote())
        self._pending = [actor.placement.remote() for actor in self._actors]
        placements = self._collect_raw()
        self.actor_nodes: list[tuple[str, int]] = [(p["ip"], p["pid"]) for p in placements]   # (node IP, pid)
        self.actor_node_ids: list[str] = [p["node_id"] for p in placements]
        self.actor_gpu_ids: list[str | None] = [str(p["gpu_ids"][0]) if p["gpu_ids"] else None for p in placements]
        self.local_ranks = local_ranks(self.actor_node_ids)
        # The rendezvous is on rank 0's node, at its address as the other nodes see it (never the loopback).
        init_method = f"tcp://{placements[0]['ip']}:{placements[0]['port']}"
        cuda_devices = [actor_cuda_device(p["gpu_ids"], p["visible_devices"], local)
                        for p, local in zip(placements, self.local_ranks)]
        shared_seed = random.SystemRandom().randrange(2**31)    # every rank samples alike (see executor.py)
        config_ref = ray.put(config)
        self._pending = [actor.start.remote(config_ref, rank, self.tp_size, self.pp_size, init_method, shared_seed,
                                            cuda_devices[rank], self.local_ranks[rank])
                         for rank, actor in enumerate(self._actors)]
        try:
            self._collect_start()
        except BaseException:
            # A failed or interrupted start (Ctrl-C while the ranks load) ends the actors and frees the placement
            # group now: the exception's traceback keeps this executor alive (as the multi-process executor's).
            self._finalizer()
            raise
        logger.info("Ray executor: %d actor(s) on %d node(s) at %s, placement %s", self.world_size,
                    len(set(self.actor_node_ids)),
                    ", ".join(f"{ip} (pid {pid})" for ip, pid in self.actor_nodes), strategy)

    def shutdown(self) -> None:
        self._finalizer()

    # ---- cluster ------------------------------------------------------------------------------------------------
    def _check_cluster_size(self, resource: str) -> None:
        total = self._ray.cluster_resources().get(resource, 0)
        if total < self.world_size:
            raise ValueError(f"distributed_executor_backend='ray' needs {self.world_size} {resource}s (one per rank: "
                             f"tensor_parallel_size={self.tp_size} x pipeline_parallel_size={self.pp_size}); the Ray "
                             f"cluster has {total:g}.")

    def _wait_for_placement(self, strategy: str, resource: str) -> None:
        timeout_s = envs.PAGEDLLM_RAY_PLACEMENT_TIMEOUT_S
        ready, _ = self._ray.wait([self._placement_group.ready()], timeout=timeout_s)
        if ready:
            return
        self._finalizer()
        hint = (" STRICT_PACK puts every rank on one node: PAGEDLLM_RAY_PLACEMENT_STRATEGY=PACK lets them spread "
                "over nodes." if strategy == "STRICT_PACK" else "")
        nodes = ", ".join(f"{n.get('NodeManagerAddress', '?')}: {n.get('Resources', {}).get(resource, 0):g}"
                          for n in self._ray.nodes() if n.get("Alive"))
        raise ValueError(f"distributed_executor_backend='ray': the Ray cluster did not grant {self.world_size} x "
                         f"{{{resource!r}: 1}} (strategy {strategy}) within {timeout_s:g} s "
                         f"(PAGEDLLM_RAY_PLACEMENT_TIMEOUT_S); available now: "
                         f"{self._ray.available_resources().get(resource, 0):g} {resource}s; {resource}s per node: "
                         f"{nodes}.{hint}")

    # ---- transport ----------------------------------------------------------------------------------------------
    def _broadcast(self, msg: tuple) -> None:
        if self._dead is not None:
            raise self._dead
        msg_ref = self._ray.put(msg)     # once; every actor's call gets the reference
        self._pending = [actor.execute.remote(msg_ref) for actor in self._actors]

    def _collect_replies(self, call: bool) -> list[tuple[str, Any, str]]:
        replies = self._collect_raw()
        if not call:
            for rank, (status, value, tb) in enumerate(replies):
                if status == "error":
                    self._fail(rank, (value, tb))
        return replies

    def _collect_raw(self) -> list:
        ray = self._ray
        results: dict[int, Any] = {}
        waiting = {ref: rank for rank, ref in enumerate(self._pending)}
        while waiting:
            # A bounded wait, so that Ctrl-C is seen; a dead actor's call resolves to ActorDiedError at once.
            ready, _ = ray.wait(list(waiting), num_returns=1, timeout=1.0)
            for ref in ready:
                rank = waiting.pop(ref)
                try:
                    results[rank] = ray.get(ref)
                except ray.exceptions.RayError as e:
                    self._fail(rank, None, cause=e)
        return [results[r] for r in range(len(self._pending))]

    def _dead_ranks(self, wait_s: float) -> list[int]:
        """The ranks whose actor is dead. A live actor busy in a collective does not answer the ping; a dead one's
        ping fails at once."""
        ray = self._ray
        pings = {actor.ping.remote(): rank for rank, actor in enumerate(self._actors)}
        ready, _ = ray.wait(list(pings), num_returns=len(pings), timeout=wait_s)
        dead = []
        for ref in ready:
            try:
                ray.get(ref)
            except ray.exceptions.RayActorError:
                dead.append(pings[ref])
        return sorted(dead)

    def _find_death(self, rank: int, error: tuple[BaseException, str] | None,
                    cause: BaseException | None) -> str | None:
        dead = [rank] if error is None else self._dead_ranks(wait_s=0.5)
        if not dead:
            return None
        r = dead[0]
        where = f" (pid {self.actor_nodes[r][1]} on {self.actor_nodes[r][0]})" if r < len(self.actor_nodes) else ""
        reason = f": {str(cause).splitlines()[0]}" if cause is not None and str(cause) else ""
        return f"Worker {self.describe_rank(r)}, a Ray actor{where}, died{reason}"


def _stop_actors(ray, actors: list, placement_group, remove_placement_group) -> None:
    if not ray.is_initialized():      # Ray already shut down (interpreter exit): it ended the actors itself
        return
    for actor in actors:
        try:
            ray.kill(actor)
        except Exception:   # noqa: BLE001 - already dead
            pass
    try:
        remove_placement_group(placement_group)
    except Exception:   # noqa: BLE001 - already removed
        pass
