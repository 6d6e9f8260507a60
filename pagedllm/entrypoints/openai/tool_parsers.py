"""Tool calling on /v1/chat/completions: the constraint for forced calls and the parsers of models' own formats.

- ``tool_choice`` named: the output is the function's arguments, constrained by its ``parameters`` JSON schema.
- ``tool_choice="required"``: the output is a JSON array of ``{"name", "parameters"}`` (at least one), constrained
  by a schema built from the tools (vLLM's layout).
- ``tool_choice="auto"`` (``--enable-auto-tool-choice --tool-call-parser NAME``): the model writes calls in its own
  format, which a parser below takes out of the text.
"""
from __future__ import annotations

import ast
import json
import random
import re
import string
import uuid
from dataclasses import dataclass
from typing import Any

from pagedllm import harmony
from pagedllm.entrypoints.openai.protocol import RequestError, random_uuid


def make_tool_call_id() -> str:
    """vLLM's default tool call id."""
    return f"chatcmpl-tool-{random_uuid()}"


def tool_call(name: str, arguments: Any, call_id: str | None = None) -> dict:
    """One OpenAI tool call; ``arguments`` is a JSON string (the openai client's ``function.arguments``)."""
    if not isinstance(arguments, str):
        arguments = json.dumps(arguments, ensure_ascii=False)
    return {"id": call_id or make_tool_call_id(), "type": "function",
            "function": {"name": name, "arguments": arguments}}


def functions_by_name(tools: list[dict]) -> dict[str, dict]:
    """The tools' function definitions by name; RequestError (param "tools") for a tool that is not OpenAI's
    ``{"type": "function", "function": {"name": str, "description"?: str, "parameters"?: object}}`` (vLLM's
    pydantic model refuses it too, whatever tool_choice says)."""
    out = {}
    for i, tool in enumerate(tools):
        fn = tool.get("function") if isinstance(tool, dict) else None
        if (not isinstance(tool, dict) or tool.get("type", "function") != "function" or not isinstance(fn, dict)
                or not isinstance(fn.get("name"), str) or not fn["name"]):
            raise RequestError(f"tools[{i}] must be {{'type': 'function', 'function': {{'name': ..., "
                               f"'parameters': {{...}}}}}}.", "tools")
        if fn.get("parameters") is not None and not isinstance(fn["parameters"], dict):
            raise RequestError(f"tools[{i}].function.parameters must be a JSON schema object, got "
                               f"{type(fn['parameters']).__name__}.", "tools")
        if fn.get("description") is not None and not isinstance(fn["description"], str):
            raise RequestError(f"tools[{i}].function.description must be a string.", "tools")
        out[fn["name"]] = fn
    return out


def template_tools(tools: list[dict] | None) -> list[dict] | None:
    """The tools as a chat template sees them on /v1/chat/completions and /tokenize: as vLLM's request model dumps
    them, ``{"type": "function", "function": {"name", "description", "parameters"}}`` in that order with null for a
    field the request left out (templates that write ``tool | tojson`` put it in the prompt), then ``strict`` when
    given; other keys are dropped. The tools were checked by ``functions_by_name``."""
    if tools is None:
        return None
    out = []
    for tool in tools:
        fn = tool["function"]
        function = {"name": fn["name"], "description": fn.get("description"), "parameters": fn.get("parameters")}
        if fn.get("strict") is not None:
            function["strict"] = fn["strict"]
        out.append({"type": "function", "function": function})
    return out


_NAMED_USAGE = 'Correct usage: `{"type": "function", "function": {"name": "my_function"}}`'


def named_tool(tools: list[dict] | None, tool_choice: Any) -> dict:
    """The function a named ``tool_choice`` forces; RequestError with vLLM's messages for a malformed choice or a
    name that is not among the tools."""
    if not isinstance(tool_choice, dict):
        raise RequestError(f'Invalid value for `tool_choice`: {tool_choice}! Only named tools, "none", "auto" or '
                           f'"required" are supported.', "tool_choice")
    function = tool_choice.get("function")
    if not isinstance(function, dict):
        raise RequestError(f"Invalid value for `function`: `{function}` in `tool_choice`! {_NAMED_USAGE}",
                           "tool_choice.function")
    if "name" not in function:
        raise RequestError(f"Expected field `name` in `function` in `tool_choice`! {_NAMED_USAGE}",
                           "tool_choice.function.name")
    name = function["name"]
    if not isinstance(name, str) or not name:
        raise RequestError(f"Invalid `name` in `function`: `{name}` in `tool_choice`! {_NAMED_USAGE}",
                           "tool_choice.function.name")
    fns = functions_by_name(tools or [])
    if name not in fns:
        raise RequestError("The tool specified in `tool_choice` does not match any of the specified `tools`",
                           "tool_choice")
    return fns[name]


