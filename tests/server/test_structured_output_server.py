"""Structured output and tool calling through the openai client: response_format (json_object, json_schema), vLLM's
guided_* extras on completions and chat, tool_choice named / required / auto (hermes parser), streamed and not, and
400s that name the bad field."""
from __future__ import annotations

import json
import re

import openai
import pytest

from server_utils import MODEL, SERVER_ARGS, start_servers

pytest.importorskip("xgrammar")

PERSON = {"type": "object",
          "properties": {"name": {"type": "string", "minLength": 1, "maxLength": 12},
                         "age": {"type": "integer", "minimum": 0, "maximum": 120}},
          "required": ["name", "age"], "additionalProperties": False}
WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 12},
                                                    "unit": {"enum": ["celsius", "fahrenheit"]}},
                   "required": ["city", "unit"], "additionalProperties": False}}}
TIME_TOOL = {"type": "function", "function": {
    "name": "get_time", "parameters": {"type": "object", "properties": {"zone": {"enum": ["UTC", "CET"]}},
                                       "required": ["zone"], "additionalProperties": False}}}
ASK = [{"role": "user", "content": "What is the weather like in Paris?"}]


def check_person(text: str) -> None:
    value = json.loads(text)
    assert set(value) == {"name", "age"} and isinstance(value["name"], str) and isinstance(value["age"], int), value


def check_weather_args(arguments: str) -> None:
    value = json.loads(arguments)
    assert set(value) == {"city", "unit"} and value["unit"] in ("celsius", "fahrenheit"), value


def streamed_calls(chunks) -> tuple[list[tuple[str, str, str, str]], int]:
    """The tool calls a stream's deltas add up to, the OpenAI way (the first delta of a call carries its id, type and
    name; later ones only pieces of its arguments), and how many deltas carried arguments before the finishing
    chunk. Checks that no later delta repeats the header."""
    calls: dict[int, list[str]] = {}
    early_pieces = 0
    for c in chunks:
        for d in c.choices[0].delta.tool_calls or []:
            if d.index not in calls:
                assert d.id.startswith("chatcmpl-tool-") and d.type == "function" and d.function.name, d
                calls[d.index] = [d.id, d.type, d.function.name, d.function.arguments or ""]
            else:
                assert d.id is None and d.function.name is None, d
                calls[d.index][3] += d.function.arguments or ""
            if d.function.arguments and c.choices[0].finish_reason is None:
                early_pieces += 1
    assert sorted(calls) == list(range(len(calls)))
    return [tuple(calls[i]) for i in range(len(calls))], early_pieces


@pytest.fixture(scope="module")
def server():
    (s,) = start_servers(["serve", MODEL, "--enable-auto-tool-choice", "--tool-call-parser", "hermes"] + SERVER_ARGS)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="none", timeout=120)


def test_completions_guided_extras(client):
    out = client.completions.create(model=MODEL, prompt="A person as JSON:", max_tokens=50, temperature=0,
                                    extra_body={"guided_json": PERSON})
    assert out.choices[0].finish_reason == "stop"
    check_person(out.choices[0].text)
    out = client.completions.create(model=MODEL, prompt="A date:", max_tokens=20, temperature=0.7, seed=3,
                                    n=2, extra_body={"guided_regex": r"20\d\d-[01]\d-[0-3]\d"})
    assert len(out.choices) == 2
    for choice in out.choices:
        assert re.fullmatch(r"20\d\d-[01]\d-[0-3]\d", choice.text), choice.text
    out = client.completions.create(model=MODEL, prompt="Is water wet? Answer:", max_tokens=5, temperature=0,
                                    extra_body={"guided_choice": ["yes", "no"]})
    assert out.choices[0].text in ("yes", "no")
    out = client.completions.create(model=MODEL, prompt="Count:", max_tokens=10, temperature=0,
                                    extra_body={"guided_grammar": 'root ::= "1, 2, " [0-9]'})
    assert re.fullmatch(r"1, 2, [0-9]", out.choices[0].text)


def test_chat_response_format(client):
    out = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Give me a person as JSON."}], max_tokens=50,
        temperature=0, response_format={"type": "json_schema",
                                        "json_schema": {"name": "person", "schema": PERSON, "strict": True}})
    check_person(out.choices[0].message.content)
    out = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Give me a person (name, age) as JSON."}],
        max_tokens=100, temperature=0, response_format={"type": "json_object"})
    assert out.choices[0].finish_reason == "stop", out.choices[0].message.content
    assert isinstance(json.loads(out.choices[0].message.content), dict)
    chunks = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Give me a person as JSON."}], max_tokens=50,
        temperature=0, stream=True, extra_body={"guided_json": PERSON})
    check_person("".join(c.choices[0].delta.content or "" for c in chunks if c.choices))


