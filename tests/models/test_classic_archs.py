"""The LayerNorm decoders (GPT-NeoX, Phi, StableLM, Starcoder2, GPTBigCode, Falcon: model/models/layernorm_decoder.py)
beyond the single-process HF parity of test_models_vs_hf.py: tensor parallel on the CPU (each rank its heads of the
fused QKV as cut at load, per-head Q/K norms, KV heads replicated) and pipeline parallel give HF fp32's greedy tokens,
and config fields we cannot honour are refused at load with a ValueError naming them."""
from __future__ import annotations

import pytest
import torch
import transformers

from pagedllm import LLM
from tests.models.test_models_vs_hf import (_COMMON, PROMPT_LENS, TinyModel, _assert_matches_hf, _generate,
                                            _prompts)


@pytest.mark.parametrize("arch", ["gpt_neox", "phi", "stablelm-12b-style", "falcon", "gpt_bigcode"])
def test_tensor_parallel_2_matches_hf(tmp_path, arch):
    """GPT-NeoX's per-head fused QKV, Phi's biased LM head (its bias split by vocabulary), StableLM's per-head Q/K
    norms (2 of 4 a rank) with one KV head a rank, Falcon's KV groups (one a rank), GPTBigCode's one KV head
    (replicated) and learned positions; chunked prefill."""
    tiny = TinyModel(arch, str(tmp_path))
    llm = tiny.llm(tensor_parallel_size=2, max_num_batched_tokens=16, max_model_len=128, kv_cache_memory_gb=0.01)
    assert llm.llm_engine.core.config.executor_backend == "mp"
    prompts = _prompts(PROMPT_LENS)
    _assert_matches_hf(tiny, prompts, _generate(llm, prompts))


def _save(path, config) -> str:
    config.architectures = [type(config).__name__.replace("Config", "ForCausalLM")]
    torch.manual_seed(0)
    transformers.AutoModelForCausalLM.from_config(config).save_pretrained(path)
    return str(path)


@pytest.mark.parametrize("config, message", [
    # falcon-rw-1b / falcon-rw-7b: ALiBi instead of rotary
    (lambda: transformers.FalconConfig(**_COMMON, alibi=True, multi_query=False, parallel_attn=False),
     "Falcon with alibi=True is not supported"),
    (lambda: transformers.FalconConfig(**_COMMON, new_decoder_architecture=True, num_kv_heads=2,
                                       parallel_attn=False), "parallel_attn=False is not supported"),
    (lambda: transformers.StableLmConfig(**_COMMON, intermediate_size=128, hidden_act="gelu"),
     "StableLM with hidden_act='gelu' is not supported"),
    (lambda: transformers.GPTNeoXConfig(**_COMMON, intermediate_size=128, hidden_act="quick_gelu"),
     "GPT-NeoX activation 'quick_gelu' is not supported"),
    (lambda: transformers.PhiConfig(**_COMMON, intermediate_size=128, head_dim=32),
     "Phi with head_dim=32 is not supported"),
], ids=["falcon-alibi", "falcon-new-arch-sequential", "stablelm-gelu", "gpt_neox-activation", "phi-head_dim"])
def test_unsupported_config_fields_are_named(tmp_path, config, message):
    path = _save(tmp_path, config())
    with pytest.raises(ValueError, match=message):
        LLM(path, skip_tokenizer_init=True, dtype="float32")


def test_pythia_checkpoint_buffers_are_skipped(tmp_path):
    """EleutherAI's Pythia checkpoints carry each layer's causal-mask buffers (``attention.bias``,
    ``attention.masked_bias``) and rotary ``inv_freq``: not weights, skipped at load (HF ignores them too)."""
    from safetensors.torch import load_file, save_file

    tiny = TinyModel("gpt_neox", str(tmp_path))
    file = tmp_path / "model.safetensors"
    tensors = load_file(str(file))
    for layer in range(2):
        prefix = f"gpt_neox.layers.{layer}.attention."
        tensors[prefix + "bias"] = torch.tril(torch.ones(1, 1, 8, 8, dtype=torch.bool))
        tensors[prefix + "masked_bias"] = torch.tensor(-1e9)
        tensors[prefix + "rotary_emb.inv_freq"] = torch.ones(2)
    save_file(tensors, str(file), metadata={"format": "pt"})
    prompts = _prompts(PROMPT_LENS[:2])
    _assert_matches_hf(tiny, prompts, _generate(tiny.llm(), prompts))


def test_gpt_bigcode_context_ends_at_its_learned_positions(tmp_path, monkeypatch):
    """StarCoder's positions are a learned table (n_positions rows): a longer max_model_len is refused even where
    VLLM_ALLOW_LONG_MAX_MODEL_LEN lets rotary models run past their trained length."""
    path = _save(tmp_path, transformers.GPTBigCodeConfig(**dict(_COMMON, max_position_embeddings=64)))
    monkeypatch.setenv("VLLM_ALLOW_LONG_MAX_MODEL_LEN", "1")
    with pytest.raises(ValueError, match="gpt_bigcode architecture has learned absolute position embeddings, 64"):
        LLM(path, skip_tokenizer_init=True, dtype="float32", max_model_len=128)


@pytest.mark.parametrize("arch", ["gpt_neox", "starcoder2", "gpt_bigcode"])
def test_pipeline_parallel_2_matches_hf(tmp_path, arch):
    """Two stages of one layer each: GPT-NeoX's own embed_out on the last stage; Starcoder2's and GPTBigCode's tied
    heads there loaded from the first stage's embedding tensor (GPTBigCode's learned positions on the first);
    chunked prefill mixed with decodes."""
    tiny = TinyModel(arch, str(tmp_path))
    llm = tiny.llm(pipeline_parallel_size=2, max_num_batched_tokens=16, max_model_len=128, kv_cache_memory_gb=0.01)
    prompts = _prompts(PROMPT_LENS)
    _assert_matches_hf(tiny, prompts, _generate(llm, prompts))


@pytest.mark.parametrize("new_arch, kv_heads", [(True, 2), (False, 1)], ids=["new-decoder-arch", "falcon-7b-style"])
def test_falcon_kv_heads_without_the_config_attribute(tmp_path, monkeypatch, new_arch, kv_heads):
    """transformers 5.17's FalconConfig has no num_key_value_heads (5.25's derives it): the engine must still size
    the KV cache by the heads the model writes (on an H100 with 5.17 the new decoder architecture got a cache of
    every query head and gave wrong tokens)."""
    import transformers

    from pagedllm.config import attention_shape
    from pagedllm.model.hf_configs import load_hf_config

    transformers.FalconConfig(hidden_size=64, num_attention_heads=4, num_hidden_layers=1, vocab_size=100,
                              new_decoder_architecture=new_arch, num_kv_heads=2 if new_arch else None,
                              multi_query=not new_arch).save_pretrained(tmp_path)
    loaded = transformers.AutoConfig.from_pretrained

    def as_on_5_17(*args, **kwargs):
        config = loaded(*args, **kwargs)
        config.__dict__.pop("num_key_value_heads", None)
        return config

    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", as_on_5_17)
    config = load_hf_config(str(tmp_path))
    assert attention_shape(config)[1] == kv_heads
