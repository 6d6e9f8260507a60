"""Config classes for checkpoints whose ``model_type`` HF transformers does not ship (their config class comes as
remote code with the checkpoint). pagedllm reads their config.json with its own class, so no remote code runs and
``trust_remote_code`` is accepted but not needed; the class also exposes the standard names the engine reads
(``num_hidden_layers``, ``vocab_size``, ``num_key_value_heads``, ``head_dim``, ``max_position_embeddings``).
Also the one check models use to refuse a config field they cannot honour (``reject_unsupported``).
"""
from __future__ import annotations

import contextlib
import importlib
import json
import os
import threading

from transformers import PretrainedConfig


class ChatGLMConfig(PretrainedConfig):
    """ChatGLM2 / ChatGLM3 / GLM-4 (``model_type`` "chatglm"): the fields of THUDM's configuration_chatglm.py, with
    its defaults (chatglm2-6b's shapes)."""
    model_type = "chatglm"
    attribute_map = {
        "num_hidden_layers": "num_layers",
        "vocab_size": "padded_vocab_size",
        "head_dim": "kv_channels",
        "intermediate_size": "ffn_hidden_size",
        "max_position_embeddings": "seq_length",
        "rms_norm_eps": "layernorm_epsilon",
    }

    def __init__(self, num_layers: int = 28, padded_vocab_size: int = 65024, hidden_size: int = 4096,
                 ffn_hidden_size: int = 13696, kv_channels: int = 128, num_attention_heads: int = 32,
                 seq_length: int = 2048, hidden_dropout: float = 0.0, attention_dropout: float = 0.0,
                 layernorm_epsilon: float = 1e-5, rmsnorm: bool = True,
                 apply_residual_connection_post_layernorm: bool = False, post_layer_norm: bool = True,
                 add_bias_linear: bool = False, add_qkv_bias: bool = False, bias_dropout_fusion: bool = True,
                 multi_query_attention: bool = False, multi_query_group_num: int = 1,
                 apply_query_key_layer_scaling: bool = True, attention_softmax_in_fp32: bool = True,
                 fp32_residual_connection: bool = False, original_rope: bool = True, rope_ratio: float = 1.0,
                 quantization_bit: int = 0, pre_seq_len: int | None = None, prefix_projection: bool = False,
                 tie_word_embeddings: bool = False, **kwargs):
        self.num_layers = num_layers
        self.padded_vocab_size = padded_vocab_size
        self.hidden_size = hidden_size
        self.ffn_hidden_size = ffn_hidden_size
        self.kv_channels = kv_channels
        self.num_attention_heads = num_attention_heads
        self.seq_length = seq_length
        self.hidden_dropout = hidden_dropout
        self.attention_dropout = attention_dropout
        self.layernorm_epsilon = layernorm_epsilon
        self.rmsnorm = rmsnorm
        self.apply_residual_connection_post_layernorm = apply_residual_connection_post_layernorm
        self.post_layer_norm = post_layer_norm
        self.add_bias_linear = add_bias_linear
        self.add_qkv_bias = add_qkv_bias
        self.bias_dropout_fusion = bias_dropout_fusion
        self.multi_query_attention = multi_query_attention
        self.multi_query_group_num = multi_query_group_num
        self.apply_query_key_layer_scaling = apply_query_key_layer_scaling
        self.attention_softmax_in_fp32 = attention_softmax_in_fp32
        self.fp32_residual_connection = fp32_residual_connection
        self.original_rope = original_rope
        self.rope_ratio = rope_ratio
        self.quantization_bit = quantization_bit or 0       # null in a config.json: not quantized
        self.pre_seq_len = pre_seq_len
        self.prefix_projection = prefix_projection
        super().__init__(tie_word_embeddings=tie_word_embeddings, **kwargs)

    @property
    def num_key_value_heads(self) -> int:
        return self.multi_query_group_num if self.multi_query_attention else self.num_attention_heads

    # The rotary embedding in the standard names RotaryEmbedding reads: ChatGLM rotates the first half of each head
    # (its RotaryEmbedding is built over kv_channels // 2 dims), with base 10000 * rope_ratio (chatglm3-6b-32k: 50,
    # glm-4-9b: 500).
    @property
    def rope_theta(self) -> float:
        return 10000.0 * self.rope_ratio

    @property
    def partial_rotary_factor(self) -> float:
        return 0.5