def test_responses_parse_with_a_pydantic_text_format(client):
    """OpenAI's structured outputs on the Responses API as its docs write them: ``client.responses.parse(...,
    text_format=Model)`` sends text.format json_schema (strict) and parses the output text into the model."""
    import pydantic

    class Person(pydantic.BaseModel):
        model_config = pydantic.ConfigDict(extra="forbid")
        name: str = pydantic.Field(max_length=12)
        age: int

    resp = client.responses.parse(model=MODEL, input="Give me a person as JSON.", text_format=Person,
                                  max_output_tokens=60, temperature=0)
    assert resp.status == "completed", resp.output_text
    assert isinstance(resp.output_parsed, Person) and resp.output_parsed.name
    assert resp.text.format.type == "json_schema" and resp.text.format.name == "Person"


def test_response_format_structural_tag(client):
    # vLLM's response_format {"type": "structural_tag"}, in xgrammar's form ("format") and in vLLM's first form
    # ("structures" + "triggers", its docs' example); both were a 400 "Input should be 'text', 'json_object' or
    # 'json_schema'".
    tag = {"type": "structural_tag", "format": {"type": "tag", "begin": "<f>", "end": "</f>",
                                                "content": {"type": "json_schema", "json_schema": PERSON}}}
    out = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "A person:"}],
                                         max_tokens=50, temperature=0, response_format=tag)
    text = out.choices[0].message.content
    assert text.startswith("<f>") and text.endswith("</f>"), text
    check_person(text[3:-4])
    legacy = {"type": "structural_tag", "structures": [{"begin": "<f>", "schema": PERSON, "end": "</f>"}],
              "triggers": ["<f>"]}
    out = client.completions.create(model=MODEL, prompt='Example: <f>{"name": "Bob", "age": 3}</f>\nAnother example:',
                                    max_tokens=30, temperature=0, extra_body={"response_format": legacy})
    calls = re.findall(r"<f>(.*?)</f>", out.choices[0].text, re.DOTALL)
    assert calls, out.choices[0].text
    for call in calls:
        check_person(call)
    for bad in ({"type": "structural_tag"}, {"type": "structural_tag", "structures": [{"begin": "<f>"}],
                                             "triggers": ["<f>"]}):
        with pytest.raises(openai.BadRequestError) as e:
            client.completions.create(model=MODEL, prompt="Hi", max_tokens=2, extra_body={"response_format": bad})
        assert e.value.body["param"] == "response_format" and "structural_tag" in e.value.body["message"]


@pytest.mark.parametrize("body, param, message", [
    ({"guided_json": {"type": "nonsense"}}, "guided_json", "Invalid JSON schema"),
    ({"guided_regex": "(ab"}, "guided_regex", "Invalid regex"),
    # Compiles, but admits no output (was a 200 with content "" and finish_reason "stop").
    ({"guided_grammar": "root ::= root"}, "guided_grammar", "no output can ever satisfy it"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nonsense"}}}},
     "response_format", "Invalid JSON schema"),
    ({"response_format": {"type": "json_schema"}}, "response_format", "json_schema.schema"),
    ({"guided_regex": "a+", "guided_choice": ["a"]}, "guided_choice", "only use one kind"),
    ({"tools": [WEATHER_TOOL], "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
      "structured_outputs": {"choice": ["a", "b"]}}, "tool_choice",
     "You can only either use constraints for structured outputs or tools, not both"),
    ({"tools": [WEATHER_TOOL], "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice",
     "does not match any of the specified `tools`"),
])
def test_bad_constraints_are_400(client, body, param, message):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=5, extra_body=body)
    error = e.value.body
    assert message in error["message"] and error["param"] == param, error


def test_named_tool_choice(client):
    named = {"type": "function", "function": {"name": "get_weather"}}
    out = client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=40, temperature=0,
                                         tools=[WEATHER_TOOL, TIME_TOOL], tool_choice=named)
    (call,) = out.choices[0].message.tool_calls
    assert call.function.name == "get_weather" and call.id and call.type == "function"
    assert out.choices[0].message.content == ""      # vLLM's: empty, not null, beside a named call
    check_weather_args(call.function.arguments)
    # Streamed: the first delta names the call, the arguments come in pieces that add up to the same JSON.
    chunks = [c for c in client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=40, temperature=0,
                                                        tools=[WEATHER_TOOL, TIME_TOOL], tool_choice=named,
                                                        stream=True) if c.choices]
    deltas = [d for c in chunks for d in (c.choices[0].delta.tool_calls or [])]
    assert deltas[0].function.name == "get_weather" and deltas[0].id.startswith("chatcmpl-tool-")
    assert "".join(d.function.arguments or "" for d in deltas) == call.function.arguments


