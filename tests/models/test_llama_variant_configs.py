"""Config fields of the Llama-shaped families (SmolLM3, Cohere 2, ERNIE 4.5, GLM / Cohere checkpoints) that pagedllm
cannot run as HF does: refused at load with a ValueError naming the field, never run some other way."""
from __future__ import annotations

import json
import re

import pytest
import torch
import transformers

from pagedllm import LLM
from pagedllm.model.models.weights import interleaved_rotary_to_neox

_TINY = dict(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
             num_key_value_heads=1, max_position_embeddings=256, bos_token_id=1, eos_token_id=2, pad_token_id=0)


def _saved(tmp_path, config, **config_json_changes) -> str:
    config.architectures = [type(config).__name__.replace("Config", "ForCausalLM")]
    transformers.AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path)
    path = tmp_path / "config.json"
    path.write_text(json.dumps(dict(json.loads(path.read_text()), **config_json_changes)))
    return str(tmp_path)


@pytest.mark.parametrize("config, changes, message", [
    (transformers.SmolLM3Config(**_TINY), dict(no_rope_layers=[1]), "no_rope_layers has 1 entries"),
    # HF windows SmolLM3's layers only with use_sliding_window.
    (transformers.SmolLM3Config(**_TINY), dict(layer_types=["full_attention", "sliding_attention"],
                                               sliding_window=8, use_sliding_window=False), "use_sliding_window"),
    (transformers.Cohere2Config(**_TINY), dict(layer_types=["sliding_attention", "chunked_attention"]),
     "layer_types ['chunked_attention']"),
    (transformers.Ernie4_5Config(**_TINY), dict(use_bias=True), "use_bias=True is not supported"),
    # A Llama-family config naming another MLP activation: refused, not run as SiLU.
    (transformers.LlamaConfig(**_TINY), dict(hidden_act="gelu"), "hidden_act='gelu' is not supported"),
    (transformers.Qwen2Config(**_TINY), dict(hidden_act="relu"), "hidden_act='relu' is not supported"),
], ids=["smollm3-short-no_rope_layers", "smollm3-window-off", "cohere2-layer-type", "ernie4_5-use_bias",
        "llama-gelu", "qwen2-relu"])
def test_config_we_cannot_honour_is_refused(tmp_path, config, changes, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        LLM(_saved(tmp_path, config, **changes), skip_tokenizer_init=True, dtype="float32")


def test_prequantized_qk_rows_of_an_interleaved_rotary_model_are_refused():
    """GLM / Cohere reorder their Q and K rows at load; a packed quantized Q tensor cannot be reordered so."""
    weights = [("model.layers.0.self_attn.q_proj.qweight", torch.zeros(4, 16, dtype=torch.int32))]
    with pytest.raises(ValueError, match="GlmForCausalLM checkpoint tensor 'model.layers.0.self_attn.q_proj.qweight'"):
        list(interleaved_rotary_to_neox(weights, transformers.GlmConfig(**_TINY, head_dim=8), "GlmForCausalLM"))
