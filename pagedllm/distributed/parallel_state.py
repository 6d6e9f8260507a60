"""This process's place in the model-parallel world: its tensor-parallel group and its pipeline stage.

The world is ``tensor_parallel_size x pipeline_parallel_size`` ranks, numbered as vLLM does:
``rank = pp_rank * tp_size + tp_rank``, so the ranks of one stage are consecutive and form its tensor-parallel group,
and a rank's neighbours in the pipeline are ``rank -/+ tp_size`` (the same TP rank of the previous / next stage).
With a world size of 1 (the default, and every single-process engine) the collectives return their input untouched and
nothing of torch.distributed is initialised, so the single-process path costs one integer comparison per parallel
layer.

Backends: gloo on the CPU; NCCL on CUDA, each rank on its own device (the caller, ``RankWorker``, makes it the
current device before anything touches CUDA), so every collective runs on CUDA tensors on the device's streams: no
host round trip, and the tensor-parallel all-reduces can be captured in CUDA graphs (NCCL >= 2.9 captures
collectives; the communicator is formed at ``init_model_parallel`` and used by the profiling forward before any
capture). Pipeline send/recv always run outside graphs (model_runner.py). One test-only exception:
PAGEDLLM_TEST_SHARE_ONE_GPU=1 puts every rank on cuda:0 over gloo (NCCL refuses two ranks on one device), where
gloo's send/recv, which read the tensor's memory as host memory, go through a host copy.
"""
from __future__ import annotations

import datetime

import torch

from pagedllm.config import pp_layer_range

_tp_rank = 0
_tp_size = 1
_pp_rank = 0
_pp_size = 1
_tp_group = None        # this stage's tensor-parallel process group (None: the default group, or no group at all)
_p2p_via_host = False   # gloo on CUDA tensors (test-only, PAGEDLLM_TEST_SHARE_ONE_GPU): send/recv through host copies
_custom_all_reduce = None   # SymmMemAllReduce for small CUDA all-reduces (opt-in, enable_custom_all_reduce)


def distributed_backend(device: torch.device) -> str:
    """torch.distributed's backend for ranks on ``device``: NCCL on CUDA, gloo on the CPU (and on CUDA under the
    test-only PAGEDLLM_TEST_SHARE_ONE_GPU, where ranks share one device, which NCCL refuses)."""
    if device.type != "cuda":
        return "gloo"
    from pagedllm import envs
    return "gloo" if envs.PAGEDLLM_TEST_SHARE_ONE_GPU else "nccl"


HOSTED_STORE_SCHEME = "store://"


def rendezvous_store(host: str = "127.0.0.1"):
    """A torch.distributed TCPStore served from this process on a port the OS picks and that it keeps, and the
    ``init_method`` (``store://host:port``) that has ranks join it. Unlike ``tcp://`` at a port found free and then
    released, nothing can take the port before rank 0 binds it: workers take seconds to start, while other
    processes open connections on ephemeral ports. Keep the store as long as the ranks' process group lives."""
    import torch.distributed as dist
    store = dist.TCPStore(host, 0, is_master=True, wait_for_workers=False)
    return store, f"{HOSTED_STORE_SCHEME}{host}:{store.port}"