def parameters_schema(fn: dict) -> dict:
    return fn.get("parameters") or {"type": "object", "properties": {}}


def required_schema(tools: list[dict], parallel: bool = True) -> dict:
    """``tool_choice="required"``: an array of one or more calls (exactly one with ``parallel=False``, the request's
    ``parallel_tool_calls``), each naming one of the tools with its arguments. The tools' ``$defs`` (pydantic writes
    them for nested models and enums) move to the root, where their ``#/$defs/...`` references point (vLLM does the
    same); one name defined differently by two tools is a 400."""
    variants, defs = [], {}
    for name, fn in functions_by_name(tools).items():
        params = dict(parameters_schema(fn))
        for key in ("$defs", "definitions"):
            for def_name, def_schema in (params.pop(key, None) or {}).items():
                if defs.setdefault(key, {}).setdefault(def_name, def_schema) != def_schema:
                    raise RequestError(f"Tool definition '{def_name}' has multiple schemas, which is not supported.",
                                       "tools")
        variants.append({"type": "object",
                         "properties": {"name": {"type": "string", "enum": [name]}, "parameters": params},
                         "required": ["name", "parameters"]})
    schema = {"type": "array", "minItems": 1, "items": {"anyOf": variants}, **defs}
    if not parallel:
        schema["maxItems"] = 1
    return schema


def calls_from_required(text: str) -> list[dict]:
    return [tool_call(c["name"], c["parameters"]) for c in json.loads(text)]


def required_call_nodes(text: str) -> list["JsonNode"]:
    """``tool_choice="required"``: the call objects of the (partial) JSON array generated so far."""
    return parse_partial_json(text, 0).items or []


# ---- streaming: tool calls read from a prefix of the output ------------------------------------------------------
# A stream sends each call's name once it is complete and then its arguments piece by piece, as JSON text in
# ``json.dumps`` form (", " and ": " separators, ensure_ascii=False): the form the finished response's
# ``tool_call`` gives them, so the pieces concatenate to the non-streamed arguments (for valid JSON without
# duplicate keys). Each piece is what can no longer change: a number or literal once it has ended, a string's
# characters as they come (an escape once it is whole), a separator once the next member has begun.
_JSON_WS = " \t\n\r"


@dataclass
class JsonNode:
    """A JSON value in a prefix of a text: where it starts, where it ends (None while the text ends inside it, or
    when it does not parse), and its members (object) or items (array) read so far."""
    start: int
    end: int | None = None
    members: list[tuple[str, "JsonNode"]] | None = None
    items: list["JsonNode"] | None = None


def _skip_ws(text: str, i: int) -> int:
    while i < len(text) and text[i] in _JSON_WS:
        i += 1
    return i


def _string_end(text: str, i: int) -> int | None:
    """The index after the string starting at ``text[i] == '"'``; None when the text ends inside it."""
    j = i + 1
    while j < len(text):
        if text[j] == "\\":
            j += 2
        elif text[j] == '"':
            return j + 1
        else:
            j += 1
    return None


def parse_partial_json(text: str, i: int) -> JsonNode:
    """The JSON value starting at ``text[i]`` (after whitespace), read as far as the text goes."""
    i = _skip_ws(text, i)
    node = JsonNode(i)
    if i >= len(text):
        return node
    c = text[i]
    if c == '"':
        node.end = _string_end(text, i)
    elif c in "{[":
        is_object = c == "{"
        close = "}" if is_object else "]"
        if is_object:
            node.members = []
        else:
            node.items = []
        j = _skip_ws(text, i + 1)
        if j < len(text) and text[j] == close:
            node.end = j + 1
            return node
        while True:
            if is_object:
                j = _skip_ws(text, j)
                key_end = _string_end(text, j) if j < len(text) and text[j] == '"' else None
                if key_end is None:
                    return node
                try:
                    key = json.loads(text[j:key_end])
                except ValueError:
                    return node
                j = _skip_ws(text, key_end)
                if j >= len(text) or text[j] != ":":
                    return node
                value = parse_partial_json(text, j + 1)
                node.members.append((key, value))
            else:
                value = parse_partial_json(text, j)
                node.items.append(value)
            if value.end is None:
                return node
            j = _skip_ws(text, value.end)
            if j >= len(text):
                return node
            if text[j] == close:
                node.end = j + 1
                return node
            if text[j] != ",":
                return node        # not JSON: stays incomplete, the finished output decides
            j += 1
    else:   # number, true, false, null: ended by a delimiter (at the text's end it may still grow)
        j = i
        while j < len(text) and text[j] not in _JSON_WS + ",]}":
            j += 1
        node.end = j if j < len(text) else None
    return node


