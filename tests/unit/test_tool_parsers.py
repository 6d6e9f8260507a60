"""The tool-call parsers of tool_choice="auto": each model format to OpenAI tool calls (JSON-string arguments), and
text without calls left as content."""
from __future__ import annotations

import json

import pytest

from pagedllm.entrypoints.openai.tool_parsers import get_tool_parser, required_schema


def calls(parsed):
    content, found = parsed
    return content, [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in found]


def test_hermes_and_qwen3_blocks():
    text = ('I will look. <tool_call>\n{"name": "a", "arguments": {"x": 1}}\n</tool_call>\n'
            '<tool_call>{"name": "b", "arguments": {}}</tool_call>')
    for name in ("hermes", "qwen3"):
        assert calls(get_tool_parser(name).extract(text)) == ("I will look.", [("a", {"x": 1}), ("b", {})])
    assert get_tool_parser("hermes").extract("no calls here") == ("no calls here", [])
    assert get_tool_parser("hermes").extract("<tool_call>{broken") == ("<tool_call>{broken", [])
    # A stream holds back a marker that may be starting.
    assert get_tool_parser("hermes").call_start("Sure <tool_") == len("Sure ")


def test_llama3_json_and_mistral():
    llama = get_tool_parser("llama3_json")
    assert calls(llama.extract('<|python_tag|>{"name": "a", "parameters": {"x": 1}}; {"name": "b", "parameters": {}}')) \
        == (None, [("a", {"x": 1}), ("b", {})])
    assert calls(llama.extract('{"name": "a", "parameters": {"q": "s"}}')) == (None, [("a", {"q": "s"})])
    assert llama.extract("Hello there") == ("Hello there", [])
    mistral = get_tool_parser("mistral")
    assert calls(mistral.extract('[TOOL_CALLS][{"name": "a", "arguments": {"x": 2}}]')) == (None, [("a", {"x": 2})])


def test_unknown_parser_and_required_schema():
    with pytest.raises(ValueError, match="--tool-call-parser 'nope' is not known"):
        get_tool_parser("nope")
    schema = required_schema([{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}])
    assert schema["minItems"] == 1 and schema["items"]["anyOf"][0]["properties"]["name"]["enum"] == ["f"]
