"""fp16 weights, fp32 compute, on the CPU: what ``dtype="float16"`` means there (config._cpu_fp16_weights).

CPUs have no native fp16 arithmetic, but at batch 1 a decode step is the time to read the weights: fbgemm's
fp16-weight GEMM (``quantized::linear_dynamic_fp16``: fp32 activations, the weight converted to fp32 inside the
kernel, fp32 accumulation) reads half fp32's bytes and on a 2-core AVX2 EPYC ran 2-4.6x faster than oneDNN fp32 at
M = 1 and still 1.2-1.4x at M = 16-256 (docs/perf.md, issue 19). The result is that of an fp32 model whose weights
were rounded to fp16, up to the summation order.

Every linear layer, the LM head and the embedding hold their weight in fp16; norms, biases, activations, attention
and the KV cache stay in the model's dtype (float32). The embedding gathers its rows from its fp16 table (one row
per token: no measurable time, half the memory) — a tied LM head packs that same table, so the model holds the
table once in fp16 plus fbgemm's packed copy for the head.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pagedllm.kernels.cpu_threads import gemm_for_rows
from pagedllm.model.quantization.base import LinearMethod, QuantizationConfig

WEIGHT_DTYPE = torch.float16


class CpuFp16WeightMethod(LinearMethod):
    """One fp16 weight per layer, for a linear layer, the LM head (``apply``: packed for fbgemm after loading, the
    dense copy dropped) and the embedding (``embedding``: rows gathered from the fp16 table)."""

    def create_weights(self, layer: nn.Module, input_size: int, output_sizes: list[int], params_dtype: torch.dtype,
                       **extra: Any) -> None:
        # Created in fp16: each checkpoint tensor is rounded as it is copied in (the loader's ``copy_``), so the
        # model never holds an fp32 copy of its weights.
        weight = nn.Parameter(torch.empty(sum(output_sizes), input_size, dtype=WEIGHT_DTYPE), requires_grad=False)
        weight.weight_loader = extra["weight_loader"]
        layer.register_parameter("weight", weight)
        layer.compute_dtype = params_dtype

    def process_weights_after_loading(self, layer: nn.Module) -> None:
        if not getattr(layer, "multiplies_weight", True):     # an embedding: a table read by rows, never packed
            return
        weight = layer.weight.detach()
        layer.fp16_packed = torch.ops.quantized.linear_prepack_fp16(weight.float())
        layer.packed_weight_bytes = weight.numel() * weight.element_size()     # the model runner's weight count
        # Drop this layer's reference to the dense copy: freed for a linear or an untied head; a head tied to the
        # embedding leaves the table to the embedding, which gathers from it.
        layer.weight = nn.Parameter(weight.new_empty(0), requires_grad=False)

    def apply(self, layer: nn.Module, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        # a few rows on one thread (kernels/cpu_threads.FEW_ROWS)
        y = gemm_for_rows(torch.ops.quantized.linear_dynamic_fp16, x.shape[0], x, layer.fp16_packed)
        return y if bias is None else y.add_(bias)

    def embedding(self, layer: nn.Module, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, layer.weight).to(layer.compute_dtype)


class CpuFp16WeightConfig(QuantizationConfig):
    """Not a checkpoint format: the weight method that ``dtype="float16"`` on the CPU selects for every layer
    (resolve_quantization returns it; ``quantization=`` does not name it)."""

    name = "cpu-fp16-weights"
    is_checkpoint_method = False

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "CpuFp16WeightConfig":
        return cls()

    def get_linear_method(self, layer: nn.Module, prefix: str) -> LinearMethod:
        return CpuFp16WeightMethod()

    def get_embedding_method(self, layer: nn.Module, prefix: str) -> LinearMethod:
        return CpuFp16WeightMethod()

    def supported_act_dtypes(self) -> tuple[torch.dtype, ...]:
        return (torch.float32,)

    def verify_device(self, device: torch.device) -> None:
        if device.type != "cpu":
            raise ValueError(f"fp16 weights with fp32 compute are a CPU path; on {device.type} dtype='float16' "
                             f"computes in fp16.")

    def weight_bytes_note(self) -> str:
        return "fp16, fbgemm-packed"

    def unsupported_model_message(self, model_name: str) -> str:
        return (f"dtype='float16' on the CPU (fp16 weights, fp32 compute) is not supported yet for {model_name}: "
                f"its layers take no weight method; use dtype='float32'.")
