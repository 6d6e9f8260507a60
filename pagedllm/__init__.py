"""pagedllm: a vLLM-compatible LLM inference and serving engine in pure Python (PyTorch + Triton)."""
__version__ = "0.1.0"

from pagedllm import envs as _envs

# Before anything imports torch: the OpenMP runtime reads its wait policy once, when torch loads it.
_envs.configure_openmp()
from pagedllm.logger import configure_logging as _configure_logging

if _envs.PAGEDLLM_CONFIGURE_LOGGING:
    _configure_logging()
# The public names load on first use (PEP 562), so `import pagedllm` does not import torch: `pagedllm serve` starts
# its engine process before the front end's own imports (entrypoints/early_engine.py).
_EXPORTS = {
    "EngineArgs": "pagedllm.config", "AsyncEngineArgs": "pagedllm.config", "LLM": "pagedllm.entrypoints.llm",
    "LLMEngine": "pagedllm.engine.engine", "AsyncLLMEngine": "pagedllm.engine.async_engine",
    "PoolingParams": "pagedllm.pooling_params",
    **{name: "pagedllm.inputs" for name in ("PromptType", "TextPrompt", "TokensPrompt", "EmbedsPrompt")},
    **{name: "pagedllm.outputs" for name in (
        "BeamSearchOutput", "BeamSearchSequence", "ClassificationOutput", "ClassificationRequestOutput",
        "CompletionOutput", "EmbeddingOutput", "EmbeddingRequestOutput",
        "Logprob", "PoolingOutput", "PoolingRequestOutput", "RequestOutput", "ScoringOutput", "ScoringRequestOutput")},
    **{name: "pagedllm.sampling_params" for name in (
        "BeamSearchParams", "GuidedDecodingParams", "RequestOutputKind", "SamplingParams",
        "StructuredOutputsParams")},
}


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'pagedllm' has no attribute {name!r}")
    import importlib
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value          # once loaded, a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


def bundled_model_path() -> str:
    """The bundled SmolLM2-135M-Instruct as an HF-format folder (config.json, tokenizer files, chat template), so
    ``AutoTokenizer.from_pretrained(pagedllm.bundled_model_path())`` works offline. ``LLM(model=...)`` takes the
    model id ``HuggingFaceTB/SmolLM2-135M-Instruct`` (the weights stay in the GGUF file)."""
    from pagedllm.model.loader import bundled_model_dir
    return bundled_model_dir()


__all__ = ["LLM", "SamplingParams", "PoolingParams", "PoolingOutput", "PoolingRequestOutput", "EmbeddingOutput",
           "EmbeddingRequestOutput", "ClassificationOutput", "ClassificationRequestOutput", "ScoringOutput",
           "ScoringRequestOutput", "BeamSearchParams", "RequestOutput",
           "CompletionOutput", "Logprob", "EngineArgs", "AsyncEngineArgs", "LLMEngine", "AsyncLLMEngine",
           "BeamSearchOutput", "BeamSearchSequence", "RequestOutputKind",
           "StructuredOutputsParams", "GuidedDecodingParams", "PromptType", "TextPrompt", "TokensPrompt",
           "EmbedsPrompt",
           "bundled_model_path",
           "__version__"]
