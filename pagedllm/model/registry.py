"""HF ``architectures`` name -> model class (imported lazily)."""
from __future__ import annotations

import importlib

_MODELS = {
    "LlamaForCausalLM": ("llama", "LlamaForCausalLM"),
    "MistralForCausalLM": ("llama", "LlamaForCausalLM"),
    "Qwen2ForCausalLM": ("qwen2", "Qwen2ForCausalLM"),
    "Qwen3ForCausalLM": ("qwen3", "Qwen3ForCausalLM"),
    "Qwen2MoeForCausalLM": ("moe_models", "Qwen2MoeForCausalLM"),
    "Qwen3MoeForCausalLM": ("moe_models", "Qwen3MoeForCausalLM"),
    "MixtralForCausalLM": ("moe_models", "MixtralForCausalLM"),
    "DeepseekV2ForCausalLM": ("deepseek", "DeepseekV2ForCausalLM"),
    "DeepseekV3ForCausalLM": ("deepseek", "DeepseekV3ForCausalLM"),
    "GptOssForCausalLM": ("gpt_oss", "GptOssForCausalLM"),
    "Glm4MoeForCausalLM": ("moe_models", "Glm4MoeForCausalLM"),
    "Dots1ForCausalLM": ("moe_models", "Dots1ForCausalLM"),
    "Ernie4_5_MoeForCausalLM": ("moe_models", "Ernie4_5_MoeForCausalLM"),
    "HunYuanMoEV1ForCausalLM": ("moe_models", "HunYuanMoEV1ForCausalLM"),
    "OlmoeForCausalLM": ("moe_models", "OlmoeForCausalLM"),
    "GraniteMoeForCausalLM": ("moe_models", "GraniteMoeForCausalLM"),
    "GraniteMoeSharedForCausalLM": ("moe_models", "GraniteMoeSharedForCausalLM"),
    "PhimoeForCausalLM": ("moe_models", "PhimoeForCausalLM"),
    "OPTForCausalLM": ("opt", "OPTForCausalLM"),
    "GPT2LMHeadModel": ("gpt2", "GPT2ForCausalLM"),
    "GPTNeoXForCausalLM": ("gpt_neox", "GPTNeoXForCausalLM"),
    "PhiForCausalLM": ("phi", "PhiForCausalLM"),
    "StableLmForCausalLM": ("stablelm", "StableLmForCausalLM"),
    "Starcoder2ForCausalLM": ("starcoder2", "Starcoder2ForCausalLM"),
    "GPTBigCodeForCausalLM": ("gpt_bigcode", "GPTBigCodeForCausalLM"),
    "FalconForCausalLM": ("falcon", "FalconForCausalLM"),
    "GemmaForCausalLM": ("gemma", "GemmaForCausalLM"),
    "Gemma2ForCausalLM": ("gemma2", "Gemma2ForCausalLM"),
    "Gemma3ForCausalLM": ("gemma3", "Gemma3ForCausalLM"),
    "Gemma3ForConditionalGeneration": ("gemma3", "Gemma3ForConditionalGeneration"),   # its text part
    "LlavaForConditionalGeneration": ("llava", "LlavaForConditionalGeneration"),     # images + text
    "Qwen2VLForConditionalGeneration": ("qwen2_vl", "Qwen2VLForConditionalGeneration"),          # images + text
    "Qwen2_5_VLForConditionalGeneration": ("qwen2_vl", "Qwen2_5_VLForConditionalGeneration"),    # images + text
    "GraniteForCausalLM": ("granite", "GraniteForCausalLM"),
    "Olmo2ForCausalLM": ("olmo2", "Olmo2ForCausalLM"),
    "Olmo3ForCausalLM": ("olmo2", "Olmo3ForCausalLM"),
    "Phi3ForCausalLM": ("phi3", "Phi3ForCausalLM"),
    "SmolLM3ForCausalLM": ("smollm3", "SmolLM3ForCausalLM"),
    "GlmForCausalLM": ("glm", "GlmForCausalLM"),
    "Glm4ForCausalLM": ("glm", "Glm4ForCausalLM"),
    "CohereForCausalLM": ("cohere", "CohereForCausalLM"),
    "Cohere2ForCausalLM": ("cohere", "Cohere2ForCausalLM"),
    "SeedOssForCausalLM": ("seed_oss", "SeedOssForCausalLM"),
    "Exaone4ForCausalLM": ("exaone4", "Exaone4ForCausalLM"),
    "Ernie4_5ForCausalLM": ("ernie4_5", "Ernie4_5ForCausalLM"),
    "ArceeForCausalLM": ("arcee", "ArceeForCausalLM"),
    # ChatGLM2/3 and GLM-4: their config.json names "ChatGLMModel", the remote code's LM class is
    # ChatGLMForConditionalGeneration; both are the same checkpoint layout (with its output_layer).
    "ChatGLMModel": ("chatglm", "ChatGLMForCausalLM"),
    "ChatGLMForConditionalGeneration": ("chatglm", "ChatGLMForCausalLM"),
    # Bare decoders (HF's *Model classes, no lm_head: Qwen3-Embedding, gte-Qwen2, e5-mistral): pooling only.
    "LlamaModel": ("llama", "LlamaForEmbedding"),
    "MistralModel": ("llama", "LlamaForEmbedding"),
    "Qwen2Model": ("qwen2", "Qwen2ForEmbedding"),
    "Qwen3Model": ("qwen3", "Qwen3ForEmbedding"),
    # Encoders: no language-model head, bidirectional attention; they run as pooling (embedding) models only.
    "BertModel": ("bert", "BertModel"),
    "XLMRobertaModel": ("xlm_roberta", "XLMRobertaModel"),
    "RobertaModel": ("xlm_roberta", "XLMRobertaModel"),
    # Sequence classifiers (cross-encoder rerankers, sentiment / reward heads): pooling models whose pooler runs the
    # checkpoint's classification head (LLM.classify, /classify; LLM.score, /score and /rerank with one label).
    "BertForSequenceClassification": ("bert", "BertForSequenceClassification"),
    "XLMRobertaForSequenceClassification": ("xlm_roberta", "XLMRobertaForSequenceClassification"),
    "RobertaForSequenceClassification": ("xlm_roberta", "XLMRobertaForSequenceClassification"),
    "LlamaForSequenceClassification": ("llama", "LlamaForSequenceClassification"),
    "MistralForSequenceClassification": ("llama", "LlamaForSequenceClassification"),
    "Qwen2ForSequenceClassification": ("qwen2", "Qwen2ForSequenceClassification"),
    "Qwen3ForSequenceClassification": ("qwen3", "Qwen3ForSequenceClassification"),
    # Per-token heads (LLM.encode(pooling_task="token_classify"), LLM.reward, /pooling): NER-style token classifiers
    # and Qwen2.5-Math's reward models (an MLP score head on every token).
    "BertForTokenClassification": ("bert", "BertForTokenClassification"),
    "XLMRobertaForTokenClassification": ("xlm_roberta", "XLMRobertaForTokenClassification"),
    "RobertaForTokenClassification": ("xlm_roberta", "XLMRobertaForTokenClassification"),
    "Qwen2ForRewardModel": ("qwen2", "Qwen2ForRewardModel"),
    "Qwen2ForProcessRewardModel": ("qwen2", "Qwen2ForProcessRewardModel"),
}
# Reward models' label counts, whatever their config says (as vLLM): one reward, or a process reward's two classes.
REWARD_MODEL_LABELS = {"Qwen2ForRewardModel": 1, "Qwen2ForProcessRewardModel": 2}
SEQUENCE_CLASSIFICATION_ARCHITECTURES = frozenset(a for a in _MODELS if a.endswith("ForSequenceClassification"))
TOKEN_CLASSIFICATION_ARCHITECTURES = frozenset(a for a in _MODELS if a.endswith(("ForTokenClassification",
                                                                                 "RewardModel")))
