"""RotaryEmbedding (CPU) looks cos/sin up once per step: a reused, rewritten positions tensor must not get stale rows."""
import torch
import transformers

from pagedllm.model.layers.rotary import RotaryEmbedding, _adjacent_heads


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


def test_q_and_k_of_a_fused_qkv_rotate_in_one_pass_to_the_same_values():
    cfg = transformers.LlamaConfig(hidden_size=64, num_attention_heads=4, num_key_value_heads=2)
    rope = RotaryEmbedding(cfg, 16, 128)
    for tokens in (1, 3):
        qkv = torch.randn(tokens, (4 + 2 + 2) * 16)
        q, k, _ = qkv.split([64, 32, 32], dim=-1)
        q, k = q.view(-1, 4, 16), k.view(-1, 2, 16)
        positions = torch.arange(tokens) + 5
        assert _adjacent_heads(q, k) is not None and _adjacent_heads(k, q) is None
        fused = rope(positions, q, k)                                   # adjacent views: one pass
        separate = rope(positions, q.contiguous(), k.contiguous())      # separate tensors: two passes
        for a, b in zip(fused, separate):
            assert a.shape == b.shape and torch.equal(a, b)
        assert fused[0].view(tokens, 2, 2, 16).shape == (tokens, 2, 2, 16)   # the attention's GQA view still works


def test_whole_head_rotation_equals_the_rotate_half_formula_bitwise():
    # The CPU path's [x1, x2] * [cos, cos] + [x2, x1] * [-sin, sin] against the reference _rotate (HF's
    # rotate_half): same values, so fp32 tokens do not move.
    cfg = transformers.LlamaConfig(hidden_size=128, num_attention_heads=4, num_key_value_heads=2)
    rope = RotaryEmbedding(cfg, 32, 256)
    positions = torch.tensor([0, 3, 17, 200, 255])
    for dtype in (torch.float32, torch.bfloat16):
        q, k = torch.randn(5, 4, 32).to(dtype), torch.randn(5, 2, 32).to(dtype)
        cos, sin = rope.cos[positions].unsqueeze(1).to(dtype), rope.sin[positions].unsqueeze(1).to(dtype)
        rope._step = None
        rq, rk = rope(positions, q, k)
        assert torch.equal(rq, rope._rotate(q, cos, sin)) and torch.equal(rk, rope._rotate(k, cos, sin))
