"""The start-up memory plan: how the device's memory splits into weights, activations, CUDA graphs and the KV cache,
and the errors when something does not fit.

All arithmetic is here, in one pure function of byte counts (no torch, no device), so the messages can be tested
word for word on made-up numbers. The model runner measures the inputs (weights after loading, the activation peak
of the profiling forward at the largest batch, memory held by others) and calls ``plan_kv_cache``; the engine's
start-up log prints ``MemoryPlan.describe()``.
"""
from __future__ import annotations

from dataclasses import dataclass

GIB = 1 << 30

def gib(num_bytes: float) -> str:
    return f"{num_bytes / GIB:.2f} GiB"


@dataclass
class MemoryPlan:
    """Where the memory goes. Byte counts; ``None`` where not measured (the CPU has no profiling forward; the
    CUDA-graph pool is only known after capture)."""
    weights_bytes: int
    kv_cache_bytes: int             # what the KV cache gets: num_blocks * bytes_per_block
    num_blocks: int
    block_size: int
    bytes_per_block: int            # all layers, K and V (K once where V is the key: DeepSeek's MLA)
    max_model_len: int
    max_num_seqs: int
    kv_cache_dtype: str             # "auto" (the model's dtype) or an fp8 name
    sized_by: str                   # which setting decided the size, in words
    total_bytes: int | None = None  # the device's memory (GPU)
    budget_bytes: int | None = None  # total * gpu_memory_utilization
    activation_peak_bytes: int | None = None   # the profiling forward's peak above the weights
    non_torch_bytes: int | None = None          # CUDA context, other processes
    cuda_graph_bytes: int | None = None
    cpu_offload_bytes: int = 0                  # weights kept in CPU memory (cpu_offload_gb)
    num_swap_blocks: int = 0                    # CPU blocks: swap_space plus kv_offloading_size
    num_offload_blocks: int = 0                 # of those, kv_offloading_size's (the prefix cache's CPU tier)

    @property
    def num_tokens(self) -> int:
        return self.num_blocks * self.block_size

    @property
    def max_concurrency(self) -> float:
        """How many max_model_len sequences the KV cache holds at once (vLLM's "Maximum concurrency")."""
        return self.num_tokens / self.max_model_len

    def describe(self) -> list[str]:
        """The plan as lines for the start-up log block."""
        lines = []
        if self.total_bytes is not None and self.budget_bytes is not None:
            lines.append(f"device {gib(self.total_bytes)}, budget {gib(self.budget_bytes)} "
                         f"(gpu_memory_utilization)")
        weights = f"weights {gib(self.weights_bytes)}"
        if self.cpu_offload_bytes:
            weights += f" (+ {gib(self.cpu_offload_bytes)} offloaded to CPU memory, streamed per layer)"
        lines.append(weights)
        lines.append("activation peak " + (gib(self.activation_peak_bytes) if self.activation_peak_bytes is not None
                                           else "not measured (no profiling forward on this device)"))
        if self.non_torch_bytes:
            lines.append(f"other (CUDA context, other processes) {gib(self.non_torch_bytes)}")
        if self.cuda_graph_bytes is not None:
            lines.append(f"CUDA-graph pool {gib(self.cuda_graph_bytes)}")
        dtype = "model dtype" if self.kv_cache_dtype == "auto" else self.kv_cache_dtype
        lines.append(f"KV cache {gib(self.kv_cache_bytes)} ({dtype}; sized by {self.sized_by}): {self.num_blocks} "
                     f"blocks x {self.block_size} = {self.num_tokens} tokens; max concurrency at max_model_len="
                     f"{self.max_model_len}: {self.max_concurrency:.2f}x (max_num_seqs {self.max_num_seqs})")
        if self.num_swap_blocks:
            offload = (f", of which {self.num_offload_blocks} the prefix cache's CPU tier (kv_offloading_size)"
                       if self.num_offload_blocks else "")
            lines.append(f"CPU KV blocks {gib(self.num_swap_blocks * self.bytes_per_block)} of CPU memory: "
                         f"{self.num_swap_blocks} blocks (swap space{offload})")
        return lines


def weights_do_not_fit_message(weights_bytes: int, budget_bytes: int, total_bytes: int,
                               gpu_memory_utilization: float) -> str:
    """The error when the weights alone exceed the budget: by how much, and what to change."""
    short = weights_bytes - budget_bytes
    return (f"The model's weights need {gib(weights_bytes)}, more than the {gib(budget_bytes)} that "
            f"gpu_memory_utilization={gpu_memory_utilization} allows of the device's {gib(total_bytes)}: "
            f"{gib(short)} short, before any activation or KV cache. Keep part of the weights in CPU memory with "
            f"cpu_offload_gb (at least {short / GIB:.1f}, more to leave room for the KV cache), load a quantized "
            f"checkpoint (quantization), or raise gpu_memory_utilization.")


