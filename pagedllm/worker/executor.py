"""Executors: where the model runs. The engine core hands every step's ``SchedulerOutput`` (plain data) to an
executor and gets the sampling rank's ``ModelRunnerOutput`` back; it never touches a model itself.

- ``UniProcExecutor`` ("uni"): one ``ModelRunner`` in this process (tensor_parallel_size=pipeline_parallel_size=1).
- ``MultiprocExecutor`` ("mp"): one worker process per rank on this host (tensor_parallel_size x
  pipeline_parallel_size of them, rank = pp_rank * tp_size + tp_rank as in vLLM), joined in a torch.distributed
  group (NCCL on CUDA, rank r on cuda:r of the devices CUDA_VISIBLE_DEVICES shows; gloo on the CPU) at a TCP port
  picked free at start. Every worker builds its own ``ModelRunner`` over its shard of its stage's layers and runs
  every step. Within a stage the logits are gathered on every rank and the ranks share their random seed, so all of
  them sample the same tokens; only the last stage samples, and its tensor-parallel rank 0's output is the one read.
- ``RayExecutor`` ("ray", ray_executor.py): one Ray actor per rank, on one node or several.

The multi-rank executors share ``DistributedExecutor`` (the engine core's calls, the output rank, the hand-off
below) and, on the worker side, ``RankWorker`` (one rank's calls, in order); ``create_executor`` is in backends.py.

Pipeline parallel, sampled tokens: the stages before the last never see logits, yet the first one must embed each
request's newest token at its next step. The executor forwards the last stage's sampled tokens to them, ahead of the
next step it launches (a "sampled_tokens" message). vLLM sends them inside the next ``SchedulerOutput`` instead; here
the workers append their own tokens already (the engine never sends tokens back, step_data.py), so the hand-off stays
in the executor, costs nothing without pipeline parallel, and the earlier stages' request states end exactly as the
last stage's (the same tokens, appended in the same order, before the same next step).

Each step is pickled once into a shared-memory ring (``distributed/shm_broadcast.py``) and every worker reads it
from there; the pipe to each worker carries only a doorbell (and a message too large for a slot) one way and the
replies the other. A worker that dies is found within a second (its process sentinel) and named.
"""
from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.connection
import os
import random
import socket
import sys
import time
import traceback
import weakref
from collections import deque
from typing import Any, Callable

from pagedllm import envs
from pagedllm.config import EngineConfig
from pagedllm.distributed.shm_broadcast import ShmBroadcaster, ShmReader
from pagedllm.gc_heap import freeze_gc_heap
from pagedllm.step_data import GrammarOutput, ModelRunnerOutput, SchedulerOutput

logger = logging.getLogger(__name__)


class Executor:
    """The engine core's view of the workers."""

    def determine_num_blocks(self) -> int:
        raise NotImplementedError

    def num_swap_blocks(self) -> int:
        """CPU swap blocks (swap_space), the smallest over the ranks; 0: none."""
        raise NotImplementedError

    def allocate_kv_cache(self, num_blocks: int, num_swap_blocks: int = 0) -> None:
        raise NotImplementedError

    def launch(self, sched: SchedulerOutput) -> Any:
        """Start the step; the handle goes to ``finish``, which returns its output (steps finish in launch order)."""
        raise NotImplementedError

    def finish(self, launched: Any, grammar: GrammarOutput | None = None) -> ModelRunnerOutput:
        """Sample the launched step (``grammar``: the structured-output bitmask, filled while it ran)."""
        raise NotImplementedError

    def startup_info(self) -> dict:
        raise NotImplementedError

    def collective_rpc(self, method: str | Callable[..., Any], args: tuple = (),
                       kwargs: dict[str, Any] | None = None) -> list[Any]:
        """Run ``method`` on every rank's worker (vLLM's ``collective_rpc``) and return each rank's result, in rank
        order: the name of a ``ModelRunner`` method, or a function called with the runner first."""
        raise NotImplementedError

    def shutdown(self) -> None:
        pass


