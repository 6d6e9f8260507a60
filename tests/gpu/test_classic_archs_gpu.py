"""GPT-NeoX, Phi, StableLM, Starcoder2, GPTBigCode and Falcon (model/models/layernorm_decoder.py) on a CUDA GPU
against HF transformers on the same GPU (skipped without CUDA): test_engine_gpu.py's checks over these families'
tiny random models. fp32 on the torch backend gives HF fp32's greedy tokens; bf16 through the Triton kernels, eagerly
and in CUDA graphs (full decode and piecewise prompt steps), with the fused rotary decode (partial rotary: each
family rotates part of its heads, Phi-2's 32 of 80 dims), chunked prefill and prefix-cache hits, stays HF-greedy up
to bf16 near-ties. The gate_up SiLU epilogue applies to StableLM only (the others' MLPs are not gated: nothing to
fuse); its check is that it changes no token."""
import pytest
import torch

if not torch.cuda.is_available():
    pytest.skip("needs CUDA", allow_module_level=True)
pytest.importorskip("triton")

import transformers  # noqa: E402
from test_engine_gpu import (hf_greedy, hf_model, prompts, test_bf16_chunked_prefill_and_prefix_cache,  # noqa: E402
                             test_bf16_piecewise_graphs_carry_prompt_steps, test_bf16_triton_greedy_agrees_with_hf,
                             test_fp32_torch_backend_matches_hf, test_fused_rope_decode_gives_the_same_tokens,
                             test_gate_up_silu_epilogue_gives_the_same_tokens)

# test_engine_gpu's fixtures and tests, run here over this module's ``model_dir``.
__all__ = ["hf_greedy", "hf_model", "prompts", "test_bf16_chunked_prefill_and_prefix_cache",
           "test_bf16_piecewise_graphs_carry_prompt_steps", "test_bf16_triton_greedy_agrees_with_hf",
           "test_fp32_torch_backend_matches_hf", "test_fused_rope_decode_gives_the_same_tokens",
           "test_gate_up_silu_epilogue_gives_the_same_tokens"]

_TOKENS = dict(vocab_size=2048, pad_token_id=0, eos_token_id=2, bos_token_id=1)
_COMMON = dict(_TOKENS, hidden_size=256, num_hidden_layers=3, num_attention_heads=4, max_position_embeddings=1024)

CONFIGS = {
    # parallel residual with two LayerNorms, a quarter of each 64-dim head rotated, untied embed_out
    "gpt_neox": lambda: transformers.GPTNeoXConfig(**_COMMON, intermediate_size=1024, rotary_pct=0.25),
    # Phi-2's head: 80 dims (not a power of two), 32 rotated; Q/K LayerNorms; biased LM head
    "phi": lambda: transformers.PhiConfig(**dict(_COMMON, hidden_size=320), intermediate_size=1280,
                                          partial_rotary_factor=0.4, qk_layernorm=True),
    # gated SiLU MLP (the gate_up epilogue), per-head Q/K LayerNorms, q/k/v bias, GQA, parallel residual
    "stablelm": lambda: transformers.StableLmConfig(**_COMMON, intermediate_size=512, num_key_value_heads=2,
                                                    use_qkv_bias=True, qk_layernorm=True,
                                                    use_parallel_residual=True),
    # GQA, biases, a 32-token window on every layer (the prompts pass it)
    "starcoder2": lambda: transformers.Starcoder2Config(**_COMMON, intermediate_size=1024, num_key_value_heads=2,
                                                        sliding_window=32, tie_word_embeddings=False),
    # learned positions (no rotary: the fused rotary decode stays off), one KV head
    "gpt_bigcode": lambda: transformers.GPTBigCodeConfig(**_TOKENS, n_embd=256, n_layer=3, n_head=4,
                                                         n_positions=1024, tie_word_embeddings=False),
    # the new decoder architecture: 2 KV groups, ln_attn / ln_mlp
    "falcon": lambda: transformers.FalconConfig(**_COMMON, new_decoder_architecture=True, num_kv_heads=2,
                                                tie_word_embeddings=False),
    # falcon-7b's: multi-query, attention and MLP in parallel from one LayerNorm
    "falcon-7b-style": lambda: transformers.FalconConfig(**_COMMON, tie_word_embeddings=False),
}


@pytest.fixture(scope="module", params=list(CONFIGS))
def model_dir(request, tmp_path_factory):
    torch.manual_seed(1234)
    cfg = CONFIGS[request.param]()
    cfg.architectures = [type(cfg).__name__.replace("Config", "ForCausalLM")]
    model = transformers.AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    # Sharper logits than the tiny default init, so greedy paths have clear margins (GPT-NeoX's head is embed_out).
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(8.0)
    path = tmp_path_factory.mktemp(request.param)
    model.save_pretrained(path)
    return str(path)
