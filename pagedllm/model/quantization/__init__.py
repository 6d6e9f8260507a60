"""Quantization methods by name: what ``quantization=`` / ``--quantization`` / ``-q`` selects, and what a
checkpoint's ``quantization_config`` (config.json, or quantize_config.json beside it) selects when it is not given.

Entries are ``"module:Class"`` strings (``QuantizationConfig`` subclasses), imported only when an engine uses the
method, so naming a method does not import its kernels or libraries. A new method is one module with a
``QuantizationConfig`` and its ``LinearMethod`` plus one ``register_quantization`` call (or one line in
``_METHODS`` for a built-in one).
"""
from __future__ import annotations

import importlib
import json
import os
from typing import Any

import torch

from pagedllm.model.quantization.base import LinearMethod, QuantizationConfig

__all__ = ["LinearMethod", "QuantizationConfig", "register_quantization", "quantization_method_names",
           "resolve_quantization", "quantization_config_class", "verify_quantization_name"]

_METHODS: dict[str, str] = {
    "awq": "pagedllm.model.quantization.awq:AWQConfig",
    "gptq": "pagedllm.model.quantization.gptq:GPTQConfig",
    "compressed-tensors": "pagedllm.model.quantization.compressed_tensors:CompressedTensorsConfig",
    # FP8 and bitsandbytes live in their own modules (issue 13, FP8 / bnb part): these names resolve once they exist.
    "fp8": "pagedllm.model.quantization.fp8:Fp8Config",
    "bitsandbytes": "pagedllm.model.quantization.bitsandbytes:BitsAndBytesConfig",
    "gguf": "pagedllm.model.quantization.gguf:GGUFConfig",
    "mxfp4": "pagedllm.model.quantization.mxfp4:Mxfp4Config",     # gpt-oss: MXFP4 experts on CUDA
}

# Other spellings of our methods: vLLM's kernel-specific names (its Marlin and CPU kernels read the same checkpoints;
# on a CPU vLLM itself turns awq / gptq into cpu_awq / cpu_gptq).
_ALIASES = {"awq_marlin": "awq", "gptq_marlin": "gptq", "cpu_awq": "awq", "cpu_gptq": "gptq",
            "compressed_tensors": "compressed-tensors"}
# vLLM's online-quantization scheme names (16/32-bit checkpoints quantized at load) that one of our methods does: a
# checkpoint with its own quantization_config is vLLM's mismatch, whatever its method.
_ONLINE_ALIASES = {"fp8_per_tensor": "fp8"}

# vLLM's names for a kernel that reads several of our formats: the checkpoint's own method runs (vLLM's moe_wna16
# takes AWQ and GPTQ checkpoints, its MoE experts by a fused int4/int8 kernel; the model cards of DeepSeek-R1-AWQ and
# other MoE int4 exports tell users to pass --quantization moe_wna16).
_CHECKPOINT_ALIASES = {"moe_wna16": ("awq", "gptq")}

# vLLM's other method names (its kernels and checkpoint formats pagedllm does not have): named as such, not as unknown.
_VLLM_METHODS_NOT_SUPPORTED = frozenset({
    "aqlm", "deepspeedfp", "tpu_int8", "ptpc_fp8", "fbgemm_fp8", "deepgemm_fp8", "fp_quant", "modelopt",
    "modelopt_fp4", "marlin", "bitblas", "gptq_marlin_24", "gptq_bitblas", "qqq", "hqq", "experts_int8",
    "neuron_quant", "ipex", "quark", "torchao", "auto-round", "rtn", "inc", "petit_nvfp4",
    "modelopt_mxfp8", "modelopt_mixed", "humming", "gpt_oss_mxfp4", "deepseek_v4_fp8",
    "online", "fp8_per_block", "int8_per_channel_weight_only", "mxfp8",
})

# Files besides config.json where older AutoGPTQ / AutoAWQ checkpoints keep their settings (vLLM reads the same).
_CONFIG_FILES = ("quantize_config.json", "quant_config.json")


def register_quantization(name: str, target: str) -> None:
    """Make ``quantization=name`` (and checkpoints whose ``quant_method`` is ``name``) use the
    ``QuantizationConfig`` subclass ``target`` (``"module:Class"``). Re-registering a name replaces it."""
    if ":" not in target:
        raise ValueError(f"quantization target must be 'module:Class', got {target!r}.")
    _METHODS[name] = target


def quantization_method_names() -> list[str]:
    return list(_METHODS)


def canonical_method_name(name: str) -> str:
    name = name.lower()
    return _ALIASES.get(name) or _ONLINE_ALIASES.get(name, name)


def verify_quantization_name(name: str) -> None:
    """ValueError for a ``quantization`` argument that names no method (checked by name only: no import)."""
    _check_method_name(canonical_method_name(name))


def _check_method_name(name: str, where: str = "") -> None:
    """ValueError for a method name that is not registered: vLLM's name for one pagedllm lacks, or unknown."""
    if name in _METHODS or name in _CHECKPOINT_ALIASES:
        return
    if name in _VLLM_METHODS_NOT_SUPPORTED:
        raise ValueError(f"Quantization method {name}{where} is a vLLM method that pagedllm does not support yet. "
                         f"pagedllm's methods: {quantization_method_names()}.")
    raise ValueError(f"Unknown quantization method{where}: {name}. Must be one of {quantization_method_names()}.")


