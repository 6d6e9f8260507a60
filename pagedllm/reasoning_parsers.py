"""Reasoning parsers (``--reasoning-parser NAME``, vLLM's): where a reasoning model's thinking ends and its answer
begins, so the server returns them apart (``message.reasoning`` and ``message.content``) and structured output
constrains only the answer.

Each parser here is vLLM's ``<think>`` ... ``</think>`` logic with its own tags and switches (vLLM 0.24):

- ``deepseek_r1`` (DeepSeek-R1 and its distills, QwQ): a ``<think>`` the model writes is dropped; everything before
  the first ``</think>`` is reasoning, even without a start tag (the R1 distills' template puts ``<think>`` in the
  prompt), everything after it is content. No ``</think>`` (cut by max_tokens): all reasoning.
- ``qwen3`` (and ``mimo``, the same parser in vLLM): the same, plus ``<tool_call>`` ends the thinking (it stays in
  the content, for the tool parser) and a repeated ``</think>`` is dropped from the content; with
  ``chat_template_kwargs.enable_thinking=false`` everything is content.
  The output keeps special tokens (vLLM's parser sets skip_special_tokens=False).
- ``deepseek_v3`` / ``deepseek_v4`` (DeepSeek-V3.1+): deepseek_r1's logic when the request's chat_template_kwargs
  set ``thinking`` (or ``enable_thinking``), else everything is content; ``holo2``: the same, thinking unless the
  request turns it off.

- ``openai_gptoss`` (gpt-oss): no think tags but OpenAI's harmony channels (pagedllm/harmony.py): the ``analysis``
  channel is reasoning, ``final`` (and commentary preambles) content; the server reads them, and the ``openai`` tool
  parser's calls, in one pass over the output's text (vLLM's HarmonyParser does the same from token ids). The model
  always thinks; grammars and thinking_token_budget are refused with it (no single token ends its thinking).

A prompt whose last think tag is ``</think>`` (the template closed the thinking, as Qwen3's does for
enable_thinking=false) has its whole output as content. The split works on text (a tag split across stream deltas
is held back until it is whole); the engine's structured-output gate (engine/structured_output.py) works on the
tags' token ids, which the tokenizer must have (vLLM's requirement too).

Plain data, no imports of the layers above: the config checks the name, the engine core gates grammars, the server
splits the text.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from pagedllm import harmony
from pagedllm.harmony import END, MESSAGE, partial_tag_tail


@dataclass(frozen=True)
class ReasoningParser:
    name: str
    start: str = "<think>"
    end: str = "</think>"
    # Tags that end the thinking too and stay in the content (qwen3: a tool call written without </think>).
    implicit_ends: tuple[str, ...] = ()
    # chat_template_kwargs that switch thinking on or off per request, and the answer when none of them is set.
    thinking_switches: tuple[str, ...] = ()
    thinking_default: bool = True
    keeps_special_tokens: bool = False
    # qwen3: an end tag repeated after the thinking ended is dropped from the content (vLLM's qwen3 engine).
    drops_repeated_end: bool = False

    def thinking(self, chat_template_kwargs: dict[str, Any] | None) -> bool:
        """Does this request think (its output starts as reasoning)? vLLM's rule: any switch given decides (one
        set true turns it on), else the parser's default."""
        kwargs = chat_template_kwargs or {}
        given = [kwargs[k] for k in self.thinking_switches if kwargs.get(k) is not None]
        return any(bool(v) for v in given) if given else self.thinking_default

    def token_ids(self, vocab: dict[str, int]) -> tuple[int, int, tuple[int, ...]]:
        """(start id, end id, implicit end ids) in the tokenizer's vocabulary; ValueError when a tag is not one
        token (vLLM refuses such a tokenizer too)."""
        start, end = vocab.get(self.start), vocab.get(self.end)
        if start is None or end is None:
            raise ValueError(f"The {self.name} reasoning parser could not locate the think start/end tokens "
                             f"{self.start!r} / {self.end!r} in the tokenizer: it is not a {self.name} model's "
                             f"tokenizer (see --reasoning-parser).")
        return start, end, tuple(vocab[t] for t in self.implicit_ends if t in vocab)

    def stream(self, reasoning_ended: bool = False) -> "ReasoningStream":
        return ReasoningStream(self, reasoning_ended)

    def split(self, text: str, reasoning_ended: bool = False) -> tuple[str | None, str | None]:
        """(reasoning, content) of a whole output; None where there is none (vLLM's null fields). Reasoning
        that is only an empty think block is "" (vLLM's too)."""
        stream = self.stream(reasoning_ended)
        reasoning, content = stream.feed(text, final=True)
        if not stream.saw_reasoning:
            return None, content or None
        return reasoning, content or None