def call_on_runner(runner: Any, method: str | Callable[..., Any], args: tuple = (),
                   kwargs: dict[str, Any] | None = None) -> Any:
    """One rank's part of ``collective_rpc``: ``runner.<method>(*args, **kwargs)``, or ``method(runner, ...)``."""
    if isinstance(method, str):
        fn = getattr(runner, method, None)
        if fn is None or method.startswith("_") or not callable(fn):
            raise ValueError(f"collective_rpc: the worker has no method {method!r}.")
        return fn(*args, **(kwargs or {}))
    if not callable(method):
        raise ValueError(f"collective_rpc: method must be a method name or a function, got {type(method).__name__}.")
    return method(runner, *args, **(kwargs or {}))


class UniProcExecutor(Executor):
    def __init__(self, config: EngineConfig):
        from pagedllm.worker.extension import runner_class
        from pagedllm.worker.model_runner import ModelRunner
        self.runner = runner_class(ModelRunner, config.args.worker_extension_cls)(config)

    def determine_num_blocks(self) -> int:
        return self.runner.determine_num_blocks()

    def num_swap_blocks(self) -> int:
        return self.runner.num_swap_blocks()

    def allocate_kv_cache(self, num_blocks: int, num_swap_blocks: int = 0) -> None:
        self.runner.allocate_kv_cache(num_blocks, num_swap_blocks)

    def launch(self, sched: SchedulerOutput) -> Any:
        return self.runner.launch(sched)

    def finish(self, launched: Any, grammar: GrammarOutput | None = None) -> ModelRunnerOutput:
        return self.runner.finish(launched, grammar=grammar)

    def startup_info(self) -> dict:
        return self.runner.startup_info()

    def collective_rpc(self, method: str | Callable[..., Any], args: tuple = (),
                       kwargs: dict[str, Any] | None = None) -> list[Any]:
        return [call_on_runner(self.runner, method, args, kwargs)]


# collective_rpc: how long the other ranks may take to answer once one rank's call has failed. Enough for a
# call that runs on (a weight reload, a forward); a rank still busy after it is taken to wait in a collective the
# failed rank never joined, and the engine ends the workers rather than hang.
CALL_ERROR_GRACE_S = 60.0


class WorkerDied(RuntimeError):
    """A worker process (a tensor- or pipeline-parallel rank) ended or failed; the engine cannot go on. ``rank``:
    the rank whose call failed (None: one died)."""

    def __init__(self, message: str, rank: int | None = None):
        super().__init__(message)
        self.rank = rank


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free now on ``host`` (the loopback; "" for every interface of this node). The OS picks it, so two
    engines on one host do not clash."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def output_rank(tp_size: int, pp_size: int) -> int:
    """The rank whose output the engine reads: the last stage's tensor-parallel rank 0 (every rank of that stage
    samples alike)."""
    return (pp_size - 1) * tp_size