def test_required_tool_choice(client):
    out = client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=80, temperature=0,
                                         tools=[WEATHER_TOOL, TIME_TOOL], tool_choice="required")
    choice = out.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.tool_calls and choice.message.content == ""
    for call in choice.message.tool_calls:
        assert call.function.name in ("get_weather", "get_time")
        if call.function.name == "get_weather":
            check_weather_args(call.function.arguments)
    chunks = [c for c in client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=80, temperature=0,
                                                        tools=[WEATHER_TOOL, TIME_TOOL], tool_choice="required",
                                                        stream=True) if c.choices]
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    # Streamed as generated: each call's name first, then its arguments in pieces, adding up to the same JSON.
    calls, early_pieces = streamed_calls(chunks)
    assert [(name, args) for _, _, name, args in calls] == \
        [(c.function.name, c.function.arguments) for c in choice.message.tool_calls]
    assert early_pieces >= 3, early_pieces


def test_auto_tool_choice_parses_hermes_calls(client):
    # The bundled model does not write tool calls by itself; a regex makes it write one in Hermes' format, which
    # the auto parser must turn into a tool call (the constraint and the parser are independent).
    # Two calls, the model's spacing (compact) differing from the json.dumps form the response carries.
    hermes = (r'Let me check\. <tool_call>\{"name": "get_weather", "arguments": \{"city":"Paris","unit": "celsius"\}\}'
              r'</tool_call>\n<tool_call>\{"name": "get_time", "arguments": \{"zone": "CET"\}\}</tool_call>')
    results = {}
    for stream in (False, True):
        kwargs = dict(model=MODEL, messages=ASK, max_tokens=200, temperature=0, tools=[WEATHER_TOOL, TIME_TOOL],
                      tool_choice="auto", extra_body={"guided_regex": hermes}, stream=stream)
        if not stream:
            choice = client.chat.completions.create(**kwargs).choices[0]
            content, finish = choice.message.content, choice.finish_reason
            calls = [(c.function.name, c.function.arguments) for c in choice.message.tool_calls]
        else:
            chunks = [c for c in client.chat.completions.create(**kwargs) if c.choices]
            content = "".join(c.choices[0].delta.content or "" for c in chunks)
            calls, early_pieces = streamed_calls(chunks)
            calls = [(name, args) for _, _, name, args in calls]
            finish = chunks[-1].choices[0].finish_reason
            assert early_pieces >= 3, early_pieces
        assert finish == "tool_calls" and content == "Let me check. "   # as written, streamed or not (vLLM's)
        assert [(name, json.loads(args)) for name, args in calls] == \
            [("get_weather", {"city": "Paris", "unit": "celsius"}), ("get_time", {"zone": "CET"})]
        results[stream] = calls
    assert results[True] == results[False]       # the same argument strings, streamed or not
    assert results[False][0][1] == '{"city": "Paris", "unit": "celsius"}'
    # Without calls in the text, auto is plain content, and the message has no "tool_calls" (vLLM, OpenAI): the
    # openai client's tool_calls is None, not [] (which sent "while tool_calls is not None" loops into [0]).
    out = client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=8, temperature=0,
                                         tools=[WEATHER_TOOL])
    assert out.choices[0].message.content and out.choices[0].message.tool_calls is None


def test_auto_tool_choice_honours_strict_tools(client):
    # A tool marked "strict": true (OpenAI's flag, set by the openai client's pydantic_function_tool) has its calls
    # constrained under tool_choice="auto", as vLLM does with the parser's structural tag; text stays free. The
    # flag was ignored: the bundled model, primed with calls that break the schema, copied them.
    primed = ('Example 1: <tool_call>\n{"name": "get_weather", "arguments": {"town": "Rome", "unit": "kelvin"}}\n'
              '</tool_call>\nExample 2: <tool_call>\n{"name": "get_weather", "arguments": {"town": "Oslo", '
              '"unit": "kelvin"}}\n</tool_call>\nExample 3:')
    messages = [{"role": "user", "content": "Weather?"}, {"role": "assistant", "content": primed}]
    found = {}
    for strict in (False, True):
        tool = json.loads(json.dumps(WEATHER_TOOL))
        tool["function"]["strict"] = strict
        out = client.chat.completions.create(model=MODEL, messages=messages, tools=[tool], max_tokens=40,
                                             temperature=0, extra_body={"continue_final_message": True,
                                                                        "add_generation_prompt": False})
        (call,) = out.choices[0].message.tool_calls
        found[strict] = json.loads(call.function.arguments)
    assert found[False].get("unit") == "kelvin"             # what the unconstrained model writes
    check_weather_args(json.dumps(found[True]))
