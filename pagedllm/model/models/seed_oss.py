"""Seed-OSS (``SeedOssForCausalLM``: ByteDance-Seed/Seed-OSS-36B): a Llama decoder with a bias on Q / K / V
(``attention_bias``) and, separately, on ``o_proj`` (``attention_out_bias``)."""
from __future__ import annotations

import dataclasses

from pagedllm.model.models.llama import LlamaForCausalLM, LlamaVariant


class SeedOssForCausalLM(LlamaForCausalLM):
    @classmethod
    def variant(cls, hf_config) -> LlamaVariant:
        return dataclasses.replace(super().variant(hf_config),
                                   o_proj_bias=bool(getattr(hf_config, "attention_out_bias", False)))