# model_type -> our config class, used instead of AutoConfig (and instead of the checkpoint's remote code)
LOCAL_CONFIGS: dict[str, type[PretrainedConfig]] = {"chatglm": ChatGLMConfig}


def reject_unsupported(family: str, hf_config, supported: dict[str, object], why: str = "") -> None:
    """A ValueError naming the first config field whose value we cannot honour (``field: the value we run``; a field
    the config does not have counts as its supported value); ``why``, if given, ends the message (", as ...")."""
    for field, value in supported.items():
        got = getattr(hf_config, field, value)
        if got != value:
            raise ValueError(f"{family} with {field}={got!r} is not supported (only {field}={value!r}{why}).")


def remote_code_kwargs(trust_remote_code: bool, code_revision: str | None) -> dict:
    """transformers' ``code_revision`` where remote code may run and one was given (vLLM passes it the same way)."""
    return {"code_revision": code_revision} if trust_remote_code and code_revision else {}


def load_hf_config(model_dir: str, trust_remote_code: bool = False,
                   code_revision: str | None = None) -> PretrainedConfig:
    """The HF config of the checkpoint in ``model_dir``: our own class for the model types in ``LOCAL_CONFIGS``,
    else transformers' ``AutoConfig`` (``code_revision``: that of remote code from another repository)."""
    with open(os.path.join(model_dir, "config.json")) as f:
        model_type = json.load(f).get("model_type")
    if model_type in LOCAL_CONFIGS:
        return LOCAL_CONFIGS[model_type].from_pretrained(model_dir)
    from transformers import AutoConfig
    with _config_docstrings_not_generated():
        config = AutoConfig.from_pretrained(model_dir, trust_remote_code=trust_remote_code,
                                            **remote_code_kwargs(trust_remote_code, code_revision))
    if config.model_type == "gpt_bigcode":
        # HF's GPTBigCode attends by multi_query alone, while the engine sizes its KV cache by num_key_value_heads,
        # which that config class can derive stale (transformers 5.25 saves 12, the default n_head's, for a config
        # built with num_attention_heads=4): set from multi_query.
        config.num_key_value_heads = 1 if config.multi_query else config.num_attention_heads
    if config.model_type == "falcon":
        # The same for Falcon, whose config class has no num_key_value_heads on some transformers releases (5.17,
        # the GPU host's): the engine then sized the KV cache for every query head while the model wrote num_kv_heads
        # (its new decoder architecture gave wrong tokens through the Triton kernels on an H100, session 34).
        config.num_key_value_heads = falcon_kv_heads(config)
    return config


def falcon_kv_heads(config: PretrainedConfig) -> int:
    """Falcon's KV heads as HF's FalconAttention reads them: ``num_kv_heads`` groups in the new decoder architecture
    (falcon-40b / 180b, Falcon2-11B), one with ``multi_query`` (falcon-7b), else one a query head."""
    heads = config.num_attention_heads
    if config.new_decoder_architecture:
        return config.num_kv_heads or heads
    return 1 if config.multi_query else heads


@contextlib.contextmanager
def _config_docstrings_not_generated():
    """Import the checkpoint's config class without transformers generating its docstring. On some transformers 5
    releases (5.17 on the H200 host) the ``@auto_docstring`` decorator of a config class such as Qwen2Config imports
    the auto *model* mappings to write the docstring, and with them generation, torch.distributed.tensor/fsdp and
    sklearn: ~1,780 modules, 2.5-3.5 s on the 2-core VM and ~7 s of the engine's start-up on the H200 host, for a
    docstring nobody reads here (0.4 s and 68 modules without it; newer releases, 5.25, no longer do this). Only the
    class docstring hook is bypassed, only while the config loads; if transformers moves it, nothing changes. One
    load at a time (the front end's thread and an in-process engine core may both load a config): two overlapping
    swaps could otherwise leave the bypass in place for good."""
    with _DOCSTRING_HOOK_LOCK:
        try:
            module = importlib.import_module("transformers.utils.auto_docstring")
            original = module.auto_class_docstring
        except (ImportError, AttributeError):
            yield
            return
        module.auto_class_docstring = lambda cls, **_: cls
        try:
            yield
        finally:
            module.auto_class_docstring = original


_DOCSTRING_HOOK_LOCK = threading.Lock()
