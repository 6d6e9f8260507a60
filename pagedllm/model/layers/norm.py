"""RMSNorm (optionally fused with the residual add) and LayerNorm."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pagedllm.model.layers.linear import default_weight_loader


class RMSNorm(nn.Module):
    def __init__(self, hidden_size: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(hidden_size), requires_grad=False)
        self.weight.weight_loader = default_weight_loader

    def _norm(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32:
            # One fused op instead of eight: bitwise equal to HF's formula in fp32, 106 -> 54 us per call at batch 1
            # on the 2-core EPYC, 2 calls per layer (docs/perf.md, issue 19).
            return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)
        # HF's LlamaRMSNorm order: normalised in fp32, cast back, then the weight multiply (token parity). The fp32
        # normalisation is the fused op (bitwise x * rsqrt(mean(x^2) + eps); tests/unit/test_layers.py compares
        # with HF's module), so 4 eager ops a call instead of 8 (issue 19, session 20).
        return self.weight * F.rms_norm(x.float(), (x.shape[-1],), None, self.eps).to(x.dtype)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None
                ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Without ``residual``: norm(x). With it: (norm(x + residual), x + residual)."""
        if x.is_cuda:   # one fused Triton kernel instead of ~8 eager ones
            from pagedllm.kernels.triton_ops import rms_norm
            out, new_residual = rms_norm(x, self.weight, self.eps, residual)
            return out if residual is None else (out, new_residual)
        if residual is None:
            return self._norm(x)
        x = x + residual
        return self._norm(x), x


class LayerNorm(nn.LayerNorm):
    def __init__(self, hidden_size: int, eps: float = 1e-5, bias: bool = True):
        super().__init__(hidden_size, eps=eps, bias=bias)
        self.weight.requires_grad_(False)
        self.weight.weight_loader = default_weight_loader
        if self.bias is not None:
            self.bias.requires_grad_(False)
            self.bias.weight_loader = default_weight_loader

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None
                ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Without ``residual``: norm(x). With it: (norm(x + residual), x + residual), RMSNorm's contract, so a
        decoder that carries the residual stream between layers (llama.py) takes either norm."""
        if residual is None:
            return super().forward(x)
        x = x + residual
        return super().forward(x), x


class HeadLayerNorm(nn.Module):
    """A bias-free LayerNorm over each head's dims with a weight of its own per head (Cohere's and StableLM's Q / K
    norms: the checkpoint's ``[heads, head_dim]`` weight, or one ``[head_dim]`` tensor a head loaded as part ``h``, of which this rank holds ``num_heads`` rows from ``first_head``).
    Normalised and scaled in fp32, rounded once, as HF's CohereLayerNorm."""

    def __init__(self, num_heads: int, head_dim: int, eps: float, first_head: int = 0):
        super().__init__()
        self.eps, self.first_head = eps, first_head
        self.weight = nn.Parameter(torch.ones(num_heads, head_dim), requires_grad=False)
        self.weight.weight_loader = self._load

    def _load(self, param: torch.Tensor, loaded: torch.Tensor, head: int | None = None) -> None:
        if head is None:
            default_weight_loader(param, loaded[self.first_head:self.first_head + param.shape[0]])
            return
        # One head's weight (StableLM's checkpoints hold one tensor a head, ``norms.<h>.weight``): its row here,
        # if this rank holds that head.
        local = head - self.first_head
        if 0 <= local < param.shape[0]:
            default_weight_loader(param.data[local], loaded)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [T, heads, head_dim]."""
        return (F.layer_norm(x.float(), (x.shape[-1],), eps=self.eps) * self.weight.float()).to(x.dtype)
