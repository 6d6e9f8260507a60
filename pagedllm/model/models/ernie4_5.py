"""ERNIE 4.5 dense (``Ernie4_5ForCausalLM``: baidu/ERNIE-4.5-0.3B): a Llama decoder whose rotary embedding turns
*interleaved* pairs ``(x[2i], x[2i+1])`` over the whole head (InterleavedRotaryForCausalLM)."""
from __future__ import annotations

from pagedllm.model.hf_configs import reject_unsupported
from pagedllm.model.models.llama import InterleavedRotaryForCausalLM


class Ernie4_5ForCausalLM(InterleavedRotaryForCausalLM):
    def __init__(self, hf_config, engine_config):
        reject_unsupported("ERNIE 4.5", hf_config, {"use_bias": False}, why=", as the released checkpoints")
        super().__init__(hf_config, engine_config)