class DistributedExecutor(Executor):
    """One worker per rank (rank = pp_rank * tp_size + tp_rank), each running every call in the order sent. The
    engine core's calls are the same for every transport; a subclass supplies ``_broadcast`` (one message to every
    rank) and ``_collect_replies`` (every rank's ``(status, value, traceback)`` reply to the last message that gets
    one, in rank order, or ``WorkerDied`` naming the rank)."""
    runner = None        # the model lives in the workers

    def __init__(self, config: EngineConfig):
        self.tp_size, self.pp_size = config.tensor_parallel_size, config.pipeline_parallel_size
        self.world_size = self.tp_size * self.pp_size
        self._output_rank = output_rank(self.tp_size, self.pp_size)
        # Pipeline parallel: the last stage's outputs not yet forwarded to the earlier stages (module docstring).
        self._tokens_for_earlier_stages: list[dict[str, int]] = []
        self._dead: WorkerDied | None = None       # set once a rank has failed: every later call raises it

    # ---- the engine core's calls ------------------------------------------------------------------------------
    # The KV cache's sizing and allocation are start-up calls too: a rank's ValueError there (a max_model_len the
    # cache cannot hold) is a ValueError here, as with one rank in this process (_collect_start).
    def determine_num_blocks(self) -> int:
        self._broadcast(("determine_num_blocks", None))
        return min(self._collect_start())

    def num_swap_blocks(self) -> int:
        self._broadcast(("num_swap_blocks", None))
        return min(self._collect_start())

    def allocate_kv_cache(self, num_blocks: int, num_swap_blocks: int = 0) -> None:
        self._broadcast(("allocate_kv_cache", (num_blocks, num_swap_blocks)))
        self._collect_start()

    def launch(self, sched: SchedulerOutput) -> Any:
        if self._tokens_for_earlier_stages:
            self._broadcast(("sampled_tokens", self._tokens_for_earlier_stages))
            self._tokens_for_earlier_stages = []
        self._broadcast(("launch", sched))
        return sched.step_id

    def finish(self, launched: Any, grammar: GrammarOutput | None = None) -> ModelRunnerOutput:
        self._broadcast(("finish", grammar))     # every sampling rank samples with the same mask (identical logits)
        output = self._collect()[self._output_rank]
        if self.pp_size > 1 and output.sampled:
            self._tokens_for_earlier_stages.append(output.sampled)
        return output

    def startup_info(self) -> dict:
        self._broadcast(("startup_info", None))
        infos = self._collect()
        info = dict(infos[0])
        info["tensor_parallel_size"] = self.tp_size
        info["pipeline_parallel_size"] = self.pp_size
        info["rank_devices"] = [i.get("device") for i in infos]     # rank r's device, e.g. "cuda:1"
        return info

    def collective_rpc(self, method: str | Callable[..., Any], args: tuple = (),
                       kwargs: dict[str, Any] | None = None) -> list[Any]:
        """A call that fails on a rank raises that rank's exception once every rank has answered, and the workers
        live on (as the "uni" executor's and vLLM's): a typo in a method name or a user function that raises must not
        end the engine. A rank that dies, or that has not answered ``CALL_ERROR_GRACE_S`` after another rank's
        error (stuck in a collective the failed rank never joined), still ends every worker."""
        self._broadcast(("call", (_portable(method), args, kwargs)))
        replies = self._collect_replies(call=True)
        for rank, (status, value, tb) in enumerate(replies):
            if status == "error":
                value.add_note(f"(raised in collective_rpc on worker {self.describe_rank(rank)}; its traceback:\n"
                               f"{tb.rstrip()})")
                raise value
        return [value for _, value, _ in replies]

    def describe_rank(self, rank: int) -> str:
        if self.pp_size == 1:
            return f"rank {rank}"
        return f"rank {rank} (pipeline stage {rank // self.tp_size}, tensor-parallel rank {rank % self.tp_size})"

    # ---- transport ----------------------------------------------------------------------------------------------
    def _broadcast(self, msg: tuple) -> None:
        raise NotImplementedError

    def _collect(self) -> list:
        """Each rank's reply value, in rank order; a failed call ends every worker and raises, naming the rank."""
        return [value for _, value, _ in self._collect_replies(call=False)]

    def _collect_replies(self, call: bool) -> list[tuple[str, Any, str]]:
        """Each rank's ``(status, value, traceback)``, in rank order. A dead rank ends every worker and raises
        ``WorkerDied``; so does an "error" reply, unless ``call`` (collective_rpc: the caller raises it once every
        rank has answered, or ``CALL_ERROR_GRACE_S`` after the first error, when the workers are ended)."""
        raise NotImplementedError

    def _find_death(self, rank: int, error: tuple[BaseException, str] | None,
                    cause: BaseException | None) -> str | None:
        """The message naming a dead rank (``rank``, when ``error`` is None: it stopped answering), or None when
        every rank is alive."""
        raise NotImplementedError

    def _collect_start(self) -> list:
        """Each rank's reply to a start-up call (being built, the KV cache's sizing). A rank that failed with a
        ValueError (a setting its shard of the model or its device cannot take: a quantization group that does not
        divide its columns, an all-reduce option its device lacks, a KV cache too small for max_model_len) ends the
        workers and raises a ValueError naming the rank, as the same setting raises with one rank in this process;
        any other failure is ``WorkerDied``."""
        try:
            return self._collect()
        except WorkerDied as e:
            if isinstance(e.__cause__, ValueError) and e.rank is not None:
                raise ValueError(f"{e.__cause__} (worker {self.describe_rank(e.rank)})") from e
            raise

    def _fail(self, rank: int, error: tuple[BaseException, str] | None, cause: BaseException | None = None) -> None:
        """End every worker and raise ``WorkerDied``: ``rank``'s call failed with ``error`` (exception, traceback)
        or, when ``error`` is None, ``rank`` is gone (``cause``: what the transport said)."""
        # A rank that failed in a collective often did so because another rank died: name the dead one.
        death = self._find_death(rank, error, cause)
        if death is not None:
            self._dead = WorkerDied(death)
        else:
            exc, tb = error
            self._dead = WorkerDied(f"Worker {self.describe_rank(rank)} failed: {type(exc).__name__}: {exc}\n{tb}",
                                    rank)
        self._finalizer()
        if death is None:
            raise self._dead from error[0]
        raise self._dead


