"""Model-parallel process-group state and collectives (torch.distributed: NCCL on CUDA, gloo on the CPU):
tensor-parallel groups per pipeline stage, and the stage-to-stage hand-off of hidden states."""
from pagedllm.distributed.parallel_state import (cleanup_dist_env_and_memory, destroy_distributed_environment,
                                                 destroy_model_parallel, destroy_tensor_parallel, distributed_backend,
                                                 enable_custom_all_reduce, get_pp_layer_range, get_pp_rank,
                                                 get_pp_size, get_tp_rank, get_tp_size, init_model_parallel,
                                                 init_tensor_parallel, is_first_pp_stage, is_last_pp_stage,
                                                 kv_head_range, pp_recv_hidden, pp_send_hidden, tp_all_gather,
                                                 tp_all_reduce, warm_up_tp_communicator)

__all__ = ["cleanup_dist_env_and_memory", "destroy_distributed_environment", "destroy_model_parallel",
           "destroy_tensor_parallel", "distributed_backend", "enable_custom_all_reduce", "get_pp_layer_range",
           "get_pp_rank", "get_pp_size", "get_tp_rank", "get_tp_size", "init_model_parallel", "init_tensor_parallel",
           "is_first_pp_stage", "is_last_pp_stage", "kv_head_range", "pp_recv_hidden", "pp_send_hidden",
           "tp_all_gather", "tp_all_reduce", "warm_up_tp_communicator"]
