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