def _partial_string(raw: str) -> str:
    """``json.dumps`` form of an unfinished string's characters so far, without a trailing escape that is not whole
    (a surrogate pair counts as one escape)."""
    safe = j = 1
    while j < len(raw):
        if raw[j] == "\\":
            if raw[j + 1:j + 2] == "u":
                try:
                    code = int(raw[j + 2:j + 6], 16) if len(raw) >= j + 6 else None
                except ValueError:
                    break
                if code is None or (0xD800 <= code < 0xDC00 and len(raw) < j + 12):
                    break
                j += 12 if 0xD800 <= code < 0xDC00 else 6
            elif j + 1 < len(raw):
                j += 2
            else:
                break
        else:
            j += 1
        safe = j
    try:
        return json.dumps(json.loads(raw[:safe] + '"'), ensure_ascii=False)[:-1]
    except ValueError:
        return ""


def render_stable_json(text: str, node: JsonNode) -> str:
    """The part of the value's ``json.dumps`` form that the text so far fixes (all of it once it is complete)."""
    if node.members is not None or node.items is not None:
        is_object = node.members is not None
        out = "{" if is_object else "["
        children = node.members if is_object else [(None, item) for item in node.items]
        for k, (key, value) in enumerate(children):
            if k:
                out += ", "
            if is_object:
                out += json.dumps(key, ensure_ascii=False) + ": "
            out += render_stable_json(text, value)
            if value.end is None:
                return out
        return out + ("}" if is_object else "]") if node.end is not None else out
    if node.start >= len(text):
        return ""
    if node.end is None:
        return _partial_string(text[node.start:]) if text[node.start] == '"' else ""
    raw = text[node.start:node.end]
    try:
        return json.dumps(json.loads(raw), ensure_ascii=False)
    except ValueError:
        return raw


def stream_calls(text: str, call_nodes: list[JsonNode]) -> list[tuple[str, str]]:
    """(name, stable arguments) of each call whose name is complete, in order; a call whose name is not yet complete
    ends the list. The arguments are the call's "arguments" (or "parameters") member."""
    out = []
    for node in call_nodes:
        if node.members is None:
            break
        members = dict(node.members)
        name = members.get("name")
        if name is None or name.end is None or text[name.start] != '"':
            break
        args = members.get("arguments", members.get("parameters"))
        out.append((json.loads(text[name.start:name.end]), render_stable_json(text, args) if args else ""))
    return out


# ---- parsers of the model's own format (tool_choice="auto") ----------------------------------------------------------
class ToolParser:
    """Finds tool calls in a finished output. ``start`` marks where calls begin: a stream sends the content before
    it as it comes and the calls after it as they are generated (``call_nodes``).

    ``trigger`` and ``call_tag``: how one call is written, for ``strict`` tools under tool_choice="auto"
    (``strict_structural_tag``); None where the format has no JSON arguments to constrain."""
    start: str = ""
    trigger: str | None = None
    keeps_special_tokens = False        # the call marker is a special token: the output must keep them

    def call_tag(self, name: str) -> tuple[str, str]:
        """The text before a call's JSON arguments and after them."""
        raise NotImplementedError

    def new_call_id(self) -> str:
        """The id of a call this parser finds (the model's chat template may require a form)."""
        return make_tool_call_id()

    def extract(self, text: str, tools: list[dict] | None = None) -> tuple[str | None, list[dict]]:
        """(the content left, the tool calls); no calls when the text has none or they do not parse. ``tools``: the
        request's (checked by ``functions_by_name``), for formats whose arguments are typed by them."""
        raise NotImplementedError

    def call_nodes(self, text: str) -> list[JsonNode]:
        """The call objects in an unfinished output, as far as they go (for streaming)."""
        nodes, i = [], text.find(self.start)
        while i >= 0:
            nodes.append(parse_partial_json(text, i + len(self.start)))
            i = text.find(self.start, i + len(self.start))
        return nodes

    def partial_calls(self, text: str, tools: list[dict] | None = None) -> list[tuple[str, str]]:
        """A stream's view of an unfinished output: each call as (name, its arguments' JSON so far, a prefix of the
        finished call's)."""
        return stream_calls(text, self.call_nodes(text))

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