def plan_kv_cache(*, weights_bytes: int, bytes_per_block: int, block_size: int, max_model_len: int,
                  max_num_seqs: int, kv_cache_dtype: str = "auto",
                  total_bytes: int | None = None, gpu_memory_utilization: float | None = None,
                  activation_peak_bytes: int | None = None, non_torch_bytes: int = 0,
                  kv_cache_memory_bytes: int | None = None, kv_cache_memory_source: str | None = None,
                  num_gpu_blocks_override: int | None = None,
                  cpu_offload_bytes: int = 0, swap_space_bytes: int = 0,
                  kv_offloading_bytes: int = 0, fit_max_model_len: bool = False) -> MemoryPlan:
    """Size the KV cache, or raise ``ValueError`` saying what does not fit and what to change.

    Precedence: ``num_gpu_blocks_override`` (a block count), then ``kv_cache_memory_bytes`` (a size), then the GPU
    budget ``total_bytes * gpu_memory_utilization - weights - activation peak - non-torch memory``. The block count
    is capped at what ``max_num_seqs`` sequences of ``max_model_len`` tokens can ever use (+1), so a large budget
    does not allocate memory no schedule can fill. ``fit_max_model_len`` (max_model_len='auto'): a cache shorter
    than one max_model_len sequence is no error; the engine cuts max_model_len to it."""
    budget = None
    if total_bytes is not None and gpu_memory_utilization is not None:
        budget = int(total_bytes * gpu_memory_utilization)
        if weights_bytes > budget:
            raise ValueError(weights_do_not_fit_message(weights_bytes, budget, total_bytes, gpu_memory_utilization))
    blocks_per_seq = -(-max_model_len // block_size)
    cap = max_num_seqs * blocks_per_seq + 1
    if num_gpu_blocks_override is not None:
        num_blocks, sized_by = int(num_gpu_blocks_override), f"num_gpu_blocks_override={num_gpu_blocks_override}"
        available = num_blocks * bytes_per_block
        size_knob = "num_gpu_blocks_override"
    else:
        if kv_cache_memory_bytes is not None:
            available = int(kv_cache_memory_bytes)
            sized_by = kv_cache_memory_source or f"kv_cache_memory_bytes={kv_cache_memory_bytes}"
            size_knob = "kv_cache_memory_gb / kv_cache_memory_bytes"
        else:
            assert budget is not None, "the GPU budget needs total_bytes and gpu_memory_utilization"
            peak = activation_peak_bytes or 0
            available = budget - weights_bytes - peak - max(non_torch_bytes, 0)
            sized_by = f"gpu_memory_utilization={gpu_memory_utilization}"
            size_knob = "gpu_memory_utilization"
            if available <= 0:
                raise ValueError(
                    f"No available memory for the cache blocks: of the {gib(budget)} that gpu_memory_utilization="
                    f"{gpu_memory_utilization} allows, the weights take {gib(weights_bytes)}, the activation peak "
                    f"of the profiling forward {gib(peak)} and other memory {gib(max(non_torch_bytes, 0))} "
                    f"({gib(-available)} short). Try increasing gpu_memory_utilization, lowering "
                    f"max_num_batched_tokens (a smaller activation peak), or shrinking the weights (quantization, "
                    f"cpu_offload_gb).")
        num_blocks = min(cap, available // bytes_per_block)
        if num_blocks < available // bytes_per_block:    # the memory given holds more than could ever be used
            sized_by += (f", capped at what max_num_seqs={max_num_seqs} sequences of max_model_len={max_model_len} "
                         f"can use")
    needed_blocks = blocks_per_seq
    if num_blocks < needed_blocks and not (fit_max_model_len and num_blocks > 0):
        # vLLM's message (kv_cache_utils.check_enough_kv_cache_memory), with the fitting length in blocks.
        fits = num_blocks * block_size
        raise ValueError(
            f"To serve at least one request with the model's max seq len ({max_model_len}), "
            f"{gib(needed_blocks * bytes_per_block)} KV cache is needed, which is larger than the available KV cache "
            f"memory ({gib(available)}, {num_blocks} blocks of {block_size} tokens). Based on the available memory, "
            f"the estimated maximum model length is {fits}. Try increasing {size_knob} or decreasing max_model_len "
            f"when initializing the engine, store the KV cache in kv_cache_dtype='fp8' (half the bytes per token), or "
            f"shrink the weights (quantization, cpu_offload_gb).")
    if num_blocks < needed_blocks:       # fit_max_model_len: the length the cache holds (the start-up log's)
        max_model_len = num_blocks * block_size
    num_offload_blocks = int(kv_offloading_bytes) // bytes_per_block
    return MemoryPlan(weights_bytes=weights_bytes, kv_cache_bytes=num_blocks * bytes_per_block, num_blocks=num_blocks,
                      block_size=block_size, bytes_per_block=bytes_per_block, max_model_len=max_model_len,
                      max_num_seqs=max_num_seqs, kv_cache_dtype=kv_cache_dtype, sized_by=sized_by,
                      total_bytes=total_bytes, budget_bytes=budget, activation_peak_bytes=activation_peak_bytes,
                      non_torch_bytes=non_torch_bytes or None, cpu_offload_bytes=cpu_offload_bytes,
                      num_swap_blocks=int(swap_space_bytes) // bytes_per_block + num_offload_blocks,
                      num_offload_blocks=num_offload_blocks)
