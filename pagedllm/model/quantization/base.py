"""The quantization extension point: one ``QuantizationConfig`` per checkpoint format, one ``LinearMethod`` per
kind of linear layer it quantizes (vLLM's ``QuantizationConfig`` / ``LinearMethodBase`` split).

A linear layer asks its config for a method (``get_linear_method(layer, prefix)``; None = dense) and the method
owns the layer's parameters from then on:
1. ``create_weights`` registers the checkpoint's tensors on the layer (packed ints, scales, zero points), each with a
   ``weight_loader`` that shards them for tensor parallelism as the dense weight would be sharded;
2. the checkpoint is copied in;
3. ``process_weights_after_loading`` turns the checkpoint's layout into the one the kernels read (the canonical
   packed form of ``pagedllm/kernels/quant/packed.py``, an FP8 weight and scale, a bitsandbytes tensor) and frees
   what is no longer needed;
4. ``apply`` is the layer's matmul: ``y = x @ W^T (+ bias)`` with ``W`` as the dequantized reference defines it.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn


class LinearMethod:
    """How one quantized linear layer holds and multiplies its weight."""

    def create_weights(self, layer: nn.Module, input_size: int, output_sizes: list[int], params_dtype: torch.dtype,
                       **extra: Any) -> None:
        """Register the layer's parameters for a weight of ``sum(output_sizes)`` rows and ``input_size`` columns
        (this rank's shard); ``output_sizes`` lists the fused parts (q/k/v, gate/up) so their scales load apart."""
        raise NotImplementedError

    def process_weights_after_loading(self, layer: nn.Module) -> None:
        """Convert the loaded checkpoint tensors into the kernels' layout (once, after every tensor is in)."""

    def apply(self, layer: nn.Module, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError

    def embedding(self, layer: nn.Module, ids: torch.Tensor) -> torch.Tensor:
        """The rows ``ids`` of an embedding's weight, in the model's dtype (methods that ``get_embedding_method``
        hands out: the embedding and the LM head, which may share one weight)."""
        raise NotImplementedError


class MoEMethod:
    """How one mixture-of-experts layer's stacked experts (model/layers/moe.py ``MoEExperts``: ``w13 [E, 2I, H]``,
    ``w2 [E, H, I]``) hold their weights: created, loaded tensor by tensor, converted once, then handed to the fused
    GPU kernels (kernels/triton_moe.py) or dequantized one expert at a time for the CPU's loop."""

    def create_weights(self, experts: nn.Module, params_dtype: torch.dtype) -> None:
        """Register the experts' parameters in this format (``experts.create_dense_weights(dtype)`` for the dense
        ``w13`` / ``w2``; shapes are this rank's)."""

    def load(self, experts: nn.Module, expert: int, part: str, kind: str, tensor: torch.Tensor) -> bool:
        """Copy one checkpoint tensor of ``expert``'s ``part`` (gate / up / down) in; ``kind`` is the tensor's
        last name (``weight``, ``weight_scale``, ...). False for a kind this format does not read."""
        raise NotImplementedError

    def process_weights_after_loading(self, experts: nn.Module) -> None:
        """Convert the loaded tensors into the kernels' layout (once, after every tensor is in)."""

    def kernel_args(self, experts: nn.Module) -> dict[str, Any]:
        """Keyword arguments of ``fused_moe`` beyond the activations and routing (the weights, their scales)."""
        raise NotImplementedError

    def expert_matmuls(self, experts: nn.Module, expert: int, dtype: torch.dtype) -> tuple[Callable, Callable]:
        """One expert's two products for the CPU's loop, ``x -> x @ W13^T`` and ``h -> h @ W2^T``, with the weights
        as the dequantized reference defines them."""
        raise NotImplementedError


class ExpertLayersMoEMethod(MoEMethod):
    """Experts held as linear layers of a format: each expert's gate/up and down are a ``MergedColumnParallelLinear``
    and a ``RowParallelLinear`` with the config's linear method (``experts.expert_layers``), so the format's
    checkpoint tensors, tensor-parallel sharding and conversion are the dense model's; the CPU's loop calls each
    expert's layers. A subclass turns them into what the fused GPU kernels read (``process_weights_after_loading``,
    ``kernel_args``)."""

    def __init__(self, config: "QuantizationConfig"):
        self.config = config

    def create_weights(self, experts: nn.Module, params_dtype: torch.dtype) -> None:
        from pagedllm.model.layers.linear import MergedColumnParallelLinear, RowParallelLinear
        full = experts.shard * experts.tp_size
        layers = nn.ModuleList()
        for e in range(experts.num_experts):
            mlp = nn.Module()
            mlp.gate_up_proj = MergedColumnParallelLinear(experts.hidden_size, [full, full], bias=False,
                                                          quant_config=self.config,
                                                          prefix=f"{experts.prefix}.{e}.gate_up_proj")
            mlp.down_proj = RowParallelLinear(full, experts.hidden_size, bias=False, quant_config=self.config,
                                              prefix=f"{experts.prefix}.{e}.down_proj")
            if mlp.gate_up_proj.quant_method is None or mlp.down_proj.quant_method is None:
                raise ValueError(f"{self.config.name}: experts of {experts.prefix} left partly unquantized "
                                 "(modules_to_not_convert) are not supported.")
            layers.append(mlp)
        experts.expert_layers = layers       # the experts' weights live in their layers

    def load(self, experts: nn.Module, expert: int, part: str, kind: str, tensor: torch.Tensor) -> bool:
        mlp = experts.expert_layers[expert]
        layer = mlp.down_proj if part == "down" else mlp.gate_up_proj
        if kind == "bias":
            if tensor.count_nonzero():
                raise ValueError(f"Checkpoint has a non-zero bias for expert {expert} {part}; the experts have none.")
            return True          # AutoGPTQ saves a zero bias for every quantized layer (as vLLM, dropped)
        param = layer._parameters.get(kind)
        if param is None:
            raise ValueError(f"Checkpoint tensor {kind!r} of expert {expert} {part}: {self.config.name} experts "
                             f"take {', '.join(sorted(k for k, p in layer._parameters.items() if p is not None))}.")
        from pagedllm.model.layers.linear import load_param
        load_param(param, tensor, None if part == "down" else 0 if part == "gate" else 1)
        return True

    @staticmethod
    def required_kinds(experts: nn.Module) -> dict[str, list[str]]:
        """The tensors a checkpoint must give each expert's gate, up and down (the layers' non-optional ones)."""
        def kinds(layer: nn.Module) -> list[str]:
            return [k for k, p in layer._parameters.items()
                    if p is not None and not getattr(p, "optional_weight", False)]
        mlp = experts.expert_layers[0]
        return {"gate": kinds(mlp.gate_up_proj), "up": kinds(mlp.gate_up_proj), "down": kinds(mlp.down_proj)}

    @staticmethod
    def layer_pairs(experts: nn.Module) -> list[tuple[nn.Module, nn.Module]]:
        """(gate_up, down) of every expert, in expert order."""
        return [(mlp.gate_up_proj, mlp.down_proj) for mlp in experts.expert_layers]

    def expert_matmuls(self, experts: nn.Module, expert: int, dtype: torch.dtype) -> tuple[Callable, Callable]:
        mlp = experts.expert_layers[expert]
        up, down = mlp.gate_up_proj, mlp.down_proj
        return (lambda x: up.quant_method.apply(up, x, None)), (lambda h: down.quant_method.apply(down, h, None))


class QuantizationConfig:
    """A checkpoint format's settings, parsed from ``quantization_config`` in config.json (or from the
    ``quantization=`` argument for formats that quantize at load: ``fp8``, ``bitsandbytes``)."""

    #: the name users pass as ``quantization=`` and that checkpoints carry as ``quant_method``
    name: str = ""
    #: True for formats that quantize a dense checkpoint at load (``fp8``, ``bitsandbytes``): with no
    #: ``quantization_config`` in the checkpoint, ``from_config({})`` builds the config from the flag alone.
    quantizes_at_load: bool = False
    #: False for a weight method no ``quantization=`` names (dtype="float16"'s fp16 weights on the CPU): vLLM's
    #: ``model_config.quantization`` then reports the checkpoint's method (None, or "gguf" for a GGUF file)
    is_checkpoint_method: bool = True
    #: fused layer -> the checkpoint's modules it stacks (``qkv_proj`` -> q/k/v_proj); set from the model's
    #: ``packed_modules_mapping`` by the loader, so ``ignore`` / ``modules_to_not_convert`` lists, which name the
    #: checkpoint's modules, apply to our fused ones.
    fused_modules: dict[str, list[str]] = {"qkv_proj": ["q_proj", "k_proj", "v_proj"],
                                           "gate_up_proj": ["gate_proj", "up_proj"]}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "QuantizationConfig":
        raise NotImplementedError

    def maybe_update_config(self, model_dir: str | None) -> None:
        """Read what the settings leave to the checkpoint's files (e.g. which modules GPTQ kept dense); called once,
        after ``from_config``, with the checkpoint's folder (vLLM's hook of the same name)."""

    def get_linear_method(self, layer: nn.Module, prefix: str) -> LinearMethod | None:
        """The method for the linear layer at ``prefix`` (e.g. ``model.layers.0.self_attn.qkv_proj``), or None to
        keep it dense (layers the checkpoint left unquantized: ``modules_to_not_convert``, ``ignore``, lm_head)."""
        raise NotImplementedError

    def get_embedding_method(self, layer: nn.Module, prefix: str) -> LinearMethod | None:
        """The method for the embedding / LM head at ``prefix`` (``embedding`` gathers rows, ``apply`` gives the
        logits), or None to keep them dense (every checkpoint format here)."""
        return None

    def get_moe_method(self, experts: nn.Module, prefix: str) -> MoEMethod | None:
        """The method for the mixture-of-experts layer at ``prefix`` (``model.layers.0.mlp.experts``), or None to
        keep its experts dense; formats without one refuse such a layer."""
        raise ValueError(f"Quantization ({self.name}) is not supported yet for mixture-of-experts layers ({prefix}); "
                         "fp8 is.")

    def eager_reason(self) -> str | None:
        """Why weights of this format cannot run inside CUDA graphs (the engine then captures none), or None."""
        return None

    def unsupported_model_message(self, model_name: str) -> str:
        """The ValueError's text for a model class whose layers take no quantization."""
        return f"Quantization ({self.name}) is not supported yet for {model_name}."

    def checkpoint_prefixes(self, prefix: str) -> list[str]:
        """The checkpoint's module names behind our layer ``prefix`` (one, or the parts of a fused layer)."""
        head, _, last = prefix.rpartition(".")
        parts = self.fused_modules.get(last)
        if not parts:
            return [prefix]
        return [f"{head}.{part}" if head else part for part in parts]

    def checkpoint_name(self, name: str) -> str:
        """A checkpoint tensor's name as this method's parameters spell it (the loader maps every name through it):
        the identity, except for formats whose tensors carry dotted suffixes (bitsandbytes' ``weight.absmax``)."""
        return name

    def supported_act_dtypes(self) -> tuple[torch.dtype, ...]:
        return (torch.float16, torch.bfloat16, torch.float32)

    def verify_device(self, device: torch.device) -> None:
        """Raise ValueError when ``device`` lacks what the method needs (e.g. FP8 GEMMs before sm_89)."""

    def weight_bytes_note(self) -> str:
        """A few words for the start-up memory line (e.g. ``"int4, group 128"``)."""
        return self.name
