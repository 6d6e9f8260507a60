"""Tensor-parallel process-group state and collectives (torch.distributed; gloo on the CPU)."""
from pagedllm.distributed.parallel_state import (destroy_tensor_parallel, get_tp_rank, get_tp_size,
                                                 init_tensor_parallel, kv_head_range, tp_all_gather, tp_all_reduce)

__all__ = ["destroy_tensor_parallel", "get_tp_rank", "get_tp_size", "init_tensor_parallel", "kv_head_range",
           "tp_all_gather", "tp_all_reduce"]