@dataclass(frozen=True)
class HarmonyReasoningParser(ReasoningParser):
    """openai_gptoss: the harmony format's channels (pagedllm/harmony.py), not think tags. ``split`` gives a finished
    output's (reasoning, content); the server streams harmony outputs with its own reader (calls too), so ``stream``
    is not this parser's (vLLM's raises the same way)."""
    keeps_special_tokens: bool = True

    def token_ids(self, vocab: dict[str, int]) -> tuple[int, int, tuple[int, ...]]:
        """(<|message|>, <|end|>, ()); ValueError when the tokenizer lacks harmony's special tokens."""
        harmony.check_vocab(vocab, f"--reasoning-parser {self.name}")
        return vocab[MESSAGE], vocab[END], ()

    def stream(self, reasoning_ended: bool = False) -> "ReasoningStream":
        raise NotImplementedError("openai_gptoss: the server reads harmony messages (pagedllm/harmony.py)")

    def split(self, text: str, reasoning_ended: bool = False) -> tuple[str | None, str | None]:
        out = harmony.split(text)
        return out.reasoning, out.content


def last_think_tag(prompt_ids: Sequence[int], start_id: int, end_id: int) -> tuple[int, int | None]:
    """(position, token) of the prompt's last think tag, start or end; (-1, None) when it has none."""
    for i in range(len(prompt_ids) - 1, -1, -1):
        if prompt_ids[i] == start_id or prompt_ids[i] == end_id:
            return i, prompt_ids[i]
    return -1, None


def prompt_ends_reasoning(prompt_ids: Sequence[int], start_id: int, end_id: int) -> bool:
    """Has the prompt already closed the thinking (its last think tag is the end tag)? vLLM's is_reasoning_end."""
    return last_think_tag(prompt_ids, start_id, end_id)[1] == end_id


def count_reasoning_tokens(token_ids: Sequence[int], start_id: int, end_id: int) -> int:
    """The output tokens inside start ... end tags (vLLM's count for the Responses API's
    usage.output_tokens_details.reasoning_tokens: thinking that the prompt opened is not counted)."""
    count = depth = 0
    for token in token_ids:
        if token == start_id:
            depth += 1
        elif token == end_id:
            depth = max(depth - 1, 0)
        elif depth:
            count += 1
    return count


class ReasoningStream:
    """One output's split, delta by delta: ``feed`` returns the (reasoning, content) text that the delta adds. A
    tail that may be the start of a tag is held until the next delta decides (or the output ends)."""

    def __init__(self, parser: ReasoningParser, reasoning_ended: bool = False):
        self.parser = parser
        self.thinking = not reasoning_ended
        self.saw_reasoning = False          # the output had a thinking part (a tag, or text before </think>)
        self.held = ""
        self.content_held = ""              # drops_repeated_end: a tail of the content that may begin </think>
        self._tags = (parser.start, parser.end, *parser.implicit_ends)

    def feed(self, text: str, final: bool = False) -> tuple[str, str]:
        if not self.thinking:
            return "", self._content(text, final)
        buf, self.held = self.held + text, ""
        reasoning = ""
        p = self.parser
        while True:
            hits = [(i, tag) for tag in self._tags if (i := buf.find(tag)) >= 0]
            if not hits:
                break
            pos, tag = min(hits)
            reasoning += buf[:pos]
            self.saw_reasoning = True
            if tag == p.start:              # a start tag the model writes itself is dropped
                buf = buf[pos + len(tag):]
                continue
            self.thinking = False
            return reasoning, self._content(buf[pos + len(tag):] if tag == p.end else buf[pos:], final)
        if not final:
            keep = partial_tag_tail(buf, self._tags)
            self.held = buf[len(buf) - keep:]
            buf = buf[:len(buf) - keep]
        reasoning += buf
        if reasoning:
            self.saw_reasoning = True
        return reasoning, ""

    def _content(self, text: str, final: bool) -> str:
        if not (self.parser.drops_repeated_end and self.saw_reasoning):
            return text
        end = self.parser.end
        buf = (self.content_held + text).replace(end, "")
        keep = 0 if final else partial_tag_tail(buf, (end,))
        self.content_held = buf[len(buf) - keep:]
        return buf[:len(buf) - keep]


_QWEN3 = dict(implicit_ends=("<tool_call>",), thinking_switches=("enable_thinking",), keeps_special_tokens=True,
              drops_repeated_end=True)
_DEEPSEEK_V3 = dict(thinking_switches=("thinking", "enable_thinking"), thinking_default=False)

REASONING_PARSERS: dict[str, ReasoningParser] = {
    "deepseek_r1": ReasoningParser("deepseek_r1"),
    "qwen3": ReasoningParser("qwen3", **_QWEN3),
    "mimo": ReasoningParser("mimo", **_QWEN3),                  # vLLM registers qwen3's parser under this name too
    "deepseek_v3": ReasoningParser("deepseek_v3", **_DEEPSEEK_V3),
    "deepseek_v4": ReasoningParser("deepseek_v4", **_DEEPSEEK_V3),
    "holo2": ReasoningParser("holo2", **{**_DEEPSEEK_V3, "thinking_default": True}),
    "openai_gptoss": HarmonyReasoningParser("openai_gptoss"),
}


def get_reasoning_parser(name: str) -> ReasoningParser:
    """The parser of ``--reasoning-parser NAME``; ValueError naming the known ones."""
    if name not in REASONING_PARSERS:
        # vLLM's words, and why a name vLLM knows may be missing here.
        raise ValueError(f"invalid reasoning parser: {name} (choose from {{ {','.join(REASONING_PARSERS)} }}; "
                         f"vLLM's other reasoning parsers read formats of their own, not supported yet).")
    return REASONING_PARSERS[name]