def _portable(method: str | Callable[..., Any]) -> str | bytes:
    """A method name as it is; a function pickled by value (cloudpickle, as vLLM), so a lambda or a closure reaches
    the worker processes too. Without cloudpickle only module-level functions travel (pickled by reference)."""
    import pickle
    if isinstance(method, str):
        return method
    try:
        import cloudpickle
    except ImportError:
        cloudpickle = None
    try:
        return (cloudpickle or pickle).dumps(method)
    except Exception as e:   # noqa: BLE001 - the caller's function
        raise ValueError(f"collective_rpc: the function cannot be sent to the worker processes ({e}); pass a "
                         f"module-level function, or install cloudpickle.") from e


class MultiprocExecutor(DistributedExecutor):
    def __init__(self, config: EngineConfig):
        super().__init__(config)
        if multiprocessing.current_process().daemon:
            # Python forbids a daemonic process children; the server's engine-core process is one.
            raise ValueError("tensor_parallel_size > 1 with the engine core in a daemonic process of its own is not "
                             "supported yet: run the engine core in the caller's process (the server does so by "
                             "itself with -tp; AsyncLLMEngine(engine_process=False)).")
        # spawn, not fork: the caller may hold threads (an AsyncLLMEngine's reader, tokenizer pools, OpenMP) and a
        # fork copies their held locks into the child. Forked workers hung in the full CPU suite (rendezvous never
        # reached after earlier tests had started threads); spawned ones pay a fresh `import torch` (~2 s).
        ctx = multiprocessing.get_context("spawn")
        unguarded = unguarded_main_line()
        if unguarded is not None:
            # Each spawned worker would re-run the script up to this line, reach it again and fail while starting
            # (Python's "bootstrapping phase" error); the engine saw only "Worker rank 1 died (exit code 1)".
            raise ValueError(f"{unguarded[0]}, line {unguarded[1]}: tensor_parallel_size x pipeline_parallel_size "
                             f"= {self.world_size} starts a worker process per rank with spawn, which re-runs the "
                             f"script's module-level code in each worker; put the code that creates the engine "
                             f"under `if __name__ == \"__main__\":`.")
        # The rendezvous store lives here, on a port it holds from the start (see rendezvous_store).
        from pagedllm.distributed.parallel_state import rendezvous_store
        self._store, init_method = rendezvous_store()
        # Every rank seeds its generator alike, so random sampling gives the same tokens on every rank.
        shared_seed = random.SystemRandom().randrange(2**31)
        self._conns: list[multiprocessing.connection.Connection] = []
        self._procs: list[multiprocessing.process.BaseProcess] = []
        self._ring = ShmBroadcaster(num_readers=self.world_size)
        for rank in range(self.world_size):
            parent_end, child_end = ctx.Pipe(duplex=True)
            proc = ctx.Process(target=_worker_main, name=f"pagedllm-worker-{rank}", daemon=True,
                               args=(config, rank, self.tp_size, self.pp_size, init_method, shared_seed, child_end,
                                     self._ring.handle(), os.getpid(), local_cuda_device(rank)))
            proc.start()
            child_end.close()
            self._conns.append(parent_end)
            self._procs.append(proc)
        # Workers are ended when the executor goes away, even without shutdown() (a deleted LLM).
        self._finalizer = weakref.finalize(self, _stop_workers, self._procs, self._conns, self._ring)
        try:
            self._collect_start()
        except BaseException:
            # A failed or interrupted start (Ctrl-C while the ranks load) ends the workers now, not when this
            # executor is collected: the exception's traceback keeps it alive (a notebook keeps sys.last_traceback).
            self._finalizer()
            raise

    def shutdown(self) -> None:
        self._finalizer()

    # ---- transport ----------------------------------------------------------------------------------------------
    def _broadcast(self, msg: tuple) -> None:
        if self._dead is not None:
            raise self._dead
        try:
            doorbell = self._ring.publish(msg, alive=lambda: all(p.exitcode is None for p in self._procs))
        except EOFError:
            dead = next(r for r, p in enumerate(self._procs) if p.exitcode is not None)
            self._fail(dead, None)
        for rank, conn in enumerate(self._conns):
            try:
                conn.send_bytes(doorbell)
            except (BrokenPipeError, ConnectionResetError, EOFError, OSError):
                self._fail(rank, None)

    def _collect_replies(self, call: bool) -> list[tuple[str, Any, str]]:
        replies: dict[int, tuple[str, Any, str]] = {}
        waiting = {conn: rank for rank, conn in enumerate(self._conns)}
        sentinels = {proc.sentinel: rank for rank, proc in enumerate(self._procs)}
        first_error_at = None
        while waiting:
            if first_error_at is not None and time.monotonic() - first_error_at > CALL_ERROR_GRACE_S:
                rank = min(r for r, reply in replies.items() if reply[0] == "error")
                self._fail(rank, replies[rank][1:])
            for ready in multiprocessing.connection.wait(list(waiting) + list(sentinels), timeout=1.0):
                if ready in sentinels:
                    rank = sentinels[ready]
                    if self._procs[rank].exitcode is not None:
                        if self._conns[rank] in waiting and self._conns[rank].poll():
                            continue     # it replied before it exited (a failed start says why): read that first
                        self._fail(rank, None)
                    continue
                rank = waiting.pop(ready)
                try:
                    status, value, tb = ready.recv()
                except (EOFError, OSError):
                    self._fail(rank, None)
                if status == "error":
                    if not call:
                        self._fail(rank, (value, tb))
                    first_error_at = first_error_at or time.monotonic()
                replies[rank] = (status, value, tb)
        return [replies[r] for r in range(self.world_size)]

    def _find_death(self, rank: int, error: tuple[BaseException, str] | None,
                    cause: BaseException | None) -> str | None:
        for proc in self._procs:
            proc.join(timeout=0.5 if error is not None else 0)
        # With an error in hand, a rank that exited cleanly (0) did so after reporting its own failure (a failed
        # start returns): that error is the news, not its exit.
        dead = [(r, p) for r, p in enumerate(self._procs)
                if p.exitcode is not None and (error is None or p.exitcode != 0)]
        if dead:
            r, p = dead[0]
            return f"Worker {self.describe_rank(r)} (pid {p.pid}) died (exit code {p.exitcode})."
        if error is None:
            return f"Worker {self.describe_rank(rank)} (pid {self._procs[rank].pid}) closed its pipe."
        return None


