"""Weight files on disk: progress bars while they load, and iterators over safetensors / pt checkpoints (shared by
model/loader.py and model/gguf_loader.py)."""
from __future__ import annotations

import fnmatch
import glob
import json
import os
from typing import Iterator, Sequence

import torch
from tqdm.auto import tqdm

LOAD_BAR_FORMAT = "{desc}: {percentage:3.0f}% Completed | {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}]"


def load_progress(iterable=None, *, desc: str, total: int | None = None, enabled: bool = True) -> tqdm:
    """A weight-loading progress bar (tqdm on stderr); off when ``enabled`` is False or on ranks other than 0."""
    import torch.distributed as dist
    first_rank = not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0
    return tqdm(iterable, desc=desc, total=total, bar_format=LOAD_BAR_FORMAT, dynamic_ncols=True,
                disable=not (enabled and first_rank))


def indexed_shards(model_dir: str) -> list[str] | None:
    """The shard file names the folder's ``model.safetensors.index.json`` lists, or None without one."""
    index = os.path.join(model_dir, "model.safetensors.index.json")
    if not os.path.isfile(index):
        return None
    with open(index) as f:
        return sorted(set(json.load(f).get("weight_map", {}).values()))


def safetensors_files(model_dir: str, ignore_patterns: Sequence[str] | None = None) -> list[str]:
    """The folder's safetensors checkpoint files: those its ``model.safetensors.index.json`` lists where it has one
    (Mistral's repositories also hold ``consolidated.safetensors``, the same weights under other names), less those
    matching ``ignore_patterns`` (vLLM's, relative to the folder)."""
    files = sorted(glob.glob(os.path.join(model_dir, "*.safetensors")))
    listed = indexed_shards(model_dir)
    if listed is not None:
        files = [p for p in files if os.path.basename(p) in listed] or files
    return [p for p in files if not any(fnmatch.fnmatch(os.path.basename(p), pattern)
                                        for pattern in ignore_patterns or ())]


def iterate_safetensors(model_dir: str, progress: bool = False, skip_prefixes: tuple[str, ...] = (),
                        ignore_patterns: Sequence[str] | None = None,
                        strategy: str = "lazy") -> Iterator[tuple[str, torch.Tensor]]:
    """Every tensor of the folder's safetensors files (``safetensors_files``), except those whose name starts with
    one of ``skip_prefixes`` (layers another pipeline stage holds: never read from disk). ``strategy``
    (safetensors_load_strategy): "lazy" memory-maps each file and reads the tensors asked for; "eager" reads each
    file whole in one go first (fewer, larger reads: network file systems)."""
    from safetensors import safe_open
    from safetensors.torch import load as load_bytes
    files = safetensors_files(model_dir, ignore_patterns)
    if not files:
        raise ValueError(f"No *.safetensors weights found in {model_dir!r}"
                         + (f" outside ignore_patterns={list(ignore_patterns)}." if ignore_patterns else "."))
    for path in load_progress(files, desc="Loading safetensors checkpoint shards", enabled=progress):
        if strategy == "eager":
            with open(path, "rb") as f:
                tensors = load_bytes(f.read())
            for name, tensor in tensors.items():
                if not (skip_prefixes and name.startswith(skip_prefixes)):
                    yield name, tensor
            continue
        with safe_open(path, framework="pt") as f:
            for name in f.keys():
                if skip_prefixes and name.startswith(skip_prefixes):
                    continue
                yield name, f.get_tensor(name)


def iterate_pt(model_dir: str, progress: bool = False, load_format: str = "auto",
               map_location: str | dict[str, str] = "cpu") -> Iterator[tuple[str, torch.Tensor]]:
    """Every tensor of the folder's *.bin / *.pt files, loaded with ``map_location`` (pt_load_map_location)."""
    files = sorted(glob.glob(os.path.join(model_dir, "*.bin")) + glob.glob(os.path.join(model_dir, "*.pt")))
    if not files and load_format == "pt":
        raise ValueError(f"load_format='pt' but no *.bin or *.pt in {model_dir!r}.")
    if not files:
        raise ValueError(f"No weights (*.safetensors or *.bin) found in {model_dir!r}.")
    for path in load_progress(files, desc="Loading pt checkpoint shards", enabled=progress):
        yield from torch.load(path, map_location=map_location, weights_only=True).items()
