"""Activations of the MLPs."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SiluAndMul(nn.Module):
    """x = [gate | up] -> silu(gate) * up (the fused gate_up projection's output)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.is_cuda:   # one fused Triton kernel instead of three eager ones
            from pagedllm.kernels.triton_ops import silu_and_mul
            return silu_and_mul(x)
        gate, up = x.chunk(2, dim=-1)
        return F.silu(gate).mul_(up)   # in place on silu's fresh output: one [T, I] tensor less per layer


class GeluTanhAndMul(nn.Module):
    """x = [gate | up] -> gelu_tanh(gate) * up (Gemma's ``gelu_pytorch_tanh`` gating; eager on every device)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = x.chunk(2, dim=-1)
        return F.gelu(gate, approximate="tanh") * up


# The plain (ungated) MLP activations by their HF config names (``hidden_act`` / ``activation_function``):
# OPT, GPT-2, GPT-NeoX, Phi, Starcoder2, GPTBigCode, Falcon. "gelu_new" is HF's tanh formula written out, the same as
# PyTorch's tanh approximation up to fp32 rounding.
_ACTIVATIONS = {
    "relu": F.relu,
    "relu2": lambda x: torch.square(F.relu(x)),      # Arcee's ReLU squared (HF's ReLUSquaredActivation)
    "gelu": F.gelu,
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "silu": F.silu,
    "swish": F.silu,
}


def activation_fn(name: str, field: str):
    """The activation HF names ``name``; ``field`` (e.g. "OPT activation_function") names the config field in the
    error for one we do not have."""
    if name not in _ACTIVATIONS:
        raise ValueError(f"{field} {name!r} is not supported; supported: {', '.join(sorted(_ACTIVATIONS))}.")
    return _ACTIVATIONS[name]
