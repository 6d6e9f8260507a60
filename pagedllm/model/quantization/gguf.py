"""GGUF files: today their tensors are dequantized at load (pagedllm/model/gguf_loader.py) and the layers stay
dense, so this config quantizes no layer. Kept-quantized GGUF (issue 13: Q4_0/Q4_1/Q8_0/K-quants converted to the
canonical packed form) replaces ``get_linear_method`` here."""
from __future__ import annotations

from typing import Any

from torch import nn

from pagedllm.model.quantization.base import LinearMethod, QuantizationConfig


class GGUFConfig(QuantizationConfig):
    name = "gguf"

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "GGUFConfig":
        return cls()

    def get_linear_method(self, layer: nn.Module, prefix: str) -> LinearMethod | None:
        return None

    def weight_bytes_note(self) -> str:
        return "gguf, dequantized at load"
