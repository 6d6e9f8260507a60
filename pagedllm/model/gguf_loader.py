"""GGUF checkpoints: config and tokenizer through transformers, tensors dequantized with the ``gguf`` package.

transformers knows how to turn GGUF metadata into an HF config and tokenizer, but parsing the tokenizer out of a
GGUF takes seconds (7 s for SmolLM2 on the 2-core CI machine), so the converted config/tokenizer are cached in
``~/.cache/pagedllm/gguf/<file key>/`` and every later start reads them from there.

Tensors are read with ``gguf.GGUFReader`` and dequantized at load (F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K, Q6_K, ...:
whatever ``gguf.quants.dequantize`` supports), renamed to HF names, and handed to the model's ``load_weights``.
Linear layers that ``GGUFConfig`` keeps quantized (on CUDA) get their raw blocks converted to the canonical packed
form instead (``keep_quantized``).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import re
import shutil
import time
from typing import Callable, Iterator, NamedTuple

import numpy as np
import torch

from pagedllm import envs

logger = logging.getLogger(__name__)

# llama.cpp's per-layer tensor names -> HF names (suffix after "model.layers.N.").
_LAYER_NAMES = {
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "attn_q_norm": "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm",
    "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
    "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
}
_GLOBAL_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
# Mixture-of-experts layers (qwen2moe, qwen3moe): the router, the shared expert (Qwen2-MoE), and the experts, which
# llama.cpp stores as one 3-D tensor per projection ([experts, out, in]) that the loader splits into HF's per-expert
# tensors (their HF name below is that of the stacked tensor: "model.layers.N.mlp.experts.gate_proj.weight").
_MOE_LAYER_NAMES = {
    "ffn_gate_inp": "mlp.gate", "ffn_gate_inp_shexp": "mlp.shared_expert_gate",
    "ffn_gate_shexp": "mlp.shared_expert.gate_proj", "ffn_up_shexp": "mlp.shared_expert.up_proj",
    "ffn_down_shexp": "mlp.shared_expert.down_proj",
    "ffn_gate_exps": "mlp.experts.gate_proj", "ffn_up_exps": "mlp.experts.up_proj",
    "ffn_down_exps": "mlp.experts.down_proj",
}
_LAYER_NAMES.update(_MOE_LAYER_NAMES)
# GGUF architecture -> (transformers' model_type, our architecture, does the router renormalise its top-k weights
# when the file does not say (llama.cpp's rule per architecture))
_MOE_ARCHS = {"qwen2moe": ("qwen2_moe", "Qwen2MoeForCausalLM", False),
              "qwen3moe": ("qwen3_moe", "Qwen3MoeForCausalLM", True)}
_SUPPORTED_ARCHS = ("llama", "qwen2", "qwen3", "mistral", "qwen2moe", "qwen3moe")


def cache_dir_for(gguf_path: str) -> str:
    st = os.stat(gguf_path)
    key = hashlib.sha256(f"{os.path.abspath(gguf_path)}|{st.st_size}|{int(st.st_mtime)}".encode()).hexdigest()[:16]
    root = envs.PAGEDLLM_CACHE_DIR
    return os.path.join(root, "gguf", key)


# A folder left without its .complete marker this long ago is a conversion that died, not one in progress.
_ABANDONED_AFTER_S = 24 * 3600


def prune_orphaned_caches() -> None:
    """Remove the converted folders whose GGUF file is gone or changed (the key is the file's path, size and mtime):
    without this, every fresh install of the same file adds another ~0.5 GB for SmolLM2 (a CI run's new clone and
    venv did, run after run) and nothing ever removes them. Run before each new conversion; a folder whose file still
    exists is kept."""
    root = os.path.join(envs.PAGEDLLM_CACHE_DIR, "gguf")
    try:
        entries = [e for e in os.scandir(root) if e.is_dir(follow_symlinks=False)]
    except OSError:
        return
    removed, freed = 0, 0
    for entry in entries:
        marker = os.path.join(entry.path, ".complete")
        try:
            if os.path.isfile(marker):
                with open(marker) as f:
                    source = f.read().strip()
                if os.path.isfile(source) and cache_dir_for(source) == entry.path:
                    continue
            elif time.time() - entry.stat().st_mtime < _ABANDONED_AFTER_S:
                continue            # being converted now, maybe by another process
            size = sum(f.stat().st_size for f in os.scandir(entry.path) if f.is_file(follow_symlinks=False))
        except OSError:
            continue
        shutil.rmtree(entry.path, ignore_errors=True)
        removed, freed = removed + 1, freed + size
    if removed:
        logger.info("Removed %d converted GGUF folder(s) whose file is gone or changed from %s (%.2f GiB).", removed,
                    root, freed / 2**30)


def convert_metadata(gguf_path: str, progress: bool = True) -> str:
    """A folder with config.json, generation_config.json and the tokenizer files of a GGUF checkpoint."""
    out = cache_dir_for(gguf_path)
    if os.path.exists(os.path.join(out, "config.json")) and os.path.exists(os.path.join(out, ".complete")):
        return out
    from transformers import AutoConfig, AutoTokenizer
    from pagedllm.model.weight_files import load_progress
    folder, name = os.path.split(os.path.abspath(gguf_path))
    prune_orphaned_caches()
    logger.info("Converting GGUF metadata of %s (once; cached in %s)", gguf_path, out)
    # Three steps, the tokenizer the long one (~7 s on the CI machine): the bar shows the first start is not stuck.
    bar = load_progress(total=3, desc="Converting GGUF config and tokenizer (once)", enabled=progress)
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    _add_moe_metadata(config, gguf_path)
    bar.update()
    if not getattr(config, "architectures", None):
        arch = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM",
                "qwen3": "Qwen3ForCausalLM", "qwen2_moe": "Qwen2MoeForCausalLM",
                "qwen3_moe": "Qwen3MoeForCausalLM"}.get(config.model_type)
        if arch is None:
            raise ValueError(f"GGUF model type {config.model_type!r} is not supported by pagedllm.")
        config.architectures = [arch]
    os.makedirs(out, exist_ok=True)
    config.save_pretrained(out)
    generation = {k: getattr(config, k) for k in ("bos_token_id", "eos_token_id", "pad_token_id")
                  if getattr(config, k, None) is not None}
    with open(os.path.join(out, "generation_config.json"), "w") as f:
        json.dump(generation, f)
    bar.update()
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        tokenizer.save_pretrained(out)
    except Exception as e:  # a GGUF without tokenizer metadata still runs with token-id prompts
        logger.warning("Could not convert the tokenizer of %s: %s", gguf_path, e)
    bar.update()
    bar.close()
    with open(os.path.join(out, ".complete"), "w") as f:
        f.write(gguf_path)
    return out


def _add_moe_metadata(config, gguf_path: str) -> None:
    """What transformers' GGUF config conversion leaves out for the MoE architectures: the experts' width
    (``expert_feed_forward_length``), the shared expert's (Qwen2-MoE) and whether the top-k weights are
    renormalised (``expert_weights_norm``, else llama.cpp's rule for the architecture)."""
    if config.model_type not in ("qwen2_moe", "qwen3_moe"):
        return
    reader, arch = _open_reader(gguf_path)

    def value(key: str):
        field = reader.fields.get(f"{arch}.{key}")
        return None if field is None else field.parts[field.data[0]].tolist()[0]
    width = value("expert_feed_forward_length")
    if width is None:
        raise ValueError(f"GGUF {gguf_path}: {arch}.expert_feed_forward_length is missing (the experts' width).")
    config.moe_intermediate_size = int(width)
    if config.model_type == "qwen2_moe":
        shared = value("expert_shared_feed_forward_length")
        if shared is None:
            raise ValueError(f"GGUF {gguf_path}: {arch}.expert_shared_feed_forward_length is missing (the shared "
                             "expert's width).")
        config.shared_expert_intermediate_size = int(shared)
    norm = value("expert_weights_norm")
    config.norm_topk_prob = bool(norm) if norm is not None else _MOE_ARCHS[arch][2]


def _reverse_llama_permute(weight: torch.Tensor, n_head: int) -> torch.Tensor:
    """llama.cpp interleaves the rotary halves of Q/K rows for llama models; undo it to get HF's layout."""
    rows = weight.shape[0]
    return weight.reshape(n_head, rows // n_head // 2, 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


_LAYER_RE = re.compile(r"blk\.(\d+)\.(\w+)\.(weight|bias)$")


def _hf_name(gguf_name: str) -> tuple[str | None, str | None]:
    """A GGUF tensor's HF name (None: a tensor the models do not use) and its llama.cpp layer part (``attn_q``...;
    None for a global tensor)."""
    m = _LAYER_RE.match(gguf_name)
    if m:
        layer, part, kind = m.groups()
        if part not in _LAYER_NAMES:
            raise ValueError(f"Unknown GGUF tensor {gguf_name!r}")
        return f"model.layers.{layer}.{_LAYER_NAMES[part]}.{kind}", part
    base, _, kind = gguf_name.rpartition(".")
    if base not in _GLOBAL_NAMES:
        if base in ("rope_freqs",):
            return None, None
        raise ValueError(f"Unknown GGUF tensor {gguf_name!r}")
    return f"{_GLOBAL_NAMES[base]}.{kind}", None


def _open_reader(gguf_path: str):
    from gguf import GGUFReader
    reader = GGUFReader(gguf_path)
    arch_field = reader.fields["general.architecture"]
    arch = bytes(arch_field.parts[arch_field.data[0]]).decode()
    if arch not in _SUPPORTED_ARCHS:
        raise ValueError(f"GGUF architecture {arch!r} is not supported by pagedllm ({', '.join(_SUPPORTED_ARCHS)}).")
    return reader, arch


class _TensorEntry(NamedTuple):
    name: str              # the GGUF name
    qtype: int             # GGML type id
    shape: list[int]       # GGUF order: fastest dim first
    offset: int            # of the tensor's bytes in the file
    n_bytes: int


def _tensor_index(gguf_path: str) -> tuple[str, list[_TensorEntry]]:
    """The file's architecture and where each tensor's bytes lie, cached as tensor_index.json beside the converted
    metadata: ``gguf.GGUFReader`` parses the whole header (the tokenizer's arrays) before it lists the tensors,
    on every load that reads blocks: SmolLM2 with dtype="bfloat16" loaded in 8.5-9.0 s with the reader, 1.6-2.0 s
    from this index (2-core EPYC, docs/perf.md, issue 19, session 10)."""
    cached = os.path.join(cache_dir_for(gguf_path), "tensor_index.json")
    if os.path.exists(cached):
        with open(cached) as f:
            found = json.load(f)
        return found["arch"], [_TensorEntry(*entry) for entry in found["tensors"]]
    reader, arch = _open_reader(gguf_path)
    entries = [_TensorEntry(t.name, int(t.tensor_type), [int(x) for x in t.shape], int(t.data_offset),
                            int(t.n_bytes)) for t in reader.tensors]
    text = json.dumps({"arch": arch, "tensors": [list(e) for e in entries]})

    def write(tmp: str) -> None:
        with open(tmp, "w") as f:
            f.write(text)
    _write_cache_file(cached, write, len(text), "the GGUF tensor index")
    return arch, entries


# A cache file is written only where at least this much disk stays free after it: the dequantized SmolLM2 is 540 MB,
# and filling a nearly full disk would fail whatever runs next (CI's machine once had little room left: every
# bundled-model engine failed at this write, while the same engine under tensor parallel, which writes no cache, ran).
CACHE_HEADROOM_BYTES = 1 << 30


def _write_cache_file(path: str, write: Callable[[str], None], nbytes: int, what: str) -> bool:
    """``write(tmp)`` then an atomic rename to ``path``; False, with a warning, where the cache cannot take it (a
    read-only or nearly full disk): a cache only saves time, so no error reaches the load. ``write`` may raise any
    error (safetensors' own on a full disk is not an OSError); its partial file is removed."""
    folder = os.path.dirname(path)
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        os.makedirs(folder, exist_ok=True)
        free = shutil.disk_usage(folder).free
        if free < nbytes + CACHE_HEADROOM_BYTES:
            logger.warning("Not caching %s in %s: %.2f GiB are free there, and it takes %.2f GiB plus %.0f GiB kept "
                           "free (each start converts it again; PAGEDLLM_CACHE_DIR moves the cache).", what, folder,
                           free / 2**30, nbytes / 2**30, CACHE_HEADROOM_BYTES / 2**30)
            return False
        write(tmp)
        os.replace(tmp, path)
        return True
    except Exception as e:     # noqa: BLE001 - any failure to cache only costs time
        logger.warning("Could not cache %s in %s: %s", what, path, e)
        with contextlib.suppress(OSError):
            os.remove(tmp)
        return False


def _raw_rows(file: np.ndarray, entry: _TensorEntry) -> np.ndarray:
    """The tensor's bytes as ``[rows, row_bytes]`` uint8 (a row = one output feature, along the fastest dim): the
    array ``gguf.dequantize`` takes for every type (F32 / F16 rows are viewed as such by it)."""
    return file[entry.offset:entry.offset + entry.n_bytes].reshape(math.prod(entry.shape[1:]), -1)


def gguf_tensor_types(gguf_path: str) -> dict[str, int]:
    """HF tensor name -> GGML type id of every tensor of the file (what decides which layers can stay quantized)."""
    _, entries = _tensor_index(gguf_path)
    types = {}
    for entry in entries:
        name, _ = _hf_name(entry.name)
        if name is not None:
            types[name] = entry.qtype
    return types


def iterate_gguf_weights(gguf_path: str, hf_config, progress: bool = False,
                         skip_prefixes: tuple[str, ...] = (),
                         keep_quantized: dict[str, tuple[int, int]] | None = None,
                         convert_device: torch.device | str = "cpu") -> Iterator[tuple[str, torch.Tensor]]:
    """Yield ``(hf_name, dequantized float32 tensor)`` for every tensor of the file whose HF name does not start
    with one of ``skip_prefixes`` (those are not dequantized at all). The bytes are read through a memory map at
    the offsets of the cached tensor index (``_tensor_index``).

    ``keep_quantized``: HF weight name -> ``(bits, group_size)`` of the packed form its layer holds
    (``GGUFConfig.kept_quantized``); such a tensor is not dequantized but converted from its raw blocks and yielded
    as ``<module>.qweight`` / ``.scales`` / ``.offsets`` (the canonical packed form, float32 scales), converted on
    ``convert_device`` (the model's: on one CPU thread the conversion took ~1 s for SmolLM2's 0.1B projection
    weights, so a 7B model's would take a minute or more on the host).
    """
    from gguf import GGMLQuantizationType, dequantize
    from pagedllm.kernels.quant.gguf_packed import gguf_to_packed, widen_packed
    from pagedllm.model.weight_files import load_progress

    arch, entries = _tensor_index(gguf_path)
    file = np.memmap(gguf_path, dtype=np.uint8, mode="r")
    n_head = hf_config.num_attention_heads
    n_kv = getattr(hf_config, "num_key_value_heads", n_head)
    keep_quantized = keep_quantized or {}
    for entry in load_progress(entries, desc="Dequantizing GGUF tensors", enabled=progress):
        name, part = _hf_name(entry.name)
        if name is None or (skip_prefixes and name.startswith(skip_prefixes)):
            continue
        # llama.cpp interleaves the rotary halves of llama's Q/K rows; rows are whole in either form (the raw
        # blocks are one row of bytes per output feature), so the same row permutation undoes it.
        heads = {"attn_q": n_head, "attn_k": n_kv}.get(part) if arch in ("llama", "mistral") else None
        raw = _raw_rows(file, entry)
        if name in keep_quantized:
            blocks = torch.from_numpy(np.array(raw)).to(convert_device)      # [N, row_bytes], a copy
            if heads is not None:
                blocks = _reverse_llama_permute(blocks, heads).contiguous()
            packed = widen_packed(gguf_to_packed(blocks, entry.qtype), *keep_quantized[name])
            module = name.rpartition(".")[0]
            yield f"{module}.qweight", packed.qweight
            yield f"{module}.scales", packed.scales
            yield f"{module}.offsets", packed.offsets
            continue
        # GGUF lists dims fastest-first; numpy's dequantize returns the row-major (HF) shape.
        data = dequantize(raw, GGMLQuantizationType(entry.qtype))
        shape = tuple(reversed(entry.shape))
        weight = torch.from_numpy(np.array(data, dtype=np.float32)).reshape(shape)  # a writable copy
        if heads is not None:
            weight = _reverse_llama_permute(weight, heads)
        if part in ("ffn_gate_exps", "ffn_up_exps", "ffn_down_exps"):      # [experts, out, in]: HF's per expert
            experts, _, proj = name.rpartition(".weight")[0].rpartition(".")
            for e in range(weight.shape[0]):
                yield f"{experts}.{e}.{proj}.weight", weight[e].clone()    # (own storage: the cache saves each)
            continue
        yield name, weight


def load_gguf_weights(gguf_path: str, hf_config, progress: bool = False, skip_prefixes: tuple[str, ...] = (),
                      whole_model: bool = True, keep_quantized: dict[str, tuple[int, int]] | None = None,
                      convert_device: torch.device | str = "cpu") -> Iterator[tuple[str, torch.Tensor]]:
    """Dequantized weights of a GGUF file, cached as fp32 safetensors beside the converted metadata.

    Parsing a GGUF's metadata (the tokenizer arrays) costs ~9 s on the CI machine for SmolLM2 even when only the
    tensors are wanted; reading the cached safetensors takes well under a second.

    A rank of a tensor/pipeline-parallel engine (``whole_model=False``) never holds the whole model: from the cache
    it reads only its stage's tensors (``skip_prefixes``); without a cache it dequantizes only those, one tensor at a
    time (a tensor-parallel rank's weight loader then keeps its shard of each), and writes no cache.

    ``keep_quantized`` (see ``iterate_gguf_weights``): read from the GGUF itself, not the dequantized cache (which
    holds no blocks), and written to no cache.
    """
    from safetensors.torch import save_file
    from pagedllm.model.weight_files import iterate_safetensors
    cache = cache_dir_for(gguf_path)
    cached = os.path.join(cache, "weights.safetensors")
    if keep_quantized:
        yield from iterate_gguf_weights(gguf_path, hf_config, progress=progress, skip_prefixes=skip_prefixes,
                                        keep_quantized=keep_quantized, convert_device=convert_device)
        return
    if os.path.exists(cached):
        yield from iterate_safetensors(cache, progress=progress, skip_prefixes=skip_prefixes)
        return
    if not whole_model:
        yield from iterate_gguf_weights(gguf_path, hf_config, progress=progress, skip_prefixes=skip_prefixes)
        return
    tensors = dict(iterate_gguf_weights(gguf_path, hf_config, progress=progress))
    _write_cache_file(cached, lambda tmp: save_file(tensors, tmp),
                      sum(t.numel() * t.element_size() for t in tensors.values()), "the dequantized GGUF weights")
    yield from tensors.items()
