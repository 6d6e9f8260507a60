"""RotaryEmbedding (CPU) looks cos/sin up once per step: a reused, rewritten positions tensor must not get stale rows."""
import torch
import transformers

from pagedllm.model.layers.rotary import RotaryEmbedding


def test_rotary_step_cache_follows_positions_values():
    cfg = transformers.LlamaConfig(hidden_size=64, num_attention_heads=4, num_key_value_heads=2)
    rope = RotaryEmbedding(cfg, 16, 128)
    fresh = RotaryEmbedding(cfg, 16, 128)
    q, k = torch.randn(3, 4, 16), torch.randn(3, 2, 16)
    positions = torch.tensor([0, 5, 9])
    for new in ([0, 5, 9], [1, 6, 10], [7, 7, 7]):
        positions.copy_(torch.tensor(new))                  # same tensor object, new values
        fresh._step = None
        for a, b in zip(rope(positions, q, k), fresh(positions, q, k)):
            assert torch.equal(a, b)
    for dtype in (torch.bfloat16, torch.float32):            # and a dtype change
        qd, kd = q.to(dtype), k.to(dtype)
        fresh._step = None
        for a, b in zip(rope(positions, qd, kd), fresh(positions, qd, kd)):
            assert a.dtype == dtype and torch.equal(a, b)