def init_model_parallel(rank: int, tensor_parallel_size: int, pipeline_parallel_size: int, init_method: str,
                        backend: str | None = None, timeout_s: float = 600.0,
                        device: torch.device | None = None) -> None:
    """Join the world of ``tp x pp`` ranks that meet at ``init_method`` (``tcp://host:port``, rank 0 serving the
    store there, or ``store://host:port`` from ``rendezvous_store``) and make the
    tensor-parallel group of this rank's stage. ``device``: this rank's device (``cuda:<index>``, already the
    current device); the backend follows it unless given (``distributed_backend``)."""
    global _tp_rank, _tp_size, _pp_rank, _pp_size, _tp_group, _p2p_via_host
    world_size = tensor_parallel_size * pipeline_parallel_size
    device = torch.device("cpu") if device is None else device
    if world_size > 1:
        import torch.distributed as dist
        backend = backend or distributed_backend(device)
        extra = {}
        if backend == "nccl":
            # Bound to this rank's device: the communicator is formed now (a broken NCCL setup fails at start-up,
            # naming the rank, not inside the first forward) and the stage groups below are split from it.
            extra["device_id"] = device
        timeout = datetime.timedelta(seconds=timeout_s)
        if init_method.startswith(HOSTED_STORE_SCHEME):
            # The caller already runs the store (rendezvous_store below): every rank joins it as a client.
            host, _, port = init_method[len(HOSTED_STORE_SCHEME):].rpartition(":")
            store = dist.TCPStore(host, int(port), world_size, is_master=False, timeout=timeout)
            dist.init_process_group(backend, store=store, rank=rank, world_size=world_size, timeout=timeout, **extra)
        else:
            dist.init_process_group(backend, init_method=init_method, rank=rank, world_size=world_size,
                                    timeout=timeout, **extra)
        _p2p_via_host = backend == "gloo" and device.type == "cuda"
        if pipeline_parallel_size > 1 and tensor_parallel_size > 1:
            # Every rank must create every group, in the same order (torch.distributed's rule).
            for stage in range(pipeline_parallel_size):
                group = dist.new_group(list(range(stage * tensor_parallel_size, (stage + 1) * tensor_parallel_size)))
                if stage == rank // tensor_parallel_size:
                    _tp_group = group
    _tp_rank, _tp_size = rank % tensor_parallel_size, tensor_parallel_size
    _pp_rank, _pp_size = rank // tensor_parallel_size, pipeline_parallel_size


def init_tensor_parallel(rank: int, world_size: int, init_method: str, backend: str = "gloo",
                         timeout_s: float = 600.0) -> None:
    """Tensor parallel only (one pipeline stage)."""
    init_model_parallel(rank, world_size, 1, init_method, backend, timeout_s)


def enable_custom_all_reduce(device: torch.device, dtype: torch.dtype, max_kib: int) -> str:
    """Send this stage's CUDA all-reduces of up to ``max_kib`` KiB of ``dtype`` through symmetric memory
    (symm_mem_all_reduce.py); every rank of a group of 2+ calls it, after ``init_model_parallel``. Returns a line for
    the start-up log. Raises ValueError where it cannot apply (asked for, so not ignored)."""
    global _custom_all_reduce
    if device.type != "cuda" or _p2p_via_host:
        raise ValueError("PAGEDLLM_CUSTOM_ALL_REDUCE_KIB needs tensor-parallel ranks on their own CUDA devices "
                         "(NCCL); unset it on this setup.")
    from pagedllm.distributed.symm_mem_all_reduce import SymmMemAllReduce
    try:
        _custom_all_reduce = SymmMemAllReduce(_tp_group, device, dtype, max_kib * 1024)
    except RuntimeError as e:
        raise ValueError(f"PAGEDLLM_CUSTOM_ALL_REDUCE_KIB={max_kib}: symmetric memory could not be set up on "
                         f"{device} ({e}); unset it to all-reduce through NCCL.") from e
    return f"all-reduce: one-shot over symmetric memory up to {max_kib} KiB of {dtype}, NCCL above"


def destroy_model_parallel() -> None:
    global _tp_rank, _tp_size, _pp_rank, _pp_size, _tp_group, _p2p_via_host, _custom_all_reduce
    if _tp_size * _pp_size > 1:
        import torch.distributed as dist
        if dist.is_initialized():
            dist.destroy_process_group()
    _tp_rank, _tp_size, _pp_rank, _pp_size, _tp_group = 0, 1, 0, 1, None
    _p2p_via_host = False
    _custom_all_reduce = None


destroy_tensor_parallel = destroy_model_parallel


def destroy_distributed_environment() -> None:
    """vLLM's: the torch.distributed process group this process joined, if any, is destroyed. Scripts that free an
    LLM's memory call it after ``destroy_model_parallel()`` and before ``del llm``."""
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def cleanup_dist_env_and_memory(shutdown_ray: bool = False) -> None:
    """vLLM's clean-up between two ``LLM``s in one program (its examples call it after ``del llm``): the
    model-parallel state is reset, garbage collected (an engine dropped by ``del`` frees its weights and KV cache
    here), CUDA's cached blocks handed back; ``shutdown_ray`` also stops a Ray runtime this process started."""
    import gc
    import sys
    destroy_model_parallel()
    if shutdown_ray and "ray" in sys.modules:
        sys.modules["ray"].shutdown()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def get_tp_rank() -> int:
    return _tp_rank


def get_tp_size() -> int:
    return _tp_size


