"""The in-place Triton rotary kernel against the eager rotary path (skipped without CUDA)."""
import pytest
import torch

if not torch.cuda.is_available():
    pytest.skip("needs CUDA", allow_module_level=True)
pytest.importorskip("triton")

from transformers import LlamaConfig  # noqa: E402

from pagedllm.kernels.triton_rotary import rotary_inplace  # noqa: E402
from pagedllm.model.layers.rotary import RotaryEmbedding  # noqa: E402


@pytest.mark.parametrize("hq,hkv,d", [(28, 4, 128), (12, 2, 128), (9, 3, 64), (16, 16, 64)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_rotary_matches_eager(hq, hkv, d, dtype):
    cfg = LlamaConfig(hidden_size=hq * d, num_attention_heads=hq, num_key_value_heads=hkv, head_dim=d,
                      rope_theta=1e6)
    rope = RotaryEmbedding(cfg, d, 4096).cuda()
    t = 77
    qkv = torch.randn(t, (hq + 2 * hkv) * d, device="cuda", dtype=dtype)
    q = qkv[:, :hq * d].view(t, hq, d)                 # strided views of a fused QKV, as in the model
    k = qkv[:, hq * d:(hq + hkv) * d].view(t, hkv, d)
    v_before = qkv[:, (hq + hkv) * d:].clone()
    pos = torch.randint(0, 4096, (t,), device="cuda")
    q_ref, k_ref = rope._rotate(q.float(), rope.cos[pos].unsqueeze(1), rope.sin[pos].unsqueeze(1)), \
        rope._rotate(k.float(), rope.cos[pos].unsqueeze(1), rope.sin[pos].unsqueeze(1))
    rotary_inplace(pos, q, k, rope.cos, rope.sin)
    tol = 1e-2 if dtype == torch.bfloat16 else 1e-5
    assert (q.float() - q_ref).norm() / q_ref.norm() < tol
    assert (k.float() - k_ref).norm() / k_ref.norm() < tol
    assert torch.equal(qkv[:, (hq + hkv) * d:], v_before)     # V untouched
