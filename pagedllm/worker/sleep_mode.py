"""Sleep mode (vLLM's ``LLM.sleep`` / ``wake_up``): a worker gives back the device memory of its weights and its KV
cache without a restart, and takes it again on wake-up.

- Level 1: the weights are copied to (pinned) CPU memory and their device storage freed; the KV cache is freed (its
  contents are forgotten). On the CPU device the weights already live in CPU memory and stay where they are.
- Level 2: the weights are dropped too; waking the "weights" up loads them again from the model's checkpoint
  (vLLM keeps the weights' device buffers but not their contents, and its users call ``reload_weights``; here the
  checkpoint is read again, so ``wake_up()`` alone gives the same model back).

CUDA graphs bake in the addresses of the weights, the KV cache and their own static buffers; every one of these moves
on wake-up (the caching allocator gives new addresses), so the graphs are dropped at sleep (their memory pool goes
too) and captured again once both the weights and the KV cache are back (``ModelRunner.wake_up``). vLLM keeps the
virtual addresses (cuMem) and replays the old graphs; capturing again costs the start-up's capture time instead.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch

MEMORY_TAGS = ("weights", "kv_cache")
# Level 0 pauses the scheduler only (vLLM's newer level); ``wake_up(tags=["scheduling"])`` resumes it.
ALL_TAGS = (*MEMORY_TAGS, "scheduling")
SLEEP_MODES = ("abort", "wait", "keep")


@contextlib.contextmanager
def kv_cache_pool(enabled: bool, device: torch.device) -> Iterator[object | None]:
    """With sleep mode on a GPU, the allocations made inside go to a CUDA memory pool of their own (yields it; None
    otherwise). Dropping the pool and its tensors, then ``empty_cache``, gives all of its segments back to the driver.
    From the shared pool, a KV tensor placed in a cached segment that live tensors also use stays reserved after it
    is freed: the GPU suite saw one sleep give back 31 MB of a 268 MB KV cache (H100, session 29)."""
    if not enabled or device.type != "cuda":
        yield None
        return
    pool = torch.cuda.MemPool()
    # use_mem_pool wants an index: a bare "cuda" device (the runner's) was a ValueError on the GPU (session 31).
    index = device.index if device.index is not None else torch.cuda.current_device()
    with torch.cuda.use_mem_pool(pool, device=index):
        yield pool


def check_sleep_level(level: int) -> None:
    if level not in (0, 1, 2):
        raise ValueError(f"sleep level must be 0 (pause scheduling), 1 (weights to CPU memory, KV cache freed) or 2 "
                         f"(weights and KV cache freed), got {level!r}.")


def check_sleep_enabled(enabled: bool, level: int) -> None:
    """vLLM needs ``enable_sleep_mode=True`` to free memory (level 0 only pauses the scheduler)."""
    if level > 0 and not enabled:
        raise ValueError("Sleep mode is not enabled: create the engine with enable_sleep_mode=True "
                         "(--enable-sleep-mode) to use sleep(level=1 or 2).")


def check_sleep_mode(mode: str) -> None:
    if mode not in SLEEP_MODES:
        raise ValueError(f"sleep mode must be one of {', '.join(SLEEP_MODES)} (what happens to the requests in "
                         f"flight), got {mode!r}.")


def check_wake_up_tags(tags: list[str] | None) -> set[str]:
    """The tags to wake up (None: all of them); an unknown tag is a ValueError naming the allowed ones."""
    if tags is None:
        return set(ALL_TAGS)
    if isinstance(tags, str) or not all(isinstance(t, str) for t in tags):
        raise ValueError(f"wake_up tags must be a list of strings among {list(ALL_TAGS)}, got {tags!r}.")
    unknown = sorted(set(tags) - set(ALL_TAGS))
    if unknown:
        raise ValueError(f"Unknown wake_up tag(s) {unknown}: the tags are {list(ALL_TAGS)}.")
    return set(tags)


def model_tensors(model: torch.nn.Module) -> Iterator[torch.Tensor]:
    """Every tensor the model holds, each once: parameters, buffers and tensors kept as plain attributes (packed or
    converted weights), as the same Python objects the layers use."""
    seen: set[int] = set()
    for module in model.modules():
        values = [*module._parameters.values(), *module._buffers.values()]
        for name, value in vars(module).items():
            if name in ("_parameters", "_buffers", "_modules"):
                continue
            values.extend(value if isinstance(value, (tuple, list)) else (value,))
        for t in values:
            if isinstance(t, torch.Tensor) and id(t) not in seen:
                seen.add(id(t))
                yield t


def tensor_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


class WeightsBackup:
    """Level 1 on a device that is not the CPU: each weight tensor's contents in pinned CPU memory, its device
    storage freed. The tensors stay the same Python objects (their ``.data`` is swapped), so every layer that holds
    one sees it again after ``restore``; tensors that shared storage share it again."""

    def __init__(self, model: torch.nn.Module):
        self.entries: list[tuple[torch.Tensor, torch.Tensor, tuple]] = []
        first: dict[tuple, torch.Tensor] = {}
        for t in model_tensors(model):
            if t.device.type == "cpu" or t.numel() == 0:
                continue
            key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.stride(), t.dtype)
            copy = first.get(key)
            if copy is None:
                copy = torch.empty(t.shape, dtype=t.dtype, device="cpu", pin_memory=True)
                copy.copy_(t)
                first[key] = copy
            self.entries.append((t, copy, key))
            t.data = torch.empty(0, dtype=t.dtype, device=t.device)
        self.bytes = tensor_bytes(first.values())

    def restore(self, device: torch.device) -> None:
        restored: dict[tuple, torch.Tensor] = {}
        for t, copy, key in self.entries:
            if key not in restored:
                restored[key] = copy.to(device, non_blocking=False)
            t.data = restored[key]
        self.entries = []