def unguarded_main_line() -> tuple[str, int] | None:
    """(file, line) where the running script (``__main__``, a .py file) reached this call from module-level code
    outside an ``if __name__ == "__main__":`` block, else None (a guarded call, a call from a function the guard
    calls, an interactive session, ``python -c``)."""
    import ast
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if not path or not path.endswith(".py") or not os.path.isfile(path):
        return None
    frame = sys._getframe(1)
    while frame is not None and not (frame.f_globals is vars(main) and frame.f_code.co_name == "<module>"):
        frame = frame.f_back
    if frame is None:
        return None
    line = frame.f_lineno
    try:
        with open(path) as f:
            tree = ast.parse(f.read())
    except (OSError, SyntaxError, ValueError, UnicodeDecodeError):
        return None
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "__name__" in ast.unparse(node.test) and node.lineno <= line <= node.end_lineno:
            return None
    return path, line


def _stop_workers(procs: list, conns: list, ring: ShmBroadcaster) -> None:
    import pickle
    for conn in conns:
        try:
            conn.send_bytes(pickle.dumps(("shutdown", None)))     # a doorbell carrying its message
        except (BrokenPipeError, ConnectionResetError, EOFError, OSError):
            pass
    for proc in procs:
        proc.join(timeout=2.0)
    for proc in procs:
        if proc.is_alive():
            proc.terminate()        # ignored on Linux (_detach_signals): the kill below ends it
            proc.join(timeout=2.0)
        if proc.is_alive():
            proc.kill()
            proc.join()
    for conn in conns:
        conn.close()
    ring.close()


