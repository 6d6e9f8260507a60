"""Incremental detokenization and stop strings.

Decoding only the tail of the token list keeps each step O(1): the text of ``ids[prefix_offset:]`` minus the text of
``ids[prefix_offset:read_offset]`` is what the newest tokens add. A piece ending in U+FFFD is an incomplete UTF-8
sequence (a Chinese character split over byte tokens): it is held back until the following token completes it.
Starting the window a few tokens inside the prompt renders the first output token's leading space correctly.
"""
from __future__ import annotations

from pagedllm.sampling_params import SamplingParams

_PROMPT_CONTEXT = 5   # prompt tokens decoded before the output, so word boundaries render as in a full decode


class IncrementalDetokenizer:
    def __init__(self, tokenizer, sp: SamplingParams, num_prompt_tokens: int):
        self.tokenizer = tokenizer
        self.skip_special_tokens = sp.skip_special_tokens
        self.spaces_between_special_tokens = sp.spaces_between_special_tokens
        self.stop = list(sp.stop or [])
        self.include_stop = sp.include_stop_str_in_output
        self.max_stop_len = max((len(s) for s in self.stop), default=0)
        n = num_prompt_tokens
        self.prefix_offset = max(n - _PROMPT_CONTEXT, 0)
        self.read_offset = n
        self.output_text = ""
        self.num_sent_chars = 0   # for DELTA output / streaming
        self._backend_decode = _backend_decode(tokenizer)

    def _decode(self, ids: list[int]) -> str:
        if self._backend_decode is not None:
            return self._backend_decode(ids, skip_special_tokens=self.skip_special_tokens)
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip_special_tokens,
                                     spaces_between_special_tokens=self.spaces_between_special_tokens)

    def update(self, token_ids: list[int], check_stop: bool = True) -> str | None:
        """Consume the tokens of ``token_ids`` not decoded yet; return the matched stop string, if any.

        ``check_stop=False`` (before ``min_tokens`` are out) decodes without looking for stop strings, as vLLM."""
        prev_len = len(self.output_text)
        prefix_text = self._decode(token_ids[self.prefix_offset:self.read_offset])
        full_text = self._decode(token_ids[self.prefix_offset:])
        if len(full_text) > len(prefix_text) and not full_text.endswith("\ufffd"):
            self.output_text += full_text[len(prefix_text):]
            self.prefix_offset = self.read_offset
            self.read_offset = len(token_ids)
        if not self.stop or not check_stop:
            return None
        # Only the newly added text (plus the tail this stop string could straddle) can hold a new match: each stop
        # string looks back its own length less one, as vLLM, so a shorter one's match in text decoded before
        # min_tokens (or already searched) is never found again.
        for stop in self.stop:
            idx = self.output_text.find(stop, max(0, prev_len - len(stop) + 1))
            if idx != -1:
                cut = idx + len(stop) if self.include_stop else idx
                self.output_text = self.output_text[:cut]
                return stop
        return None

    def visible_text(self, finished: bool) -> str:
        """Text that may be shown now: while running, a tail that could still become a stop string is held back."""
        if finished or not self.stop or self.include_stop:
            return self.output_text
        return self.output_text[:max(0, len(self.output_text) - self.max_stop_len + 1)]


def _backend_decode(tokenizer):
    """The Rust tokenizer's own ``decode`` where HF's ``decode`` adds nothing to it, else None.

    A stock HF fast tokenizer decodes with ``self._tokenizer.decode(ids, skip_special_tokens=...)`` and then, only when
    ``clean_up_tokenization_spaces`` is set, cleans the text up (``spaces_between_special_tokens`` is a slow
    tokenizer's option: the fast one ignores it). Called directly, the text is the same and the Python around it
    (argument handling, ``to_py_obj``) goes: 10.3 -> 4.1 us per call for a 6-token window of the SmolLM2 tokenizer
    on the 2-core CPU VM, two calls per streamed token (docs/perf.md, session 35 (CPU)). Subclasses that override
    ``decode`` / ``_decode``, slow tokenizers and other wrappers keep HF's call."""
    try:
        from tokenizers import Tokenizer
        from transformers import PreTrainedTokenizerFast
    except ImportError:
        return None
    backend = getattr(tokenizer, "_tokenizer", None)
    cls = type(tokenizer)
    if (not isinstance(backend, Tokenizer) or not isinstance(tokenizer, PreTrainedTokenizerFast)
            or cls.decode is not PreTrainedTokenizerFast.decode or cls._decode is not PreTrainedTokenizerFast._decode
            or getattr(tokenizer, "clean_up_tokenization_spaces", True)):
        return None
    return backend.decode


def decode_token(tokenizer, token_id: int) -> str:
    """The text of one token, as shown in logprobs."""
    return tokenizer.decode([token_id])
