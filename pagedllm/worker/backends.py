"""The executor a ``distributed_executor_backend`` names (config.executor_backend: "uni", "mp" or "ray")."""
from __future__ import annotations

from pagedllm.config import EngineConfig
from pagedllm.worker.executor import Executor, MultiprocExecutor, UniProcExecutor


def create_executor(config: EngineConfig) -> Executor:
    if config.executor_backend == "mp":
        return MultiprocExecutor(config)
    if config.executor_backend == "ray":
        from pagedllm.worker.ray_executor import RayExecutor     # Ray is optional: imported only when asked for
        return RayExecutor(config)
    return UniProcExecutor(config)
