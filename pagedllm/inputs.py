"""The prompt forms ``LLM.generate`` / ``LLMEngine.add_request`` take, under vLLM's names (``vllm.inputs``):
a string, a ``TextPrompt``, a ``TokensPrompt`` or (with ``enable_prompt_embeds=True``) an ``EmbedsPrompt`` (plain
dicts; the TypedDicts are for type checkers and for ``from pagedllm.inputs import TokensPrompt`` in code written for
vLLM)."""
from __future__ import annotations

from typing import Any, TypedDict, Union

from typing_extensions import NotRequired


class TextPrompt(TypedDict):
    """A text prompt, tokenized by the engine."""
    prompt: str
    # vLLM's multi-modal fields: {"image": a PIL image or a list of them} for a model that reads images (LLaVA-1.5),
    # one "<image>" in the prompt per image; mm_processor_kwargs: this prompt's processor settings over the engine's
    # (Qwen2-VL's min_pixels / max_pixels).
    multi_modal_data: NotRequired[Any]
    mm_processor_kwargs: NotRequired[Any]
    cache_salt: NotRequired[str]     # keeps this prompt's prefix-cache blocks apart from other salts'


class TokensPrompt(TypedDict):
    """A prompt given as token ids (``prompt`` is only echoed back in the output)."""
    prompt_token_ids: list[int]
    prompt: NotRequired[str]
    # A cross-encoder pair's segments (pooling models): 0 for the first text's tokens, then 1 for the second's.
    token_type_ids: NotRequired[list[int]]
    multi_modal_data: NotRequired[Any]
    mm_processor_kwargs: NotRequired[Any]
    cache_salt: NotRequired[str]


class EmbedsPrompt(TypedDict):
    """A prompt given as its input embeddings, [num_tokens, hidden_size] (what the model's embedding layer would
    give for token ids, or vectors of your own): generation only, with ``enable_prompt_embeds=True``."""
    prompt_embeds: Any          # a torch.Tensor
    cache_salt: NotRequired[str]


PromptType = Union[str, TextPrompt, TokensPrompt, EmbedsPrompt]

# Keys of a prompt dict that pagedllm reads, and vLLM's keys it cannot honour (with why): any of those with a value
# other than None is an error, never silently dropped.
PROMPT_KEYS = frozenset({"prompt", "prompt_token_ids", "cache_salt", "token_type_ids", "prompt_embeds",
                         "multi_modal_data", "mm_processor_kwargs"})
UNSUPPORTED_PROMPT_KEYS = {
    "multi_modal_uuids": "not supported yet: pagedllm reads images through multi_modal_data without caller-given "
                         "item ids",
    "encoder_prompt": "encoder-decoder prompts are not supported: pagedllm runs decoder-only and encoder models",
    "decoder_prompt": "encoder-decoder prompts are not supported: pagedllm runs decoder-only and encoder models",
}


def check_prompt_keys(prompt: dict) -> None:
    """Raise ValueError for a prompt dict key pagedllm would otherwise ignore."""
    for key, value in prompt.items():
        if key in PROMPT_KEYS:
            continue
        if key in UNSUPPORTED_PROMPT_KEYS:
            if value is not None:
                raise ValueError(f"Prompt field {key!r}: {UNSUPPORTED_PROMPT_KEYS[key]}.")
            continue
        raise ValueError(f"Unknown prompt field {key!r}; a prompt dict needs 'prompt', 'prompt_token_ids' or "
                         f"'prompt_embeds' (and may have 'cache_salt').")


def is_embeds_prompt(prompt: Any) -> bool:
    """An ``EmbedsPrompt``: a dict whose ``prompt_embeds`` is set."""
    return isinstance(prompt, dict) and prompt.get("prompt_embeds") is not None
