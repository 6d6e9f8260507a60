"""Reading a PEFT LoRA adapter folder: ``adapter_config.json`` and ``adapter_model.safetensors`` (or ``.bin``).

Only what pagedllm can apply is accepted; anything else is a ValueError that names it (an adapter that trains the
embeddings or the LM head, ``modules_to_save``, DoRA, biases, per-module ranks), never a silently partial adapter."""
from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass

import torch

from pagedllm.lora.request import LoRARequest

# The projections an adapter may target (Llama-family names, as PEFT saves them); a model whose checkpoint names its
# projections otherwise lists its own (``lora_target_modules``: Phi's dense / fc1 / fc2, GPT-NeoX's
# query_key_value, ...).
LORA_TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
_PREFIX = "base_model.model."


@dataclass
class PEFTAdapter:
    """One adapter's weights, scaling folded into B: module name (``model.layers.0.self_attn.q_proj``) ->
    (A [r, in], scaling * B [out, r])."""
    lora_int_id: int
    rank: int
    scaling: float
    weights: dict[str, tuple[torch.Tensor, torch.Tensor]]


def _fail(request: LoRARequest, why: str) -> ValueError:
    return ValueError(f"Loading lora {request.lora_name} failed: {why}")


def adapter_folder(lora_path: str, hf_token: bool | str | None = None) -> str:
    """The adapter's local folder: ``lora_path`` (``~`` expanded) when it is one, else, for a Hugging Face Hub
    repository id (``org/name``), its snapshot: the local cache first, then a download (as vLLM; ``hf_token``: the
    engine's). Otherwise the path as given (the caller then finds no adapter there)."""
    path = os.path.expanduser(lora_path)
    if os.path.isdir(path) or not re.fullmatch(r"[\w.-]+/[\w.-]+", lora_path):
        return path
    from huggingface_hub import snapshot_download
    for local_only in (True, False):
        try:
            return snapshot_download(lora_path, local_files_only=local_only, token=hf_token)
        except Exception:   # noqa: BLE001 - not cached / not on the Hub / offline: "No adapter found"
            continue
    return path


def unexpected_modules(request: LoRARequest, target_modules: tuple[str, ...], unexpected: set[str]) -> ValueError:
    """vLLM's error for an adapter's tensors of modules the model does not adapt."""
    return ValueError(f"While loading {request.lora_path}, expected target modules in {list(target_modules)} but "
                      f"received {sorted(unexpected)}. Please verify that the loaded LoRA module is correct "
                      f"(pagedllm applies LoRA to these projections only: embed_tokens / lm_head adapters are not "
                      f"supported yet).")


def read_adapter_config(request: LoRARequest, max_lora_rank: int, path: str | None = None) -> dict:
    """The adapter's config, checked: a LoRA adapter of rank <= ``max_lora_rank`` that pagedllm can apply."""
    path = path or adapter_folder(request.lora_path)
    config_file = os.path.join(path, "adapter_config.json")
    if not os.path.isfile(config_file):
        raise _fail(request, f"No adapter found for {request.lora_path} (a local folder with adapter_config.json, "
                             f"or a Hugging Face Hub repository id, is expected)")
    try:
        with open(config_file) as f:
            config = json.load(f)
    except json.JSONDecodeError as e:
        raise _fail(request, f"{config_file} is not valid JSON ({e}).") from None
    if not isinstance(config, dict):
        raise _fail(request, f"{config_file} holds a {type(config).__name__}, not a JSON object of the adapter's "
                             f"settings.")
    peft_type = str(config.get("peft_type", "LORA")).upper()
    if peft_type != "LORA":
        raise _fail(request, f"peft_type {peft_type} is not supported, only LORA adapters.")
    rank = config.get("r")
    if not isinstance(rank, int) or rank < 1:
        raise _fail(request, f"adapter_config.json needs a positive rank r, got {rank!r}.")
    if rank > max_lora_rank:
        raise ValueError(f"LoRA rank {rank} is greater than max_lora_rank {max_lora_rank}.")
    if config.get("use_dora"):
        raise _fail(request, "DoRA adapters (use_dora=true) are not supported yet by pagedllm.")
    if config.get("modules_to_save"):
        raise _fail(request, f"modules_to_save ({config['modules_to_save']}) is not supported yet by pagedllm: "
                             f"only the LoRA weights of the model's linear projections are applied.")
    if config.get("bias", "none") not in ("none", None):
        raise _fail(request, f"bias={config['bias']!r} (LoRA biases, vLLM's enable_lora_bias) is not supported "
                             f"yet by pagedllm; use bias='none'.")
    for key in ("rank_pattern", "alpha_pattern"):
        if config.get(key):
            raise _fail(request, f"{key} (a rank or alpha per module) is not supported yet by pagedllm.")
    if config.get("layers_to_transform") is not None:
        raise _fail(request, "layers_to_transform is not supported yet by pagedllm.")
    return config


def load_adapter(request: LoRARequest, max_lora_rank: int, dtype: torch.dtype,
                 hf_token: bool | str | None = None,
                 target_modules: tuple[str, ...] = LORA_TARGET_MODULES) -> PEFTAdapter:
    """The adapter's A and B per module, as PEFT names them (the checkpoint's module names; on the CPU, in
    ``dtype``), checked as ``read_adapter_config`` does, and every tensor a lora_A / lora_B pair's. Which modules
    the model can adapt (``target_modules``, the leaf names it accepts, named in the error for any other tensor)
    the LoRA manager checks, once it has the adapter's modules in the model's names."""
    path = adapter_folder(request.lora_path, hf_token)
    config = read_adapter_config(request, max_lora_rank, path)
    rank = config["r"]
    alpha = config.get("lora_alpha", rank)
    scaling = alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank
    tensors_file = os.path.join(path, "adapter_model.safetensors")
    if os.path.isfile(tensors_file):
        from safetensors.torch import load_file
        tensors = load_file(tensors_file)
    elif os.path.isfile(os.path.join(path, "adapter_model.bin")):
        tensors = torch.load(os.path.join(path, "adapter_model.bin"), map_location="cpu", weights_only=True)
    else:
        raise _fail(request, f"No adapter found for {request.lora_path} (no adapter_model.safetensors or "
                             f"adapter_model.bin)")
    parts: dict[str, dict[str, torch.Tensor]] = {}
    unexpected = set()
    for key, tensor in tensors.items():
        name = key[len(_PREFIX):] if key.startswith(_PREFIX) else key
        module, _, kind = name.rpartition(".lora_")
        kind = kind.replace(".default", "")
        if kind not in ("A.weight", "B.weight"):
            unexpected.add(name)
            continue
        parts.setdefault(module, {})[kind[0]] = tensor
    if unexpected:
        raise unexpected_modules(request, target_modules, unexpected)
    weights = {}
    for module, ab in parts.items():
        if set(ab) != {"A", "B"}:
            raise _fail(request, f"{module} has lora_{next(iter(ab))} but not its pair.")
        a, b = ab["A"], ab["B"]
        if a.dim() != 2 or b.dim() != 2 or a.shape[0] != rank or b.shape[1] != rank:
            raise _fail(request, f"{module}: lora_A {tuple(a.shape)} and lora_B {tuple(b.shape)} are not of rank "
                                 f"r={rank} ([r, in] and [out, r] expected).")
        weights[module] = (a.to(dtype), (b.float() * scaling).to(dtype))
    if not weights:
        raise _fail(request, "the adapter holds no LoRA weights.")
    return PEFTAdapter(request.lora_int_id, rank, scaling, weights)