class RankWorker:
    """One rank: its ModelRunner and the calls the executor sends it, run in the order sent. The worker process's
    loop (``_worker_main``) and the Ray actor (ray_executor.py) both wrap one."""

    def __init__(self, config: EngineConfig, rank: int, tp_size: int, pp_size: int, init_method: str,
                 shared_seed: int, cuda_device: int = 0, local_rank: int | None = None):
        """``cuda_device``: the index, among the devices this process sees, of the GPU this rank runs on (CUDA
        only): its local rank on a host of several GPUs, 0 in a Ray actor that sees only the GPU Ray gave it.
        ``local_rank``: the rank's position among the ranks on its host (None: ``rank``, every rank on one host)."""
        import dataclasses

        import torch

        from pagedllm.distributed import init_model_parallel
        from pagedllm.worker.extension import runner_class
        from pagedllm.worker.model_runner import ModelRunner
        self.rank = rank
        self.is_output_rank = rank == output_rank(tp_size, pp_size)
        if config.device.type == "cuda":
            # Before anything touches CUDA: NCCL, the caching allocator, Triton launches and every torch.cuda call
            # that names no device follow the current device; the runner gets the explicit cuda:<index> too.
            if not 0 <= cuda_device < torch.cuda.device_count():
                raise ValueError(f"rank {rank}: CUDA device {cuda_device} does not exist; this process sees "
                                 f"{torch.cuda.device_count()} (CUDA_VISIBLE_DEVICES="
                                 f"{envs.CUDA_VISIBLE_DEVICES!r}).")
            torch.cuda.set_device(cuda_device)
            config = dataclasses.replace(config, device=torch.device("cuda", cuda_device))
        init_model_parallel(rank, tp_size, pp_size, init_method, device=config.device)
        one_shot_kib = envs.PAGEDLLM_CUSTOM_ALL_REDUCE_KIB
        if one_shot_kib and tp_size > 1 and not config.args.disable_custom_all_reduce:
            from pagedllm.distributed import enable_custom_all_reduce
            line = enable_custom_all_reduce(config.device, config.dtype, one_shot_kib)
            if rank == 0:
                logger.info(line)
        torch.manual_seed(shared_seed)     # ModelRunner reseeds with the user's seed when there is one
        self.runner = _build_in_waves(lambda: runner_class(ModelRunner, config.args.worker_extension_cls)(config),
                                      rank, tp_size * pp_size, config.args.max_parallel_loading_workers)
        # vLLM's Worker.rank / .local_rank, which functions given to collective_rpc read (its own test echoes rank)
        self.runner.rank, self.runner.local_rank = rank, rank if local_rank is None else local_rank
        self._launched: deque = deque()     # steps launched and not finished yet, oldest first

    def handle(self, method: str, arg: Any) -> tuple[str, Any, str] | None:
        """Run one call; its reply ``(status, value, traceback)``, or None for the calls that get none."""
        runner = self.runner
        if method == "sampled_tokens":      # pipeline parallel: the last stage's tokens
            if not runner.last_stage:
                for sampled in arg:
                    runner.append_sampled_tokens(sampled)
            return None
        if method == "launch":    # the step's output comes with its "finish"
            try:
                self._launched.append(("ok", runner.launch(arg), ""))
            except BaseException as e:   # noqa: BLE001
                self._launched.append(("error", picklable(e), traceback.format_exc()))
            return None
        try:
            if method == "finish":
                status, step, tb = self._launched.popleft()
                if status == "error":
                    return status, step, tb
                output = runner.finish(step, grammar=arg)
                return "ok", output if self.is_output_rank else None, ""
            if method == "allocate_kv_cache":
                return "ok", runner.allocate_kv_cache(*arg), ""
            if method == "call":      # collective_rpc
                import pickle
                name, args, kwargs = arg
                return "ok", call_on_runner(runner, pickle.loads(name) if isinstance(name, bytes) else name,
                                            args, kwargs), ""
            return "ok", getattr(runner, method)(), ""
        except BaseException as e:   # noqa: BLE001 - reported to the engine
            return "error", picklable(e), traceback.format_exc()

    def close(self) -> None:
        from pagedllm.distributed import destroy_model_parallel
        destroy_model_parallel()


