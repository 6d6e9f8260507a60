"""gpt-oss's output in OpenAI's harmony format, read from its text (the output decoded with its special tokens).

The model writes messages: ``<|channel|>analysis<|message|>THINKING<|end|>``, then
``<|start|>assistant<|channel|>final<|message|>ANSWER`` (its ``<|return|>`` is the stop token, left out of the text),
or a function call ``<|start|>assistant<|channel|>commentary to=functions.NAME <|constrain|>json<|message|>{...}``
(ended by the stop token ``<|call|>``). The recipient may also sit after the role (``assistant to=functions.NAME
<|channel|>commentary json``, as the chat template renders past calls). As vLLM 0.24 sorts them (its HarmonyParser):
an assistant message to ``functions.*`` is a tool call, the ``analysis`` channel is reasoning, ``final`` and
``commentary`` without a recipient (a preamble shown to the user) are content, anything else (a built-in tool's
call) is dropped. Several messages of one kind are joined by a newline.

Why text and not the ``openai-harmony`` package (vLLM's choice, which parses token ids): its parser needs the
o200k_harmony vocabulary, which it downloads at first use (or reads from a local copy named by an environment
variable); pagedllm serves from local files with no download at run time, and the markers are single special tokens
of gpt-oss's tokenizer, so the text decoded with ``skip_special_tokens=False`` carries the same structure (vLLM's
parser sees the same token ids). Reading text also works with any tokenizer that has these tokens (the tests' tiny
one). A model's output without any harmony header (a model that ignores the format) is returned as content when it
ends, as vLLM recovers it.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Iterable

START, END, MESSAGE, CHANNEL, CONSTRAIN = "<|start|>", "<|end|>", "<|message|>", "<|channel|>", "<|constrain|>"
RETURN, CALL = "<|return|>", "<|call|>"
# The special tokens a tokenizer must have for the parsers (and the two stop tokens vLLM adds for gpt-oss).
SPECIAL_TOKENS = (START, END, MESSAGE, CHANNEL, CONSTRAIN, RETURN, CALL)
STOP_TOKENS = (RETURN, CALL)
_BODY_ENDS = (END, CALL, RETURN, START)


def check_vocab(vocab: dict[str, int], what: str) -> None:
    """ValueError naming the harmony special tokens the tokenizer lacks (``what``: the flag that needs them)."""
    missing = [t for t in SPECIAL_TOKENS if t not in vocab]
    if missing:
        raise ValueError(f"{what} needs gpt-oss's harmony special tokens {', '.join(missing)} in the tokenizer: it "
                         f"is not a gpt-oss tokenizer.")


@dataclass
class HarmonyMessage:
    role: str | None            # None: the output's first message (the prompt wrote "<|start|>assistant")
    channel: str | None
    recipient: str | None
    content_type: str | None
    text: str
    done: bool                  # its end marker came (else the output ends inside it)

    @property
    def kind(self) -> str:
        """"call", "reasoning", "content" or "other" (vLLM's sorting)."""
        if self.role not in (None, "assistant"):
            return "other"
        if self.recipient is not None and self.recipient.startswith("functions."):
            return "call"
        if self.channel == "analysis":
            return "reasoning"
        if self.channel == "final" or (self.channel == "commentary" and self.recipient is None):
            return "content"
        return "other"

    @property
    def function_name(self) -> str:
        return self.recipient[len("functions."):] if self.recipient else ""


def _header(header: str) -> tuple[str | None, str | None, str | None, str | None]:
    """(role, channel, recipient, content type) of a message header."""
    role_part, has_channel, channel_part = header.replace(START, "").partition(CHANNEL)
    role_words = role_part.split()
    channel_words = channel_part.replace(CONSTRAIN, " " + CONSTRAIN).split() if has_channel else []
    recipient = next((w[3:] for w in role_words + channel_words if w.startswith("to=")), None)
    role = role_words[0] if role_words and not role_words[0].startswith("to=") else None
    channel = channel_words[0] if channel_words and not channel_words[0].startswith("to=") else None
    content_type = None
    for w in channel_words[1:]:
        if not w.startswith("to=") and w != CONSTRAIN:
            content_type = w[len(CONSTRAIN):] if w.startswith(CONSTRAIN) else w
    return role, channel, recipient, content_type


def parse_messages(text: str, start: int = 0) -> tuple[list[HarmonyMessage], int, str]:
    """The messages of ``text[start:]`` whose header is complete, the offset where the last unfinished one begins
    (len(text) when every message ended), and the unfinished header at the end ("" when none)."""
    messages: list[HarmonyMessage] = []
    pos, resume = start, len(text)
    while pos < len(text):
        m = text.find(MESSAGE, pos)
        if m < 0:
            return messages, pos, text[pos:]
        body = m + len(MESSAGE)
        ends = [(i, marker) for marker in _BODY_ENDS if (i := text.find(marker, body)) >= 0]
        role, channel, recipient, content_type = _header(text[pos:m])
        if not ends:
            messages.append(HarmonyMessage(role, channel, recipient, content_type, text[body:], False))
            return messages, pos, ""
        end, marker = min(ends)
        messages.append(HarmonyMessage(role, channel, recipient, content_type, text[body:end], True))
        pos = end if marker == START else end + len(marker)
    return messages, resume, ""


def _has_marker(text: str) -> bool:
    return any(t in text for t in SPECIAL_TOKENS)


@dataclass
class HarmonyOutput:
    reasoning: str | None
    content: str | None
    calls: list[tuple[str, object]]   # (function name, arguments: parsed JSON, or the text as written)


def split(text: str) -> HarmonyOutput:
    """A finished output's reasoning, content and function calls (None where there is none, vLLM's)."""
    messages, _, header = parse_messages(text)
    reasoning = [m.text for m in messages if m.kind == "reasoning" and m.text]
    content = [m.text for m in messages if m.kind == "content" and m.text]
    if header and not messages and not _has_marker(header):
        content = [header]          # no harmony at all: the raw output (vLLM's recovery)
    calls = [(m.function_name, normalized_arguments(m.text, m.content_type)) for m in messages if m.kind == "call"]
    return HarmonyOutput("\n".join(reasoning) or None, "\n".join(content) or None, calls)


def count_reasoning_tokens(token_ids: list[int], vocab: dict[str, int], decode) -> int:
    """The output tokens vLLM counts as reasoning in a harmony output (usage's reasoning_tokens): the bodies of
    analysis messages and of tool calls. ``decode``: token ids -> text (each header is read as text)."""
    marker = {vocab[t]: t for t in SPECIAL_TOKENS if t in vocab}
    count, header, counting, in_body = 0, [], False, False
    for token in token_ids:
        kind = marker.get(token)
        if in_body:
            if kind in _BODY_ENDS:
                in_body, header = False, ([token] if kind == START else [])
            elif counting:
                count += 1
        elif kind == MESSAGE:
            role, channel, recipient, content_type = _header(decode(header))
            message = HarmonyMessage(role, channel, recipient, content_type, "", False)
            counting, in_body = message.kind in ("reasoning", "call"), True
        else:
            header.append(token)
    return count


def normalized_arguments(arguments: str, content_type: str | None = "json") -> object:
    """A call's arguments as the tool call carries them: the parsed JSON (so they come out in one form), or the text
    as written when it is not JSON or the message says another content type (vLLM keeps it too)."""
    if content_type is not None and "json" not in content_type:
        return arguments
    try:
        value = json.loads(arguments)
    except ValueError:
        return arguments
    return value if isinstance(value, (dict, list)) else arguments


class HarmonyStream:
    """One output's messages, delta by delta: ``feed`` returns what the new text adds, in order; a message's first
    piece may be "" (its header is whole: a call's name is known). A body tail that may begin an end marker is held
    until the next delta decides."""

    def __init__(self):
        self.text = ""
        self.pos = 0                # where the first message not yet finished begins
        self.sent = 0               # body characters of that message sent
        self.announced = False      # that message's first piece went out
        self.count = 0              # messages seen (finished or not)

    def feed(self, text: str, final: bool = False) -> list[tuple[int, HarmonyMessage, str]]:
        """(the message's number in the output, the message so far, its new body text) of each message the text
        reaches."""
        self.text += text
        messages, resume, header = parse_messages(self.text, self.pos)
        out: list[tuple[int, HarmonyMessage, str]] = []
        for m in messages:
            body = m.text
            if not m.done and not final:
                body = body[:len(body) - partial_tag_tail(body, _BODY_ENDS)]
            piece = body[self.sent:]
            if piece or not self.announced:
                out.append((self.count, m, piece))
            self.sent += len(piece)
            self.announced = True
            if m.done:
                self.count += 1
                self.sent, self.announced = 0, False
        self.pos = resume
        if final and header and self.count == 0 and not messages and not _has_marker(header):
            out.append((0, HarmonyMessage(None, "final", None, None, header, True), header))
        return out


def partial_tag_tail(text: str, tags: Iterable[str]) -> int:
    """Length of the longest end of ``text`` that a tag begins with (0: none): what a stream holds back (the think-tag
    parsers use it too)."""
    for k in range(min(len(text), max(len(t) for t in tags) - 1), 0, -1):
        if any(t.startswith(text[-k:]) for t in tags):
            return k
    return 0
