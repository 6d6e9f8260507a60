"""Routing checkpoint tensors to parameters through their ``weight_loader`` (shared by every model)."""
from __future__ import annotations

import re
from typing import Iterable

import torch
from torch import nn

from pagedllm.model.layers.linear import load_param
from pagedllm.model.layers.pipeline import missing_prefixes
from pagedllm.model.layers.rotary import neox_heads, rotary_dim


def load_packed_weights(model: nn.Module, weights: Iterable[tuple[str, torch.Tensor]],
                        packed_modules_mapping: dict[str, tuple[str, object]],
                        skip: tuple[str, ...] = (), rename: dict[str, str] | None = None) -> set[str]:
    """Copy each ``(name, tensor)`` into its parameter; fused parameters get the shard id of the part. Returns the
    names of the parameters loaded (vLLM's ``load_weights`` contract): a model's ``load_weights`` may be given some
    tensors only (an RLHF weight update through ``collective_rpc``); the model loader then checks with
    ``check_all_loaded`` that a checkpoint filled every parameter. Tensors of modules another pipeline stage holds
    (``PPMissingLayer``) are skipped.
    """
    params = dict(model.named_parameters())
    elsewhere = missing_prefixes(model)
    loaded: set[str] = set()
    for name, tensor in weights:
        if any(name.endswith(s) for s in skip):
            continue
        for old, new in (rename or {}).items():
            name = name.replace(old, new)
        if elsewhere and name.startswith(elsewhere):
            continue
        shard_id = None
        for fragment, (packed, sid) in packed_modules_mapping.items():
            if f".{fragment}." in name:
                name, shard_id = name.replace(f".{fragment}.", f".{packed}."), sid
                break
        if name not in params and name.endswith(".bias") and _is_quantized(model, name):
            continue     # AutoGPTQ saves a bias for every quantized layer, zeros where the model has none (as vLLM)
        if getattr(model, "weights_processed", False) and _is_quantized(model, name):
            raise ValueError(f"load_weights: {name!r} is a weight of a quantized layer, converted to its kernels' "
                             f"layout when the model loaded; updating quantized weights after loading is not "
                             f"supported yet (dense layers are).")
        if name not in params:
            raise ValueError(f"Checkpoint tensor {name!r} has no matching parameter in {type(model).__name__}.")
        load_param(params[name], tensor, shard_id)
        loaded.add(name)
    # Modules that keep a derived copy of a parameter (the CPU LM head's oneDNN layout) drop it when new values
    # come in: a tied embedding's update reaches the head through the shared Parameter.
    loaded_params = {id(params[n]) for n in loaded}
    for module in model.modules():
        hook = getattr(module, "weights_loaded", None)
        if hook is not None and any(id(p) in loaded_params for p in module.parameters(recurse=False)):
            hook()
    return loaded


_LAYER = re.compile(r"model\.layers\.(\d+)\.")


def without_layers_from(weights: Iterable[tuple[str, torch.Tensor]],
                        num_layers: int) -> Iterable[tuple[str, torch.Tensor]]:
    """The checkpoint's tensors less those of ``model.layers.{i}`` for ``i >= num_layers``: the multi-token-prediction
    layers DeepSeek-V3 and GLM-4.5 append after the decoder, which are not run."""
    for name, tensor in weights:
        layer = _LAYER.match(name)
        if layer is None or int(layer.group(1)) < num_layers:
            yield name, tensor


def interleaved_rotary_to_neox(weights: Iterable[tuple[str, torch.Tensor]], hf_config,
                               model_name: str) -> Iterable[tuple[str, torch.Tensor]]:
    """Checkpoint tensors of a model that rotates interleaved pairs (GLM, Cohere, ERNIE 4.5), its ``q_proj`` /
    ``k_proj`` rows (and per-head Q / K norm weights) in the order our NeoX rotary turns alike (rotary.neox_heads)."""
    head_dim = getattr(hf_config, "head_dim", None) or hf_config.hidden_size // hf_config.num_attention_heads
    turned = rotary_dim(hf_config, head_dim)
    for name, tensor in weights:
        if ".q_proj." in name or ".k_proj." in name:
            if tensor.numel() > 1:       # a whole-tensor scale (fp8) holds for any row order
                if not name.endswith((".weight", ".bias")) or not tensor.is_floating_point():
                    raise ValueError(f"{model_name} checkpoint tensor {name!r}: pre-quantized checkpoints of this "
                                     f"architecture are not supported yet (its Q / K rows are reordered at load for "
                                     f"the rotary kernels); load the bf16 checkpoint (quantization='fp8' or "
                                     f"'bitsandbytes' quantize it at load).")
                tensor = neox_heads(tensor, head_dim, turned)
        elif name.endswith((".q_norm.weight", ".k_norm.weight")) and tensor.dim() == 2:   # Cohere: [heads, head_dim]
            tensor = neox_heads(tensor, head_dim, turned, dim=1)
        yield name, tensor


def check_all_loaded(model: nn.Module, loaded: set[str]) -> None:
    """A checkpoint must fill every model parameter: a missing one is an error (random weights would give garbage
    silently)."""
    params = dict(model.named_parameters())
    # tied weights are one Parameter under two names
    missing = [n for n, p in params.items() if n not in loaded and not getattr(p, "optional_weight", False)
               and not any(p is params[m] for m in loaded)]
    if missing:
        raise ValueError(f"Checkpoint is missing weights for: {', '.join(missing[:8])}"
                         + (" ..." if len(missing) > 8 else ""))
    for name, module in model.named_modules():     # parameters filled in parts (a MoE layer's experts)
        check = getattr(module, "check_loaded", None)
        if check is not None:
            check(name)


def _is_quantized(model: nn.Module, name: str) -> bool:
    try:
        module = model.get_submodule(name.rsplit(".", 1)[0])
    except AttributeError:
        return False
    return getattr(module, "quant_method", None) is not None
