"""Model layers on CPU: modules move between devices/dtypes like any nn.Module."""
import torch
from transformers import LlamaConfig

from pagedllm.model.layers.rotary import RotaryEmbedding


def test_rotary_module_converts_like_a_module_and_matches_rotate_half():
    # RotaryEmbedding once shadowed nn.Module._apply, which broke .to()/.cuda(); keep it convertible.
    cfg = LlamaConfig(hidden_size=64, num_attention_heads=4, head_dim=16)
    rope = RotaryEmbedding(cfg, 16, 128).to(torch.float64)
    assert rope.cos.dtype == torch.float64
    q = torch.randn(5, 4, 16, dtype=torch.float64)
    k = torch.randn(5, 2, 16, dtype=torch.float64)
    pos = torch.tensor([0, 1, 7, 64, 127])
    q_out, k_out = rope(pos, q, k)
    # HF's formulation: x * cos + rotate_half(x) * sin with cos/sin repeated over both halves
    cos = torch.cat([rope.cos[pos]] * 2, dim=-1)[:, None]
    sin = torch.cat([rope.sin[pos]] * 2, dim=-1)[:, None]
    rot = lambda x: torch.cat((-x[..., 8:], x[..., :8]), dim=-1)  # noqa: E731
    assert torch.allclose(q_out, q * cos + rot(q) * sin)
    assert torch.allclose(k_out, k * cos + rot(k) * sin)
    assert torch.equal(q_out[0], q[0])          # position 0 is the identity


def test_rms_norm_on_the_cpu_is_bitwise_hf_llama_rms_norm():
    """The CPU RMSNorm (fused with the residual add or not) gives bitwise HF transformers' LlamaRMSNorm in fp32 and
    in bf16, where HF casts back to bf16 before the weight multiply (a different rounding than a weighted fused
    norm: the tokens of a bf16 model would drift from HF's)."""
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    from pagedllm.model.layers.norm import RMSNorm
    g = torch.Generator().manual_seed(0)
    for dtype, rows, scale in [(torch.float32, 16, 3), (torch.bfloat16, 16, 3), (torch.bfloat16, 1, 1e-2),
                               (torch.bfloat16, 300, 100), (torch.float16, 16, 3), (torch.float16, 7, 0.05)]:
        ours, hf = RMSNorm(576, 1e-5), LlamaRMSNorm(576, eps=1e-5)
        weight = (torch.rand(576, generator=g) + 0.5).to(dtype)
        ours.weight.data, hf.weight.data = weight.clone(), weight.clone()
        x = (torch.randn(rows, 576, generator=g) * scale).to(dtype)
        residual = torch.randn(rows, 576, generator=g).to(dtype)
        with torch.no_grad():
            assert torch.equal(ours(x), hf(x)), dtype
            normed, summed = ours(x, residual)
            assert torch.equal(summed, x + residual) and torch.equal(normed, hf(x + residual)), dtype


def test_scaled_rope_tables_are_built_on_the_models_device():
    """The loader builds the model under ``torch.device(config.device)``. transformers' rope functions (llama3, yarn,
    longrope, linear: Llama 3.x, gpt-oss, DeepSeek, Phi-3.5) return CPU tensors; the tables must still land on the
    build device (on a GPU this was a CPU / CUDA mismatch at load). The meta device stands in for CUDA here."""
    rope_scalings = {
        "llama3": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                   "original_max_position_embeddings": 64},
        "yarn": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64},
        "linear": {"rope_type": "linear", "factor": 2.0},
    }
    for name, scaling in rope_scalings.items():
        cfg = LlamaConfig(hidden_size=64, num_attention_heads=4, head_dim=16, max_position_embeddings=256,
                          rope_scaling=dict(scaling, rope_theta=10000.0))
        with torch.device("meta"):
            rope = RotaryEmbedding(cfg, 16, 256)
        assert rope.cos.device.type == "meta" and rope.sin.device.type == "meta", name
        assert rope.cos.shape == (256, 8), name