def _calls_from_objects(objects: list, parser: ToolParser) -> list[dict] | None:
    calls = []
    for obj in objects:
        if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
            return None
        args = obj.get("arguments", obj.get("parameters", {}))
        calls.append(tool_call(obj["name"], args, parser.new_call_id()))
    return calls


class HermesToolParser(ToolParser):
    """``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``, one block per call (Hermes, Qwen2.5, Qwen3)."""
    start = "<tool_call>"
    trigger = "<tool_call>"
    keeps_special_tokens = True         # <tool_call> is a special token in some tokenizers (vLLM's hermes parser)

    def call_tag(self, name: str) -> tuple[str, str]:
        # The spacing of Hermes' and Qwen's chat templates (xgrammar's "qwen_3" structural tag).
        return f'<tool_call>\n{{"name": {json.dumps(name, ensure_ascii=False)}, "arguments": ', "}\n</tool_call>"
    _block = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.DOTALL)

    def extract(self, text: str, tools: list[dict] | None = None) -> tuple[str | None, list[dict]]:
        i = text.find(self.start)
        if i < 0:
            return text, []
        try:
            calls = _calls_from_objects([json.loads(m) for m in self._block.findall(text[i:])], self)
        except json.JSONDecodeError:
            return text, []
        if not calls:
            return text, []
        # The text before the first call, as written (vLLM's: not stripped; None when there is none), the same text
        # a stream sends as content.
        return text[:i] or None, calls


class Llama3JsonToolParser(ToolParser):
    """Llama 3.x JSON calls: ``{"name": ..., "parameters": {...}}`` (after ``<|python_tag|>`` or alone), several
    separated by ``;``. As vLLM's parser, every such object in the output is a call and the text around them is
    dropped (a sentence before or after the call); a brace that does not open a call object leaves the whole output
    as content. A stream sends the text before the first brace as content."""
    start = "<|python_tag|>"
    trigger = '{"name": '

    def call_tag(self, name: str) -> tuple[str, str]:
        return f'{{"name": {json.dumps(name, ensure_ascii=False)}, "parameters": ', "}"

    def call_start(self, text: str) -> int:
        brace = text.find("{")
        tag = super().call_start(text)
        return min(brace, tag) if brace >= 0 else tag

    def call_nodes(self, text: str) -> list[JsonNode]:
        i = self.call_start(text)
        if text.startswith(self.start, i):
            i += len(self.start)
        nodes = []
        while i < len(text):
            node = parse_partial_json(text, i)
            nodes.append(node)
            if node.end is None:
                break
            i = node.end
            while i < len(text) and text[i] in " \n\t;":
                i += 1
        return nodes

    def extract(self, text: str, tools: list[dict] | None = None) -> tuple[str | None, list[dict]]:
        decoder, objects, end = json.JSONDecoder(), [], -1
        for match in re.finditer("{", text):
            if match.start() < end:
                continue            # inside the object before
            try:
                obj, end = decoder.raw_decode(text, match.start())
            except json.JSONDecodeError:
                return text, []
            objects.append(obj)
        calls = _calls_from_objects(objects, self) if objects else None
        return (None, calls) if calls else (text, [])


