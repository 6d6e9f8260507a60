"""Loaded by pytest before any test module: ``import pagedllm`` first, so that it sets OMP_WAIT_POLICY=PASSIVE before
a test module's ``import torch`` loads the OpenMP runtime (spinning OpenMP threads slow a shared CI machine down
several times, docs/perf.md issue 19)."""
import pagedllm  # noqa: F401
