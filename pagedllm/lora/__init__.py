"""LoRA adapters (vLLM's multi-LoRA): ``LoRARequest`` names an adapter per request; ``peft`` reads and checks PEFT
adapter folders; ``layers.LoRASlots`` holds one linear layer's resident adapters, stacked, and adds their deltas per
token; ``manager.LoRAManager`` (the worker's) loads adapters, keeps them in CPU memory and in the ``max_loras`` slots,
and turns a step's adapter per request into the per-token slot mask the model reads from its ``ForwardBatch``."""
from pagedllm.lora.request import LoRARequest

__all__ = ["LoRARequest"]