class MistralToolParser(ToolParser):
    """Mistral: ``[TOOL_CALLS][{"name": ..., "arguments": {...}}, ...]`` (tokenizers before v11) or, one marker per
    call, ``[TOOL_CALLS]name{...}`` / ``[TOOL_CALLS]name[ARGS]{...}`` (v11 and later: Mistral Small 3.2, Magistral,
    Devstral). The marker is a special token: the output keeps special tokens (``keeps_special_tokens``), as vLLM
    makes it do. Calls in the later format are streamed whole when the output ends. The text before the first
    marker is the message's content, as written."""
    start = "[TOOL_CALLS]"
    keeps_special_tokens = True

    def new_call_id(self) -> str:
        # Nine letters and digits, as vLLM's mistral parser: Mistral's chat templates refuse any other tool call id
        # when the call comes back in the next request ("Tool call IDs should be alphanumeric strings with length 9").
        return "".join(random.choices(string.ascii_letters + string.digits, k=9))

    def extract(self, text: str, tools: list[dict] | None = None) -> tuple[str | None, list[dict]]:
        i = text.find(self.start)
        if i < 0:
            return text, []
        after = text[i + len(self.start):].strip()
        if after[:1] not in ("[", "{"):
            return self._extract_named(text, i)
        try:
            value = json.JSONDecoder().raw_decode(after)[0]
        except json.JSONDecodeError:
            return text, []
        calls = _calls_from_objects(value if isinstance(value, list) else [value], self)
        if not calls:
            return text, []
        return text[:i] or None, calls          # as written, as Hermes' (vLLM's)

    def _extract_named(self, text: str, i: int) -> tuple[str | None, list[dict]]:
        """``[TOOL_CALLS]name{args}`` blocks; arguments that do not parse stay as written (vLLM keeps them too, so
        the model sees in the next turn that it tried a call)."""
        calls = []
        for raw in text[i:].split(self.start)[1:]:
            brace = raw.find("{")
            if brace < 0:
                continue
            name, args = raw[:brace].replace("[ARGS]", "").strip(), raw[brace:].strip()
            try:
                args = json.JSONDecoder().raw_decode(args)[0]
            except json.JSONDecodeError:
                pass
            calls.append(tool_call(name, args, self.new_call_id()))
        if not calls:
            return text, []
        return text[:i] or None, calls          # as written, as Hermes' (vLLM's)

    def call_nodes(self, text: str) -> list[JsonNode]:
        i = text.find(self.start)
        if i < 0 or text[i + len(self.start):].lstrip()[:1] not in ("[", "{"):
            return []       # nothing yet, or the later format: sent whole at the end
        node = parse_partial_json(text, i + len(self.start))
        return node.items if node.items is not None else [node]


class PythonicToolParser(ToolParser):
    """Python call syntax, the whole output one list: ``[get_weather(city="Paris"), get_time()]`` (Llama 3.2 and
    Llama 4 prompts; vLLM's ``pythonic`` and ``llama4_pythonic``, the latter inside ``<|python_start|>`` ...
    ``<|python_end|>``). Keyword arguments with literal values (strings, numbers, True / False / None, lists, dicts).
    A stream holds an output that starts like a call list and sends its calls whole when it ends (an output that
    turns out not to be one is sent as content then)."""
    start = "["
    _tags = ("<|python_start|>", "<|python_end|>")

    def call_start(self, text: str) -> int:
        stripped, begin = text.lstrip(), self._tags[0]
        if stripped.startswith("[") or begin.startswith(stripped[:len(begin)]):      # a list, or its tag so far
            return len(text) - len(stripped)
        return len(text)

    def call_nodes(self, text: str) -> list[JsonNode]:
        return []

    def extract(self, text: str, tools: list[dict] | None = None) -> tuple[str | None, list[dict]]:
        body = text.strip()
        for tag in self._tags:
            body = body.replace(tag, "")
        body = body.strip()
        if not (body.startswith("[") and body.endswith("]")):
            return text, []
        try:
            tree = ast.parse(body, mode="eval").body
            if not isinstance(tree, ast.List) or not tree.elts:
                return text, []
            calls = []
            for node in tree.elts:
                if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name) or node.args:
                    return text, []
                args = {kw.arg: ast.literal_eval(kw.value) for kw in node.keywords if kw.arg is not None}
                calls.append(tool_call(node.func.id, args, self.new_call_id()))
        except (SyntaxError, ValueError, TypeError, MemoryError, RecursionError):
            return text, []
        return None, calls


def _parses(text: str) -> bool:
    try:
        json.loads(text)
        return True
    except json.JSONDecodeError:
        return False


