"""The decode-step LoRA kernels (``pagedllm.kernels.triton_lora``) against the torch form of
``pagedllm.lora.layers.LoRASlots.add_delta`` (every slot's A and B, masked): random adapters in every slot, tokens
with and without one, fused layers of 1-3 parts of unequal sizes, ranks below the slots' padded rank, long K.

Runs on a CUDA GPU, or under ``TRITON_INTERPRET=1`` on CPU tensors (see tests/gpu/conftest.py).
"""
from __future__ import annotations

import pytest
import torch
from kernel_env import DEVICE, HALF, NEEDS_GPU_OR_INTERPRETER

triton = pytest.importorskip("triton")
pytestmark = NEEDS_GPU_OR_INTERPRETER

from pagedllm.kernels.triton_lora import lora_delta_  # noqa: E402
from pagedllm.lora.layers import LoRASlots, LoRAStep  # noqa: E402


def _slots(in_features, part_sizes, max_loras, max_rank, dtype, gen) -> LoRASlots:
    lora = LoRASlots(in_features, part_sizes, max_loras, max_rank, dtype, torch.device(DEVICE))
    for slot in range(max_loras):
        rank = max_rank if slot % 2 == 0 else max(1, max_rank // 2)      # a smaller adapter in a padded slot
        for part, rows in enumerate(part_sizes):
            lora.set(slot, part, torch.randn(rank, in_features, generator=gen) * 0.1,
                     torch.randn(rows, rank, generator=gen) * 0.1)
    return lora


@pytest.mark.parametrize("tokens, in_features, part_sizes, max_loras, max_rank", [
    (1, 64, [96], 1, 8),                       # one part, one slot
    (3, 256, [128, 32, 32], 2, 16),            # QKV-shaped, unequal parts
    (7, 2100, [80, 80], 3, 8),                 # gate/up; K split over three programs, K not a tile multiple
    (64, 96, [200], 4, 32),                    # the largest decode batch the kernels take
    (2, 300, [50], 2, 64),                     # a higher rank: narrower K slices
    (17, 200, [64, 16, 16], 2, 16),            # the tensor-core pair from 17 tokens: one token tile, padded
    (40, 1100, [48, 48], 4, 8),                # K split over programs, four slots, 64 columns a tile
    (64, 96, [70], 3, 64),                     # 192 slot columns: three column tiles; the expand pads to 256
    (100, 80, [40, 24], 2, 16),                # more tokens than one 64-row tile
    (33, 64, [32], 4, 128),                    # 512 slot columns, over the tile: the per-token pair again
])
@pytest.mark.parametrize("dtype", [torch.float32, HALF])
def test_kernels_equal_the_masked_torch_form(tokens, in_features, part_sizes, max_loras, max_rank, dtype):
    gen = torch.Generator().manual_seed(tokens * 7 + max_rank)
    lora = _slots(in_features, part_sizes, max_loras, max_rank, dtype, gen)
    x = torch.randn(tokens, in_features, generator=gen).to(DEVICE, dtype)
    y = torch.randn(tokens, sum(part_sizes), generator=gen).to(DEVICE, dtype)
    slots = torch.randint(-1, max_loras, (tokens,), generator=gen, dtype=torch.int32)
    slots[0] = max_loras - 1          # at least one token with an adapter, and (tokens > 1) one without
    if tokens > 1:
        slots[1] = -1
    mask = torch.zeros(tokens, max_loras)
    rows = torch.nonzero(slots >= 0).flatten()
    mask[rows, slots[rows].long()] = 1.0
    step = LoRAStep(mask.to(DEVICE, dtype), slots.to(DEVICE))
    # The reference in fp32 from the same (rounded) weights and inputs.
    ref = (y.float() + ((x.float() @ lora.a.float().t()).view(tokens, max_loras, -1) * step.mask.float()
                        .unsqueeze(-1)).view(tokens, -1) @ lora.b.float().t())
    out = lora_delta_(x, y.clone(), lora.a, lora.b, step.slots, lora.part_offsets, max_rank)
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(out.float(), ref, rtol=tol, atol=tol)
    # Tokens without an adapter keep their base output bit for bit.
    untouched = (slots < 0).to(DEVICE)
    assert torch.equal(out[untouched], y[untouched])