def _build_in_waves(build: Callable[[], Any], rank: int, world_size: int, limit: int | None) -> Any:
    """``build()`` (this rank's ModelRunner: it loads the weights), with at most ``limit`` ranks building at once
    (vLLM's max_parallel_loading_workers): waves of ``limit`` ranks in rank order, a barrier of every rank after
    each. Building runs no collective, so the ranks of later waves only wait. The runner keeps when its building
    began and ended (``load_window``, wall-clock seconds) and its wave."""
    import torch.distributed as dist
    size = limit if limit and limit < world_size else world_size       # ranks per wave
    waves = -(-world_size // size)
    runner = None
    for wave in range(waves):
        if rank // size == wave:
            began = time.time()
            runner = build()
            runner.load_window, runner.load_wave = (began, time.time()), (wave, waves)
        if waves > 1:
            dist.barrier()
    return runner


def start_rank_worker(*args: Any) -> tuple[RankWorker | None, tuple[str, Any, str]]:
    """``RankWorker(*args)`` and the reply to send ("ok"), or None and the error that stopped it."""
    try:
        return RankWorker(*args), ("ok", None, "")
    except BaseException as e:   # noqa: BLE001 - reported to the engine
        return None, ("error", picklable(e), traceback.format_exc())


def local_cuda_device(local_rank: int) -> int:
    """The CUDA device of the rank that is ``local_rank``-th on its host: that index among the visible devices, or
    0 for every rank under the test-only PAGEDLLM_TEST_SHARE_ONE_GPU."""
    return 0 if envs.PAGEDLLM_TEST_SHARE_ONE_GPU else local_rank


def _worker_main(config: EngineConfig, rank: int, tp_size: int, pp_size: int, init_method: str, shared_seed: int,
                 conn: multiprocessing.connection.Connection, ring_handle: tuple, parent_pid: int,
                 cuda_device: int) -> None:
    """One rank's process: join the group, build this rank's ModelRunner, then run the calls the executor sends
    (in order) until it says shutdown or its pipe closes."""
    _detach_signals(parent_pid)
    worker, reply = start_rank_worker(config, rank, tp_size, pp_size, init_method, shared_seed, cuda_device)
    conn.send(reply)
    if worker is None:
        return
    freeze_gc_heap(f"rank {rank}")
    ring = ShmReader(ring_handle, rank)
    try:
        while True:
            try:
                method, arg = ring.read(conn.recv_bytes())
            except (EOFError, OSError):
                return       # the engine is gone
            if method == "shutdown":
                return
            reply = worker.handle(method, arg)
            if reply is not None:
                conn.send(reply)
    finally:
        ring.close()
        worker.close()


def _detach_signals(parent_pid: int) -> None:
    """SIGINT and SIGTERM ignored: Ctrl-C and a process-group SIGTERM (what systemd or a container runtime sends)
    reach every process, and a worker must live while the server drains its in-flight requests; the engine tears the
    workers down (a "shutdown" message, then SIGKILL). On Linux the worker is killed when the thread that started it
    goes away, so a killed engine leaves no worker behind, even one blocked in a collective; elsewhere SIGTERM keeps
    its default (nothing else would end an orphaned worker)."""
    import signal
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if sys.platform.startswith("linux"):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        die_with_parent(parent_pid)


def die_with_parent(parent_pid: int) -> None:
    """Linux: this process gets SIGKILL when the thread of ``parent_pid`` that started it goes away, however that
    ends (elsewhere: nothing). Exits now if the parent is already gone."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal
    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, int(signal.SIGKILL))
    if os.getppid() != parent_pid:      # the parent died before prctl took effect
        os._exit(1)


def picklable(e: BaseException) -> BaseException:
    """``e`` if it survives a pickle round trip (to cross a pipe), else a RuntimeError carrying its text."""
    import pickle
    try:
        pickle.loads(pickle.dumps(e))
        return e
    except Exception:
        return RuntimeError(f"{type(e).__name__}: {e}")