class XLAMToolParser(ToolParser):
    """xLAM-2 (Salesforce; vLLM's ``xlam``): a JSON array of ``{"name": ..., "arguments": {...}}``, the whole output
    or in a ```json code block, after ``[TOOL_CALLS]``, inside ``<tool_call>...</tool_call>``, or after
    ``</think>``. A stream sends an output-long array's calls as they are generated and the other forms whole when
    the output ends (text before them streams as content)."""
    start = "["
    _blocks = (re.compile(r"```(?:json)?\s*([\s\S]*?)```"), re.compile(r"\[TOOL_CALLS\]([\s\S]*?)(?=\n|$)"),
               re.compile(r"<tool_call>([\s\S]*?)</tool_call>"))
    _markers = ("```", "[TOOL_CALLS]", "<tool_call>", "</think>")

    def call_start(self, text: str) -> int:
        stripped = text.lstrip()
        if stripped.startswith("["):
            return len(text) - len(stripped)
        found = [i for i in (text.find(m) for m in self._markers) if i >= 0]
        if found:
            return min(found)
        for k in range(min(max(map(len, self._markers)) - 1, len(text)), 0, -1):     # a marker begun at the end
            if any(m.startswith(text[-k:]) for m in self._markers):
                return len(text) - k
        return len(text)

    def call_nodes(self, text: str) -> list[JsonNode]:
        stripped = text.lstrip()
        if not stripped.startswith("[") or stripped[1:].lstrip()[:1] not in ("{", ""):
            return []       # not an array of call objects (yet), or [TOOL_CALLS]: sent whole at the end
        return parse_partial_json(text, len(text) - len(stripped)).items or []

    def _split(self, text: str) -> tuple[str | None, str | None]:
        """(the content, the JSON text of the calls) as vLLM's preprocessing finds them; (text, None): no calls."""
        think = text.find("</think>")
        if think >= 0:
            head, rest = text[:think + len("</think>")].strip(), text[think + len("</think>"):].strip()
            if _parses(rest):
                return head, rest
            for block in self._blocks:
                found = next((m for m in block.findall(rest) if _parses(m)), None)
                if found is not None:
                    return head, found
        for block in self._blocks:
            found = next((m for m in block.findall(text) if _parses(m)), None)
            if found is not None:
                return block.sub("", text).strip(), found
        if text.strip().startswith("[") and _parses(text):
            return None, text
        return text, None

    def extract(self, text: str, tools: list[dict] | None = None) -> tuple[str | None, list[dict]]:
        content, body = self._split(text)
        value = json.loads(body) if body is not None else None
        if not isinstance(value, list):
            return text, []
        calls = _calls_from_objects([c for c in value if isinstance(c, dict) and "name" in c and "arguments" in c],
                                    self)
        if not calls:
            return text, []
        return content or None, calls


class OpenAIToolParser(ToolParser):
    """gpt-oss (vLLM's ``openai``): harmony messages to ``functions.NAME`` on the commentary channel are calls, their
    body the JSON arguments (pagedllm/harmony.py); the content is the final channel's text (and preambles), never
    the reasoning. The markers are special tokens: the output keeps them. The server reads a harmony output in one
    pass (reasoning, content and calls, streamed or not: serving_chat's harmony branch), so the prefix methods
    below are not used."""
    keeps_special_tokens = True

    def extract(self, text: str, tools: list[dict] | None = None) -> tuple[str | None, list[dict]]:
        out = harmony.split(text)
        return out.content, [tool_call(name, args, self.new_call_id()) for name, args in out.calls]

    def call_start(self, text: str) -> int:
        return len(text)

    def call_nodes(self, text: str) -> list[JsonNode]:
        return []


