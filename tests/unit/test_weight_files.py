"""Which weight files a model folder loads and a Hub download fetches: a sharded checkpoint's index decides (Mistral's
repositories also hold ``consolidated.safetensors``, the same weights under other names), and vLLM's
``ignore_patterns`` / ``--ignore-patterns`` (default ``original/**/*``) drops files from both."""
from __future__ import annotations

import argparse
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from pagedllm import LLM, SamplingParams
from pagedllm.config import EngineArgs

GREEDY = SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True, detokenize=False)
PROMPT = [{"prompt_token_ids": [5, 9, 13, 2]}]


def _sharded_with_a_duplicate(src: str, dst) -> str:
    """``src``'s weights as two shards with an index, plus a Mistral-style consolidated file under other names."""
    shutil.copytree(src, dst)
    (single,) = dst.glob("*.safetensors")
    tensors = load_file(single)
    single.unlink()
    names = sorted(tensors)
    half = len(names) // 2
    shards = {"model-00001-of-00002.safetensors": names[:half], "model-00002-of-00002.safetensors": names[half:]}
    for file, part in shards.items():
        save_file({n: tensors[n] for n in part}, str(dst / file), metadata={"format": "pt"})
    weight_map = {n: file for file, part in shards.items() for n in part}
    (dst / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    save_file({"layers.0.attention.wq.weight": torch.zeros(4, 4)}, str(dst / "consolidated.safetensors"))
    return str(dst)


def _tokens(path: str, **kw) -> list[int]:
    llm = LLM(model=path, skip_tokenizer_init=True, dtype="float32", max_model_len=64, kv_cache_memory_gb=0.01, **kw)
    return list(llm.generate(PROMPT, GREEDY, use_tqdm=False)[0].outputs[0].token_ids)


def test_a_sharded_checkpoint_loads_the_shards_its_index_lists(tiny_llama_dir, tmp_path):
    expected = _tokens(tiny_llama_dir)
    path = _sharded_with_a_duplicate(tiny_llama_dir, tmp_path / "sharded")
    assert _tokens(path) == expected
    (tmp_path / "sharded" / "model.safetensors.index.json").unlink()      # without it every file is read
    with pytest.raises(ValueError, match="layers.0.attention.wq.weight"):
        _tokens(path)
    assert _tokens(path, ignore_patterns="consolidated*") == expected       # unless ignored
    with pytest.raises(ValueError, match=r"No weights .* found|No \*.safetensors"):
        _tokens(path, ignore_patterns=["*.safetensors"])


def test_a_download_fetches_the_indexed_shards_and_honours_ignore_patterns(tiny_llama_dir, tmp_path, monkeypatch):
    import huggingface_hub
    folder = _sharded_with_a_duplicate(tiny_llama_dir, tmp_path / "hub")
    asked = []

    def snapshot_download(repo_id, local_files_only=False, allow_patterns=None, ignore_patterns=None, **kwargs):
        asked.append((local_files_only, list(allow_patterns), ignore_patterns))
        if local_files_only:
            raise FileNotFoundError("not in the cache")
        return folder
    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    assert _tokens("someone/mistral-like") == _tokens(tiny_llama_dir)
    remote = [a for a in asked if not a[0]]
    assert "*.safetensors" not in remote[0][1] and not any(p.endswith(".safetensors") for p in remote[0][1])
    assert remote[1][1][-2:] == ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    assert all(a[2] == ["original/**/*"] for a in asked)                   # vLLM's default
    asked.clear()
    _tokens("someone/mistral-like", ignore_patterns=["*.pth", "consolidated*"])
    assert all(a[2] == ["*.pth", "consolidated*"] for a in asked)


def test_a_modelscope_download_honours_ignore_patterns(tiny_llama_dir, monkeypatch):
    """PAGEDLLM_USE_MODELSCOPE=1: modelscope's snapshot_download gets the patterns (its ignore_file_pattern)."""
    import sys
    import types
    asked = []

    def snapshot_download(model_id, cache_dir=None, revision=None, ignore_file_pattern=None):
        asked.append((model_id, revision, ignore_file_pattern))
        return tiny_llama_dir
    monkeypatch.setitem(sys.modules, "modelscope", types.SimpleNamespace(snapshot_download=snapshot_download))
    monkeypatch.setenv("PAGEDLLM_USE_MODELSCOPE", "1")
    assert _tokens("qwen/some-model", revision="v1", ignore_patterns="consolidated*") == _tokens(tiny_llama_dir)
    assert asked[0] == ("qwen/some-model", "v1", ["consolidated*"])
    _tokens("qwen/some-model")
    assert asked[-1][2] == ["original/**/*"]                                # vLLM's default


def test_ignore_patterns_flag_and_errors():
    parser = EngineArgs.add_cli_args(argparse.ArgumentParser())
    args = EngineArgs.from_cli_args(parser.parse_args(["--ignore-patterns", "original/**/*", "*.pth"]))
    assert args.ignore_patterns == ["original/**/*", "*.pth"]
    assert EngineArgs.from_cli_args(parser.parse_args([])).ignore_patterns == ["original/**/*"]
    with pytest.raises(ValueError, match="ignore_patterns must be a file pattern or a list of them"):
        LLM(model="whatever", ignore_patterns=[3])
