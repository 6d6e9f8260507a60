"""Pipeline parallel in a model file: each stage builds only its own decoder layers (vLLM's ``make_layers`` and
``PPMissingLayer``), the embedding on the first stage, the final norm and the LM head on the last. A layer a stage
does not hold is a parameterless placeholder, so the layer indices (and the checkpoint's names) stay those of the
whole model and the weight loader skips the tensors of layers held elsewhere."""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from pagedllm.distributed import get_pp_layer_range


class PPMissingLayer(nn.Identity):
    """A module held by another pipeline stage: no parameters; calling it is a bug."""

    def forward(self, *args, **kwargs):
        raise RuntimeError("PPMissingLayer was called: this module belongs to another pipeline stage.")


def make_layers(num_layers: int, layer_fn: Callable[[int], nn.Module]) -> tuple[int, int, nn.ModuleList]:
    """(start, end, layers): layer ``i`` of this stage's ``[start, end)`` is ``layer_fn(i - start)`` (its index
    among the stage's layers: the stage's KV cache has one tensor per layer it holds), the others ``PPMissingLayer``;
    the list keeps the whole model's positions, so parameter names match the checkpoint's."""
    start, end = get_pp_layer_range(num_layers)
    layers = nn.ModuleList(layer_fn(i - start) if start <= i < end else PPMissingLayer() for i in range(num_layers))
    return start, end, layers


def missing_prefixes(model: nn.Module) -> tuple[str, ...]:
    """Name prefixes (``"model.layers.7."``) of the modules another stage holds: their checkpoint tensors are
    skipped."""
    return tuple(name + "." for name, module in model.named_modules() if isinstance(module, PPMissingLayer))


class IntermediateTensors:
    """A non-last stage's output, the next stage's input: the hidden states and the residual stream."""
    __slots__ = ("hidden", "residual")

    def __init__(self, hidden: torch.Tensor, residual: torch.Tensor | None):
        self.hidden, self.residual = hidden, residual


def run_stage_layers(layers, positions: torch.Tensor, hidden: torch.Tensor, residual: torch.Tensor | None, batch,
                     last_stage: bool, final_norm: Callable) -> torch.Tensor | IntermediateTensors:
    """A pre-norm decoder stage over the residual stream (Llama, DeepSeek, ChatGLM): ``layers`` each take and return
    ``(hidden, residual)``; a non-last stage hands both on, the last returns ``final_norm(hidden, residual)``'s
    normed output (the norm adds the residual, RMSNorm's contract)."""
    for layer in layers:
        hidden, residual = layer(positions, hidden, residual, batch)
    if not last_stage:
        return IntermediateTensors(hidden, residual)
    return final_norm(hidden, residual)[0]