class Qwen3CoderToolParser(ToolParser):
    """Qwen3-Coder and Qwen3.5's XML calls (vLLM's ``qwen3_coder`` and ``qwen3_xml``), one block per call::

        <tool_call>
        <function=get_weather>
        <parameter=city>
        Paris
        </parameter>
        </function>
        </tool_call>

    A parameter's value is text, typed by the tool's schema as vLLM types it: kept as written for a string (or a
    parameter the schema does not name), int / float / bool for those types, JSON (else a Python literal) for an
    object or array, null for "null" / "None" where the type is not a string or the schema admits null. A
    ``</parameter>`` / ``</tool_call>`` counts as the end only where the next tag (or the end of the text) follows,
    so a value may hold those words; a value whose ``</parameter>`` is missing runs to the next parameter. The text
    before the first call is the content, as written. A stream sends that content as it comes, then each call's
    name and its parameters as their ends become certain (``partial_calls``)."""
    start = "<tool_call>"
    _end = "</tool_call>"
    _function = "<function="
    _param = "<parameter="
    _param_end = "</parameter>"
    _function_end = "</function>"
    _string_types = ("string", "str", "text", "varchar", "char", "enum")

    def new_call_id(self) -> str:
        return f"call_{uuid.uuid4().hex[:24]}"         # vLLM's qwen3_coder ids

    def call_nodes(self, text: str) -> list[JsonNode]:
        return []       # XML, not JSON: partial_calls reads it

    def extract(self, text: str, tools: list[dict] | None = None) -> tuple[str | None, list[dict]]:
        if self._function not in text:
            return text, []
        fns = functions_by_name(tools or [])
        calls, first = [], None
        for start, block, _ in self._blocks(text):
            parsed = self._parse(block, fns, final=True)
            if parsed is not None:
                calls.append(tool_call(parsed[0], parsed[1], self.new_call_id()))
                first = start if first is None else first
        if not calls:
            return text, []
        if first is None or first < 0:      # calls written without <tool_call>: the content ends at <function=
            first = text.find(self._function)
        return text[:first] or None, calls

    def partial_calls(self, text: str, tools: list[dict] | None = None) -> list[tuple[str, str]]:
        """Each call once its name is whole, with its parameters as far as their end is certain (a closing tag with
        the next tag after it), in order: ``{"city": "Paris"`` then ``, "days": 3``, and ``}`` once the block
        closes, as vLLM streams them. Calls written without <tool_call> go out when the output ends."""
        fns = functions_by_name(tools or [])
        out = []
        for start, block, closed in self._blocks(text):
            parsed = self._parse(block, fns, final=closed) if start >= 0 else None
            if parsed is None:
                if closed and start >= 0:
                    continue        # no call in this block (the finished output skips it too)
                break
            name, args, complete = parsed
            arguments = json.dumps(args, ensure_ascii=False)
            out.append((name, arguments if complete else arguments[:-1]))
            if not complete:
                break
        return out

    def _blocks(self, text: str) -> list[tuple[int, str, bool]]:
        """(where each <tool_call> starts, its body, whether it is closed); the whole text (at -1) when there is
        none, as vLLM's."""
        blocks, pos = [], 0
        while (i := text.find(self.start, pos)) >= 0:
            body = i + len(self.start)
            end = self._closing(text, self._end, body, (self.start,))
            blocks.append((i, text[body:] if end < 0 else text[body:end], end >= 0))
            if end < 0:
                break
            pos = end + len(self._end)
        return blocks or [(-1, text, True)]

    @staticmethod
    def _closing(text: str, tag: str, pos: int, then: tuple[str, ...]) -> int:
        """The first ``tag`` from ``pos`` followed (after whitespace) by the text's end or one of ``then``; -1."""
        while (i := text.find(tag, pos)) >= 0:
            rest = text[i + len(tag):].lstrip()
            if not rest or rest.startswith(then):
                return i
            pos = i + len(tag)
        return -1

    def _param_start(self, text: str, pos: int) -> int:
        """The next ``<parameter=`` that starts a line (or the text), from ``pos``; -1."""
        while (i := text.find(self._param, pos)) >= 0:
            if i == 0 or text[i - 1] == "\n":
                return i
            pos = i + 1
        return -1

    def _value_end(self, body: str, pos: int, final: bool) -> int:
        """Where the value starting at ``pos`` ends: its ``</parameter>`` followed by the next tag (or, in a
        finished block, by nothing). A ``<parameter=`` inside the value (code that writes this format) pairs with
        its own ``</parameter>``, as vLLM counts them. -1: none yet."""
        depth = 0
        while (close := body.find(self._param_end, pos)) >= 0:
            nested = self._param_start(body, pos)
            if 0 <= nested < close:
                depth, pos = depth + 1, nested + len(self._param)
                continue
            pos = close + len(self._param_end)
            if depth:
                depth -= 1
                continue
            rest = body[pos:].lstrip()
            if rest.startswith((self._param, self._function_end, self._end)) or (final and not rest):
                return close
        return -1

    def _parse(self, block: str, fns: dict[str, dict], final: bool) -> tuple[str, dict, bool] | None:
        """(name, arguments, whether they are all there) of a block; None before its name is whole, or for a name
        that is a template placeholder or stray markup (vLLM drops those too). ``final``: the block is finished, so
        a value without its closing tag runs to the next parameter (or the end)."""
        f = block.find(self._function)
        name_end = block.find(">", f) if f >= 0 else -1
        if name_end < 0:
            return None
        name = block[f + len(self._function):name_end]
        if not name or any(c in "{}<>\"' \t\n\r" for c in name):
            return None
        body = block[name_end + 1:]
        if final:
            end = self._closing(body, self._function_end, 0, ())
            body = body if end < 0 else body[:end]
        properties = ((fns.get(name) or {}).get("parameters") or {}).get("properties") or {}
        args, pos = {}, 0
        while (p := self._param_start(body, pos)) >= 0:
            key_end = body.find(">", p)
            if key_end < 0:
                return name, args, final
            key, value_start = body[p + len(self._param):key_end], key_end + 1
            end = self._value_end(body, value_start, final)
            if end >= 0:
                pos = end + len(self._param_end)
            elif not final:
                return name, args, False
            else:               # no </parameter>: the value runs to the next parameter (or the end)
                end = self._param_start(body, value_start)
                end = pos = len(body) if end < 0 else end
            value = body[value_start:end]
            value = value[1:] if value.startswith("\n") else value
            value = value[:-1] if value.endswith("\n") else value
            args[key] = self._typed(value, properties.get(key)) if key in properties else value
        return name, args, final

    def _typed(self, value: str, schema: Any) -> Any:
        """A parameter's text as its schema's type (vLLM's rules); the text itself where it does not convert, or
        converts to no JSON ("inf" as a number: JSON has no Infinity)."""
        typed = self._convert(value, schema if isinstance(schema, dict) else {})
        try:
            json.dumps(typed, allow_nan=False)
        except (ValueError, TypeError):
            return value
        return typed

    def _convert(self, value: str, schema: dict) -> Any:
        declared = schema.get("type")
        if "anyOf" in schema and declared is None:
            declared = [option.get("type") for option in schema["anyOf"] if isinstance(option, dict)]
        types = [str(t).strip().lower() for t in (declared if isinstance(declared, list) else [declared])
                 if t is not None]
        nullable = "null" in types
        kind = next((t for t in types if t != "null"), "null" if nullable else "")
        if value.lower() in ("null", "none") and (nullable or kind not in self._string_types):
            return None
        if kind in self._string_types:
            return value
        try:
            if kind.startswith(("int", "uint", "long", "short", "unsigned")):
                return int(value)
            if kind.startswith(("num", "float")):
                number = float(value)
                return int(number) if number.is_integer() else number
        except ValueError:
            return value
        if kind in ("boolean", "bool", "binary"):
            return value.lower() == "true"
        container = kind in ("object", "array", "arr") or kind.startswith(("dict", "list"))
        if container:
            try:
                parsed = json.loads(value)
                return _literal(parsed) if isinstance(parsed, str) else parsed
            except ValueError:
                pass
        parsed = _literal(value)
        return _literal(parsed) if container and isinstance(parsed, str) else parsed


