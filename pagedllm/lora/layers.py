"""One linear layer's resident adapters, stacked over the ``max_loras`` slots, and the per-token LoRA delta."""
from __future__ import annotations

from typing import NamedTuple

import torch

# Up to this many tokens (decode-sized steps) a GPU step's deltas take the Triton kernels; above it (prefill) the
# torch form's GEMMs on the tensor cores, whose cost does not grow with the token count as one program per token.
_TRITON_MAX_TOKENS = 64


class LoRAStep(NamedTuple):
    """Which adapter each token of a step runs with, in the two forms the deltas read: ``mask`` [T, max_loras] in
    the adapters' dtype (1 at the token's slot, a row of zeros for the base model; the torch form) and ``slots`` [T]
    int32 (the slot, -1 for the base model; the Triton kernels of decode-sized steps)."""
    mask: torch.Tensor
    slots: torch.Tensor


class LoRASlots:
    """A (possibly fused) linear layer's adapter weights. A fused layer (QKV, gate+up) has one part per projection
    of ``part_sizes``; each part of each slot holds A [max_rank, in] and B [part rows, max_rank] (zero-padded to
    ``max_rank``, zero when the adapter leaves the part alone, scaling folded into B).

    The delta of a step is two matmuls over every slot at once, whatever the mix of adapters:
    ``xa = x @ A_all^T`` ([T, slots * parts * rank]), each token's columns of other slots zeroed by the step's
    ``mask`` ([T, max_loras], 1 at the token's slot, all zero for the base model), then ``y += xa @ B_all^T``, where
    B_all is block-structured (part p's rows read only part p's rank columns). Shapes do not depend on the batch's
    adapters: no host synchronisation, no per-adapter loop. On a GPU, decode-sized steps run the same arithmetic in
    the Triton kernels of pagedllm/kernels/triton_lora.py instead."""

    def __init__(self, in_features: int, part_sizes: list[int], max_loras: int, max_rank: int, dtype: torch.dtype,
                 device: torch.device):
        self.in_features, self.part_sizes = in_features, list(part_sizes)
        self.max_loras, self.max_rank = max_loras, max_rank
        self.num_parts = len(part_sizes)
        self.part_offsets = [sum(part_sizes[:i]) for i in range(self.num_parts)]
        cols = max_loras * self.num_parts * max_rank
        self.a = torch.zeros(cols, in_features, dtype=dtype, device=device)
        self.b = torch.zeros(sum(part_sizes), cols, dtype=dtype, device=device)

    def _cols(self, slot: int, part: int) -> slice:
        start = (slot * self.num_parts + part) * self.max_rank
        return slice(start, start + self.max_rank)

    def clear(self, slot: int) -> None:
        cols = slice(slot * self.num_parts * self.max_rank, (slot + 1) * self.num_parts * self.max_rank)
        self.a[cols] = 0
        self.b[:, cols] = 0

    def set(self, slot: int, part: int, a: torch.Tensor, b: torch.Tensor) -> None:
        """Part ``part`` of ``slot``: A [r, in], B [part rows, r] (scaled), r <= max_rank."""
        r = a.shape[0]
        cols = self._cols(slot, part)
        rows = slice(self.part_offsets[part], self.part_offsets[part] + self.part_sizes[part])
        self.a[cols] = 0
        self.a[cols.start:cols.start + r] = a.to(self.a.device, self.a.dtype)
        self.b[rows, cols] = 0
        self.b[rows, cols.start:cols.start + r] = b.to(self.b.device, self.b.dtype)

    def add_delta(self, x: torch.Tensor, y: torch.Tensor, step: LoRAStep) -> torch.Tensor:
        """``y`` plus each token's adapter delta. On a GPU, up to ``_TRITON_MAX_TOKENS`` tokens: two Triton
        kernels that read only each token's own slot (pagedllm/kernels/triton_lora.py); else the torch form."""
        tokens = step.slots.shape[0]
        if y.is_cuda and tokens <= _TRITON_MAX_TOKENS and self.num_parts <= 3:
            from pagedllm.kernels.triton_lora import lora_delta_     # Triton only where a GPU runs it
            y2 = y.reshape(tokens, -1)
            if not y2.is_contiguous():
                y2 = y2.contiguous()
            return lora_delta_(x.reshape(tokens, self.in_features), y2, self.a, self.b, step.slots,
                               self.part_offsets, self.max_rank).view(y.shape)
        mask = step.mask
        x2 = x.reshape(-1, self.in_features).to(self.a.dtype)
        xa = (x2 @ self.a.t()).view(x2.shape[0], self.max_loras, -1) * mask.unsqueeze(-1)
        xa = xa.view(x2.shape[0], -1)
        if y.dtype == self.b.dtype:
            # The add in the expand GEMM's epilogue: one kernel fewer a projection (measured neutral on an H100 at
            # decode sizes, docs/perf.md session 26; those now take the Triton kernels).
            return torch.addmm(y.reshape(-1, y.shape[-1]), xa, self.b.t()).view(y.shape)
        return y + (xa @ self.b.t()).view(y.shape).to(y.dtype)

    # ---- a layer absorbed per head (DeepSeek's MLA kv_b_proj) ------------------------------------------------------
    # Its weight never multiplies activations in the absorbed form: each head's rows are split, W_h = [W_UK_h; W_UV_h]
    # (row ranges ``rows``), and used as q_nope_h^T W_UK_h and W_UV_h o_h. An adapter's W_h + B_h A takes the same
    # two forms: q_nope_h^T B_UK_h A and B_UV_h (A o_h), summed over every slot with the other slots' columns
    # masked, as add_delta.

    def _masked(self, t: torch.Tensor, step: LoRAStep, token_dim: int) -> torch.Tensor:
        """``t`` [..., cols] with each token's columns of other slots zeroed (tokens along ``token_dim``)."""
        shape = t.shape
        mask = step.mask.view(*([1] * token_dim), step.mask.shape[0], *([1] * (t.dim() - 2 - token_dim)),
                              self.max_loras, 1)
        return (t.view(*shape[:-1], self.max_loras, -1) * mask).view(shape)

    def head_transposed_delta(self, y: torch.Tensor, num_heads: int, rows: slice, step: LoRAStep) -> torch.Tensor:
        """``y`` [T, heads, len(rows)] -> [T, heads, in]: each head's ``y_h^T B_h[rows] A`` (the adapter's part of
        ``y_h^T W_h[rows]``, the absorbed query's W_UK^T q_nope)."""
        b = self.b.view(num_heads, -1, self.b.shape[1])[:, rows]                 # [H, len(rows), cols]
        t = self._masked(torch.bmm(y.transpose(0, 1).to(b.dtype), b), step, 1)   # [H, T, cols]
        return (t @ self.a).transpose(0, 1)

    def head_delta(self, x: torch.Tensor, num_heads: int, rows: slice, step: LoRAStep) -> torch.Tensor:
        """``x`` [T, heads, in] -> [T, heads, len(rows)]: each head's ``B_h[rows] A x_h`` (the adapter's part of
        ``W_h[rows] x_h``, the absorbed value output's W_UV o)."""
        u = self._masked(x.to(self.a.dtype) @ self.a.t(), step, 0)               # [T, H, cols]
        b = self.b.view(num_heads, -1, self.b.shape[1])[:, rows]                 # [H, len(rows), cols]
        return torch.bmm(u.transpose(0, 1), b.transpose(1, 2)).transpose(0, 1)
