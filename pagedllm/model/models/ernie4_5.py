"""ERNIE 4.5 dense (``Ernie4_5ForCausalLM``: baidu/ERNIE-4.5-0.3B): a Llama decoder whose rotary embedding turns
*interleaved* pairs ``(x[2i], x[2i+1])`` over the whole head (InterleavedRotaryForCausalLM)."""
from __future__ import annotations

from pagedllm.model.models.llama import InterleavedRotaryForCausalLM


class Ernie4_5ForCausalLM(InterleavedRotaryForCausalLM):
    def __init__(self, hf_config, engine_config):
        if getattr(hf_config, "use_bias", False):
            raise ValueError("ERNIE 4.5 with use_bias=True is not supported (only use_bias=False, as the released "
                             "checkpoints).")
        super().__init__(hf_config, engine_config)