def quantization_config_class(name: str) -> type[QuantizationConfig]:
    name = canonical_method_name(name)
    _check_method_name(name)
    name = _CHECKPOINT_ALIASES.get(name, (name,))[0]    # the class of its first format (the checkpoint picks which)
    module_name, _, class_name = _METHODS[name].partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name != module_name:
            raise
        raise ValueError(f"quantization={name!r} is not available in this build of pagedllm "
                         f"({module_name} is missing).") from None
    return getattr(module, class_name)


def checkpoint_quantization_config(hf_config: Any, model_dir: str | None) -> dict[str, Any] | None:
    """The checkpoint's own quantization settings: config.json's ``quantization_config`` (or ``compression_config``,
    where older llm-compressor exports put their compressed-tensors settings; vLLM reads both), else a
    quantize_config.json / quant_config.json beside it; None for a dense checkpoint."""
    found = getattr(hf_config, "quantization_config", None) or getattr(hf_config, "compression_config", None)
    if found is not None and not isinstance(found, dict):
        found = found.to_dict()        # transformers may hand back its own config object
    if found:
        return dict(found)
    for name in _CONFIG_FILES:
        path = os.path.join(model_dir, name) if model_dir else None
        if path and os.path.isfile(path):
            with open(path) as f:
                return json.load(f)
    return None


def resolve_quantization(method: str | None, hf_config: Any, model_dir: str | None = None,
                         gguf_file: str | None = None, device: torch.device | str = "cpu",
                         dtype: torch.dtype | None = None,
                         cpu_fp16_weights: bool = False) -> QuantizationConfig | None:
    """The parsed ``QuantizationConfig`` for the user's ``quantization`` argument (None: detect) and the checkpoint;
    None for a dense model. ValueError for an unknown method, a flag that contradicts the checkpoint, settings the
    method does not support, or a device / dtype it cannot run on (vLLM's checks and wording).
    ``cpu_fp16_weights`` (dtype="float16" on the CPU): the fp16-weight method for a dense checkpoint or a GGUF file
    (dequantized at load on the CPU); ValueError for a quantized checkpoint."""
    config = _resolve_checkpoint_quantization(method, hf_config, model_dir, gguf_file, device, dtype)
    if not cpu_fp16_weights:
        return config
    if config is not None and config.name != "gguf":
        raise ValueError(f"dtype='float16' on the CPU (fp16 weights) cannot be combined with the checkpoint's "
                         f"quantization ({config.name}): its weights are quantized already; use dtype='bfloat16' "
                         f"(16-bit activations, as vLLM's CPU kernels for quantized checkpoints run) or 'float32'.")
    from pagedllm.model.quantization.cpu_fp16 import CpuFp16WeightConfig
    fp16 = CpuFp16WeightConfig()
    fp16.verify_device(torch.device(device))
    return fp16


def _resolve_checkpoint_quantization(method: str | None, hf_config: Any, model_dir: str | None,
                                     gguf_file: str | None, device: torch.device | str,
                                     dtype: torch.dtype | None) -> QuantizationConfig | None:
    given = canonical_method_name(method) if method else None
    if given is not None:
        _check_method_name(given)
    checkpoint = checkpoint_quantization_config(hf_config, model_dir)
    in_checkpoint = checkpoint.get("quant_method") if checkpoint else None
    if gguf_file is not None:
        if given not in (None, "gguf"):
            raise ValueError(f"quantization={method!r} cannot load the GGUF file {gguf_file}; use quantization='gguf' "
                             f"or leave it unset.")
        name = "gguf"
    elif in_checkpoint:
        found = canonical_method_name(str(in_checkpoint))
        if found in _CHECKPOINT_ALIASES.get(given, ()):
            given = found
        if given is not None and (given != found or method.lower() in _ONLINE_ALIASES):
            raise ValueError(f"Quantization method specified in the model config ({in_checkpoint}) does not match "
                             f"the quantization method specified in the `quantization` argument ({method}).")
        _check_method_name(found, " in the model config")
        name = found
    elif given in _CHECKPOINT_ALIASES:
        raise ValueError(f"quantization={method!r} reads {' or '.join(_CHECKPOINT_ALIASES[given])} checkpoints: no "
                         f"quantization_config in config.json and no {' or '.join(_CONFIG_FILES)} in {model_dir!r}.")
    elif given is not None:
        name = given
    else:
        return None
    cls = quantization_config_class(name)
    if checkpoint and gguf_file is None:
        config = cls.from_config(checkpoint)
        config.maybe_update_config(model_dir)
    elif cls.quantizes_at_load or name == "gguf":
        config = cls.from_config({})
    else:
        raise ValueError(f"quantization={method!r} needs a quantized checkpoint: no quantization_config in "
                         f"config.json and no {' or '.join(_CONFIG_FILES)} in {model_dir!r}.")
    config.verify_device(torch.device(device))
    if dtype is not None and dtype not in config.supported_act_dtypes():
        raise ValueError(f"{dtype} is not supported for quantization method {name}. Supported dtypes: "
                         f"{list(config.supported_act_dtypes())}")
    return config