def get_pp_rank() -> int:
    return _pp_rank


def get_pp_size() -> int:
    return _pp_size


def is_first_pp_stage() -> bool:
    return _pp_rank == 0


def is_last_pp_stage() -> bool:
    return _pp_rank == _pp_size - 1


def tp_all_reduce(x: torch.Tensor) -> torch.Tensor:
    """Sum ``x`` over the stage's tensor-parallel ranks, in place; every rank ends with the same values."""
    if _tp_size == 1:
        return x
    if _custom_all_reduce is not None and _custom_all_reduce.eligible(x):
        return _custom_all_reduce(x)
    import torch.distributed as dist
    dist.all_reduce(x, group=_tp_group)
    return x


def warm_up_tp_communicator(device: torch.device) -> None:
    """One all-reduce over the stage's tensor-parallel group, completed, before CUDA graphs capture the model's:
    NCCL captures a collective only on a communicator that has run eagerly (its connections are set up outside the
    capture), and every rank of the group reaches its capture together."""
    if _tp_size == 1:
        return
    probe = torch.ones(1, device=device)
    tp_all_reduce(probe)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    if probe.item() != _tp_size:
        raise RuntimeError(f"tensor-parallel all-reduce check failed: the sum of {_tp_size} ones is {probe.item()}")


def tp_all_gather(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Every tensor-parallel rank's ``x`` concatenated along ``dim`` in rank order (the same tensor on every rank)."""
    if _tp_size == 1:
        return x
    import torch.distributed as dist
    parts = [torch.empty_like(x) for _ in range(_tp_size)]
    dist.all_gather(parts, x.contiguous(), group=_tp_group)
    return torch.cat(parts, dim=dim)


# ---- pipeline parallel ---------------------------------------------------------------------------------------------
def get_pp_layer_range(num_layers: int, pp_rank: int | None = None, pp_size: int | None = None,
                       partition: str | None = None) -> tuple[int, int]:
    """[start, end) of the decoder layers that stage ``pp_rank`` holds (this process's stage by default); the rule
    is ``config.pp_layer_range``'s (the config checks a partition with it before any worker starts)."""
    return pp_layer_range(num_layers, _pp_rank if pp_rank is None else pp_rank,
                          _pp_size if pp_size is None else pp_size, partition)


def pp_send_hidden(hidden: torch.Tensor, residual: torch.Tensor | None):
    """Send a stage's output (hidden states and the residual stream, one [2, tokens, hidden] tensor) to the same
    tensor-parallel rank of the next stage. Returns the send's handle: wait on it before the tensor is reused."""
    import torch.distributed as dist
    packed = torch.stack([hidden, residual if residual is not None else torch.zeros_like(hidden)])
    if _p2p_via_host:     # test-only gloo on CUDA (module docstring)
        packed = packed.cpu()
    work = dist.isend(packed.contiguous(), dst=(_pp_rank + 1) * _tp_size + _tp_rank)
    return work, packed


def pp_recv_hidden(num_tokens: int, hidden_size: int, dtype: torch.dtype,
                   device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The previous stage's (hidden states, residual) for a step of ``num_tokens`` tokens."""
    import torch.distributed as dist
    packed = torch.empty((2, num_tokens, hidden_size), dtype=dtype, device="cpu" if _p2p_via_host else device)
    dist.recv(packed, src=(_pp_rank - 1) * _tp_size + _tp_rank)
    if _p2p_via_host:
        packed = packed.to(device)
    return packed[0], packed[1]


def kv_head_range(num_kv_heads: int, rank: int, world_size: int) -> tuple[int, int]:
    """(first KV head, number of KV heads) that ``rank`` holds. With fewer KV heads than ranks each head is
    replicated on ``world_size // num_kv_heads`` consecutive ranks (vLLM's rule), so every rank holds one."""
    if num_kv_heads >= world_size:
        if num_kv_heads % world_size:
            raise ValueError(f"Total number of key-value heads ({num_kv_heads}) must be divisible by tensor parallel "
                             f"size ({world_size}).")
        per_rank = num_kv_heads // world_size
        return rank * per_rank, per_rank
    if world_size % num_kv_heads:
        raise ValueError(f"Tensor parallel size ({world_size}) must be divisible by the total number of key-value "
                         f"heads ({num_kv_heads}) when it is larger.")
    return rank // (world_size // num_kv_heads), 1
