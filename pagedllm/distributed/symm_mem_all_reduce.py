"""Tensor-parallel all-reduce of small tensors through CUDA symmetric memory: one kernel on each rank reads every
rank's copy over NVLink and sums them ("one-shot"), instead of NCCL's ring or tree.

Why: a tensor-parallel decode step all-reduces two ``[batch, hidden]`` tensors per layer (the attention's and the
MLP's row-parallel outputs): 7 KB per layer at batch 1 for Qwen2.5-7B. At that size NCCL's latency (several µs,
issue 21) is the cost, not the bytes; a one-shot kernel over peer memory is what vLLM's custom all-reduce does for
small sizes. torch ships that kernel (``torch.ops.symm_mem.one_shot_all_reduce_out`` on buffers from
``torch.distributed._symmetric_memory``), so nothing is compiled here.

**Opt-in until measured** (issue 21 asks for it "kept only if it wins end to end", and no two-GPU machine has been
lent yet): ``PAGEDLLM_CUSTOM_ALL_REDUCE_KIB=N`` sends CUDA all-reduces of up to N KiB through it (``0``, the
default: every all-reduce through NCCL). ``disable_custom_all_reduce=True`` (vLLM's flag) turns it off whatever the
variable says. Larger tensors (prompt steps) stay on NCCL, whose ring moves fewer bytes per rank.

Each call copies the input into this rank's symmetric buffer and reduces into the input in place (tp_all_reduce's
contract). torch's kernel synchronises the ranks through the buffer's signal pads before reading the peers and
after, so the next call may overwrite the buffer; no host synchronisation, so it can be captured in CUDA graphs.
"""
from __future__ import annotations

import warnings

import torch


class SymmMemAllReduce:
    """One symmetric buffer of ``max_bytes`` per rank of ``group`` on ``device``, for tensors of ``dtype``."""

    def __init__(self, group, device: torch.device, dtype: torch.dtype, max_bytes: int):
        import torch.distributed as dist
        import torch.distributed._symmetric_memory as symm_mem
        if not hasattr(torch.ops.symm_mem, "one_shot_all_reduce_out"):
            raise RuntimeError(f"torch {torch.__version__} has no symm_mem.one_shot_all_reduce_out")
        group = group if group is not None else dist.group.WORLD
        self.group_name = group.group_name
        if hasattr(symm_mem, "enable_symm_mem_for_group"):
            # Required before a rendezvous by older torch; deprecated (not needed, a FutureWarning) by newer ones.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                symm_mem.enable_symm_mem_for_group(self.group_name)
        self.dtype = dtype
        self.max_numel = max_bytes // dtype.itemsize
        self.buffer = symm_mem.empty(self.max_numel, dtype=dtype, device=device)
        symm_mem.rendezvous(self.buffer, self.group_name)     # every rank of the group, together

    def eligible(self, x: torch.Tensor) -> bool:
        return x.dtype == self.dtype and x.numel() <= self.max_numel and x.is_contiguous()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        staged = self.buffer[:x.numel()]
        staged.copy_(x.view(-1))
        torch.ops.symm_mem.one_shot_all_reduce_out(staged, "sum", self.group_name, x.view(-1))
        return x