def _literal(text: str) -> Any:
    """``ast.literal_eval(text)``, or the text where it is no Python literal."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return text


TOOL_PARSERS: dict[str, type[ToolParser]] = {
    "hermes": HermesToolParser,
    "qwen3": HermesToolParser,        # Qwen3's template writes Hermes-style <tool_call> blocks
    "llama3_json": Llama3JsonToolParser,
    "llama4_json": Llama3JsonToolParser,      # vLLM registers both names to one parser
    "mistral": MistralToolParser,
    "pythonic": PythonicToolParser,
    "llama4_pythonic": PythonicToolParser,
    "xlam": XLAMToolParser,
    "openai": OpenAIToolParser,       # gpt-oss's harmony calls
    "qwen3_coder": Qwen3CoderToolParser,      # Qwen3-Coder, Qwen3.5
    "qwen3_xml": Qwen3CoderToolParser,        # vLLM's other reader of the same XML format
}


def strict_structural_tag(parser: ToolParser, tools: list[dict], parallel: bool) -> dict | None:
    """tool_choice="auto" with a tool marked ``"strict": true`` (OpenAI's flag; the openai client's
    ``pydantic_function_tool`` sets it): as vLLM, the calls the model starts (at the parser's trigger) are
    constrained, each tool's arguments by its parameters schema, while text stays free. None when no tool is strict
    or the parser's format has no structural tag here (then, as vLLM, calls are parsed unconstrained)."""
    fns = functions_by_name(tools)
    if parser.trigger is None or not any(fn.get("strict") is True for fn in fns.values()):
        return None
    tags = []
    for name, fn in fns.items():
        begin, end = parser.call_tag(name)
        tags.append({"type": "tag", "begin": begin, "end": end,
                     "content": {"type": "json_schema", "json_schema": parameters_schema(fn)}})
    return {"type": "structural_tag", "format": {"type": "triggered_tags", "triggers": [parser.trigger],
                                                 "tags": tags, "stop_after_first": not parallel}}


def get_tool_parser(name: str) -> ToolParser:
    if name not in TOOL_PARSERS:
        raise ValueError(f"--tool-call-parser {name!r} is not known; choose one of {', '.join(TOOL_PARSERS)}.")
    return TOOL_PARSERS[name]()
