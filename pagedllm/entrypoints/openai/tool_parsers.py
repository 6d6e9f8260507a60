"""Tool calling on /v1/chat/completions: the constraint for forced calls and the parsers of models' own formats.

- ``tool_choice`` named: the output is the function's arguments, constrained by its ``parameters`` JSON schema.
- ``tool_choice="required"``: the output is a JSON array of ``{"name", "parameters"}`` (at least one), constrained
  by a schema built from the tools (vLLM's layout).
- ``tool_choice="auto"`` (``--enable-auto-tool-choice --tool-call-parser NAME``): the model writes calls in its own
  format, which a parser below takes out of the text.
"""
from __future__ import annotations

import json
import re
from typing import Any

from pagedllm.entrypoints.openai.protocol import RequestError, random_uuid


def tool_call(name: str, arguments: Any) -> dict:
    """One OpenAI tool call; ``arguments`` is a JSON string (the openai client's ``function.arguments``)."""
    if not isinstance(arguments, str):
        arguments = json.dumps(arguments, ensure_ascii=False)
    return {"id": f"chatcmpl-tool-{random_uuid()}", "type": "function",
            "function": {"name": name, "arguments": arguments}}


def _functions(tools: list[dict]) -> dict[str, dict]:
    out = {}
    for i, tool in enumerate(tools):
        fn = tool.get("function") if isinstance(tool, dict) else None
        if tool.get("type", "function") != "function" or not isinstance(fn, dict) or not fn.get("name"):
            raise RequestError(f"tools[{i}] must be {{'type': 'function', 'function': {{'name': ..., "
                               f"'parameters': {{...}}}}}}.", "tools")
        out[fn["name"]] = fn
    return out


def named_tool(tools: list[dict] | None, tool_choice: dict) -> dict:
    """The function a named ``tool_choice`` forces (vLLM's message when it is not among the tools)."""
    name = (tool_choice.get("function") or {}).get("name") if isinstance(tool_choice, dict) else None
    if not name:
        raise RequestError("tool_choice must be 'none', 'auto', 'required' or {'type': 'function', "
                           "'function': {'name': ...}}.", "tool_choice")
    fns = _functions(tools or [])
    if name not in fns:
        raise RequestError(f"Tool '{name}' has not been passed in `tools`.", "tool_choice")
    return fns[name]


def parameters_schema(fn: dict) -> dict:
    return fn.get("parameters") or {"type": "object", "properties": {}}


def required_schema(tools: list[dict]) -> dict:
    """``tool_choice="required"``: an array of one or more calls, each naming one of the tools with its arguments."""
    variants = [{"type": "object",
                 "properties": {"name": {"type": "string", "enum": [name]}, "parameters": parameters_schema(fn)},
                 "required": ["name", "parameters"]} for name, fn in _functions(tools).items()]
    return {"type": "array", "minItems": 1, "items": {"anyOf": variants}}


def calls_from_required(text: str) -> list[dict]:
    return [tool_call(c["name"], c["parameters"]) for c in json.loads(text)]


# ---- parsers of the model's own format (tool_choice="auto") ----------------------------------------------------------
class ToolParser:
    """Finds tool calls in a finished output. ``start`` marks where calls begin: a stream sends the content before
    it as it comes and holds what follows until the end."""
    start: str = ""

    def extract(self, text: str) -> tuple[str | None, list[dict]]:
        """(the content left, the tool calls); no calls when the text has none or they do not parse."""
        raise NotImplementedError

    def call_start(self, text: str) -> int:
        """Where tool calls start in ``text`` (len(text) when they do not, as far as the text goes)."""
        i = text.find(self.start)
        if i >= 0:
            return i
        # A partial marker at the end stays held back too.
        for k in range(min(len(self.start) - 1, len(text)), 0, -1):
            if self.start.startswith(text[-k:]):
                return len(text) - k
        return len(text)


def _calls_from_objects(objects: list) -> list[dict] | None:
    calls = []
    for obj in objects:
        if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
            return None
        args = obj.get("arguments", obj.get("parameters", {}))
        calls.append(tool_call(obj["name"], args))
    return calls


class HermesToolParser(ToolParser):
    """``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``, one block per call (Hermes, Qwen2.5, Qwen3)."""
    start = "<tool_call>"
    _block = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.DOTALL)

    def extract(self, text: str) -> tuple[str | None, list[dict]]:
        i = text.find(self.start)
        if i < 0:
            return text, []
        try:
            calls = _calls_from_objects([json.loads(m) for m in self._block.findall(text[i:])])
        except json.JSONDecodeError:
            return text, []
        if not calls:
            return text, []
        content = text[:i].strip()
        return content or None, calls


class Llama3JsonToolParser(ToolParser):
    """Llama 3.x JSON calls: ``{"name": ..., "parameters": {...}}`` (after ``<|python_tag|>`` or alone), several
    separated by ``;``."""
    start = "<|python_tag|>"

    def call_start(self, text: str) -> int:
        stripped = text.lstrip()
        if stripped.startswith("{"):
            return len(text) - len(stripped)
        return super().call_start(text)

    def extract(self, text: str) -> tuple[str | None, list[dict]]:
        body = text.split(self.start, 1)[1] if self.start in text else text
        body = body.strip()
        if not body.startswith("{"):
            return text, []
        decoder, objects, pos = json.JSONDecoder(), [], 0
        try:
            while pos < len(body):
                obj, pos = decoder.raw_decode(body, pos)
                objects.append(obj)
                while pos < len(body) and body[pos] in " \n\t;":
                    pos += 1
        except json.JSONDecodeError:
            return text, []
        calls = _calls_from_objects(objects)
        return (None, calls) if calls else (text, [])


class MistralToolParser(ToolParser):
    """Mistral: ``[TOOL_CALLS][{"name": ..., "arguments": {...}}, ...]``."""
    start = "[TOOL_CALLS]"

    def extract(self, text: str) -> tuple[str | None, list[dict]]:
        i = text.find(self.start)
        if i < 0:
            return text, []
        try:
            value = json.JSONDecoder().raw_decode(text[i + len(self.start):].strip())[0]
        except json.JSONDecodeError:
            return text, []
        calls = _calls_from_objects(value if isinstance(value, list) else [value])
        if not calls:
            return text, []
        return text[:i].strip() or None, calls


TOOL_PARSERS: dict[str, type[ToolParser]] = {
    "hermes": HermesToolParser,
    "qwen3": HermesToolParser,        # Qwen3's template writes Hermes-style <tool_call> blocks
    "llama3_json": Llama3JsonToolParser,
    "mistral": MistralToolParser,
}


def get_tool_parser(name: str) -> ToolParser:
    if name not in TOOL_PARSERS:
        raise ValueError(f"--tool-call-parser {name!r} is not known; choose one of {', '.join(TOOL_PARSERS)}.")
    return TOOL_PARSERS[name]()