ENCODER_ONLY_ARCHITECTURES = frozenset({"BertModel", "XLMRobertaModel", "RobertaModel", "BertForSequenceClassification",
                                        "XLMRobertaForSequenceClassification", "RobertaForSequenceClassification",
                                        "BertForTokenClassification", "XLMRobertaForTokenClassification",
                                        "RobertaForTokenClassification"})
# Checkpoints without a language-model head: they only pool, so runner "auto" picks pooling for them.
POOLING_ONLY_ARCHITECTURES = (ENCODER_ONLY_ARCHITECTURES | SEQUENCE_CLASSIFICATION_ARCHITECTURES
                              | TOKEN_CLASSIFICATION_ARCHITECTURES
                              | {"LlamaModel", "MistralModel", "Qwen2Model", "Qwen3Model"})


def is_encoder_only(hf_config) -> bool:
    return any(arch in ENCODER_ONLY_ARCHITECTURES for arch in getattr(hf_config, "architectures", None) or [])


def is_pooling_only(hf_config) -> bool:
    return any(arch in POOLING_ONLY_ARCHITECTURES for arch in getattr(hf_config, "architectures", None) or [])


def is_sequence_classifier(hf_config) -> bool:
    return any(arch in SEQUENCE_CLASSIFICATION_ARCHITECTURES
               for arch in getattr(hf_config, "architectures", None) or [])


def is_token_classifier(hf_config) -> bool:
    """A head on every token (token classifiers, reward models): its one task is token_classify."""
    return any(arch in TOKEN_CLASSIFICATION_ARCHITECTURES for arch in getattr(hf_config, "architectures", None) or [])


def sequence_classifier_of(arch: str) -> str | None:
    """The ``*ForSequenceClassification`` architecture of a ``*ForCausalLM`` one, where there is one."""
    name = arch.removesuffix("ForCausalLM") + "ForSequenceClassification"
    return name if arch.endswith("ForCausalLM") and name in SEQUENCE_CLASSIFICATION_ARCHITECTURES else None


def supported_architectures() -> list[str]:
    return sorted(_MODELS)


def check_parallel_support(hf_config, tensor_parallel_size: int, pipeline_parallel_size: int) -> None:
    """A clear error when the architecture cannot be split as asked (models opt in with class attributes)."""
    model_cls = get_model_class(hf_config)
    if tensor_parallel_size > 1 and not getattr(model_cls, "supports_tensor_parallel", False):
        raise ValueError(f"tensor_parallel_size > 1 is not supported yet for {model_cls.__name__}; "
                         f"use tensor_parallel_size=1.")
    if pipeline_parallel_size > 1 and not getattr(model_cls, "supports_pipeline_parallel", False):
        # No list of the architectures that do: a hand-kept one went stale as families were added.
        split = (" (tensor_parallel_size > 1 splits it)" if getattr(model_cls, "supports_tensor_parallel", False)
                 else "")
        raise ValueError(f"pipeline_parallel_size > 1 is not supported yet for {model_cls.__name__}; use "
                         f"pipeline_parallel_size=1{split}.")


def get_model_class(hf_config):
    archs = getattr(hf_config, "architectures", None) or []
    for arch in archs:
        if arch in _MODELS:
            module, name = _MODELS[arch]
            return getattr(importlib.import_module(f"pagedllm.model.models.{module}"), name)
    raise ValueError(f"Model architectures {archs} are not supported for now. "
                     f"Supported architectures: {supported_architectures()}")
