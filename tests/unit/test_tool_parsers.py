"""The tool-call parsers of tool_choice="auto": each model format to OpenAI tool calls (JSON-string arguments), and
text without calls left as content."""
from __future__ import annotations

import json

import pytest

from pagedllm.entrypoints.openai.tool_parsers import (calls_from_required, get_tool_parser, required_call_nodes,
                                                      required_schema, stream_calls)


def calls(parsed):
    content, found = parsed
    return content, [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in found]


def test_hermes_and_qwen3_blocks():
    text = ('I will look. <tool_call>\n{"name": "a", "arguments": {"x": 1}}\n</tool_call>\n'
            '<tool_call>{"name": "b", "arguments": {}}</tool_call>')
    for name in ("hermes", "qwen3"):
        assert calls(get_tool_parser(name).extract(text)) == ("I will look. ", [("a", {"x": 1}), ("b", {})])
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


def stream_prefixes(text: str, call_nodes) -> list[list[tuple[str, str]]]:
    """What ``stream_calls`` reports after each character of ``text``; each call's arguments only ever grow."""
    seen = []
    for k in range(len(text) + 1):
        now = stream_calls(text[:k], call_nodes(text[:k]))
        if seen:
            before = seen[-1]
            assert len(now) >= len(before)
            for (name0, args0), (name1, args1) in zip(before, now):
                assert name0 == name1 and args1.startswith(args0), (text[:k], args0, args1)
        seen.append(now)
    return seen


@pytest.mark.parametrize("text", [
    '[{"name": "get_weather", "parameters": {"city":"Par\\u00e9is \\ud83d\\ude00","n":[1.50, true,null,{}],'
    ' "s":"a\\"b\\n"}}, {"name":"get_time","parameters":{}}]',
    '[ {"name" : "f" , "parameters" : { "a" : -2.50e1 , "b": [ ] } } ]',
])
def test_required_calls_stream_to_the_finished_arguments(text):
    """Arguments streamed character by character (escapes, surrogate pairs, numbers held until they end) add up to
    the finished response's arguments (json.dumps form), and a call's name comes before any of its arguments."""
    seen = stream_prefixes(text, required_call_nodes)
    finished = [(c["function"]["name"], c["function"]["arguments"]) for c in calls_from_required(text)]
    assert seen[-1] == finished
    first = next(s for s in seen if s)
    assert first == [(finished[0][0], "")]          # the name alone, before any argument text


def test_auto_parsers_stream_their_calls():
    hermes = 'Sure. <tool_call>\n{"name": "a", "arguments": {"x":12}}\n</tool_call><tool_call>{"name": "b", "arguments": {}}'
    assert stream_prefixes(hermes, get_tool_parser("hermes").call_nodes)[-1] == [("a", '{"x": 12}'), ("b", "{}")]
    llama = '{"name": "a", "parameters": {"x": 1}}; {"name": "b", "parameters": {"y": "z"}}'
    seen = stream_prefixes(llama, get_tool_parser("llama3_json").call_nodes)
    assert seen[-1] == [("a", '{"x": 1}'), ("b", '{"y": "z"}')]
    assert seen[len('{"name": "a", "parameters": {"x": 1')] == [("a", '{"x": ')]   # 1 may still grow to 10
    mistral = '[TOOL_CALLS][{"name": "a", "arguments": {"x": true}}]'
    assert stream_prefixes(mistral, get_tool_parser("mistral").call_nodes)[-1] == [("a", '{"x": true}')]
    assert stream_calls("no calls", get_tool_parser("hermes").call_nodes("no calls")) == []


def test_mistral_tool_call_ids_are_nine_alphanumerics():
    """vLLM's mistral parser gives 9-character alphanumeric ids: Mistral's chat templates raise on any other id when
    the call comes back in the next request. Other parsers keep vLLM's chatcmpl-tool-<hex>. Streamed calls too."""
    from pagedllm.entrypoints.openai.serving_chat import OpenAIServingChat, ToolCallStream, ToolMode

    text = '[TOOL_CALLS][{"name": "a", "arguments": {"x": 2}}, {"name": "b", "arguments": {}}]'
    _, found = get_tool_parser("mistral").extract(text)
    assert len(found) == 2 and len({c["id"] for c in found}) == 2
    assert all(len(c["id"]) == 9 and c["id"].isalnum() for c in found), found
    _, found = get_tool_parser("hermes").extract('<tool_call>{"name": "a", "arguments": {}}</tool_call>')
    assert found[0]["id"].startswith("chatcmpl-tool-") and len(found[0]["id"]) == len("chatcmpl-tool-") + 32
    serving = OpenAIServingChat.__new__(OpenAIServingChat)      # only its tool parser is used here
    serving.tool_parser = get_tool_parser("mistral")
    stream = ToolCallStream(serving, ToolMode("auto"), 1)
    ids = []
    for k in range(0, len(text), 7):
        delta, _ = stream.delta(0, text[k:k + 7], None)
        ids += [call["id"] for call in (delta or {}).get("tool_calls", []) if "id" in call]
    delta, finish = stream.delta(0, "", "stop")
    ids += [call["id"] for call in delta.get("tool_calls", []) if "id" in call]
    assert finish == "tool_calls" and len(ids) == 2
    assert all(len(i) == 9 and i.isalnum() for i in ids), ids


def test_pythonic_calls():
    """vLLM's pythonic / llama4_pythonic format (Llama 3.2, Llama 4): a Python list of calls with literal keyword
    arguments; anything else is content. A stream holds the list and sends the calls whole at the end."""
    from pagedllm.entrypoints.openai.serving_chat import OpenAIServingChat, ToolCallStream, ToolMode

    text = '[get_weather(city="San Francisco", days=3, metric=True, extra=None), get_time(zone=\'CET\', n=[1, -2])]'
    expected = [("get_weather", {"city": "San Francisco", "days": 3, "metric": True, "extra": None}),
                ("get_time", {"zone": "CET", "n": [1, -2]})]
    for name in ("pythonic", "llama4_pythonic"):
        assert calls(get_tool_parser(name).extract(" " + text + "\n")) == (None, expected)
    assert calls(get_tool_parser("llama4_pythonic").extract("<|python_start|>" + text + "<|python_end|>")) == \
        (None, expected)
    for plain in ("The weather is nice.", "[1] A reference", "[f(x)]", "[f(a=g())]", "[os.system(c='x')]", "[f(a="):
        assert get_tool_parser("pythonic").extract(plain) == (plain, [])
    serving = OpenAIServingChat.__new__(OpenAIServingChat)
    serving.tool_parser = get_tool_parser("pythonic")
    stream = ToolCallStream(serving, ToolMode("auto"), 1)
    deltas = [stream.delta(0, text[k:k + 9], None)[0] for k in range(0, len(text), 9)]
    assert all(d is None or "content" not in d for d in deltas), deltas
    final, finish = stream.delta(0, "", "stop")
    assert finish == "tool_calls" and "content" not in final
    assert [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in final["tool_calls"]] == expected
    plain = ToolCallStream(serving, ToolMode("auto"), 1)
    assert plain.delta(0, "Sunny ", None)[0] == {"content": "Sunny "}
    assert plain.delta(0, "today.", "stop") == ({"content": "today."}, "stop")


def test_mistral_v11_calls_and_special_tokens():
    """Mistral tokenizers from v11 on write one marker per call, ``[TOOL_CALLS]name{...}`` (HF tokenizers also
    ``[ARGS]``): parsed as vLLM does (arguments that do not parse are kept as written). The marker is a special
    token, so under tool_choice="auto" the request keeps special tokens, else the marker was dropped from the text
    and no call was ever found. Hermes' <tool_call> is special in some tokenizers: the same (vLLM's hermes parser)."""
    from pagedllm.entrypoints.openai.serving_chat import OpenAIServingChat, ToolCallStream, ToolMode
    from pagedllm.sampling_params import SamplingParams

    mistral = get_tool_parser("mistral")
    text = 'Checking. [TOOL_CALLS]get_weather[ARGS]{"city": "Paris"}[TOOL_CALLS]get_time{"zone": "CET"}'
    assert calls(mistral.extract(text)) == ("Checking. ", [("get_weather", {"city": "Paris"}),
                                                           ("get_time", {"zone": "CET"})])
    content, found = mistral.extract('[TOOL_CALLS]f{"broken": ')
    assert content is None and found[0]["function"] == {"name": "f", "arguments": '{"broken":'}
    serving = OpenAIServingChat.__new__(OpenAIServingChat)
    serving.tool_parser = mistral
    stream = ToolCallStream(serving, ToolMode("auto"), 1)
    sent = [stream.delta(0, text[k:k + 6], None)[0] for k in range(0, len(text), 6)]
    final, finish = stream.delta(0, "", "stop")
    assert "".join(d.get("content", "") for d in sent if d) == "Checking. "
    assert finish == "tool_calls"
    assert [c["function"]["name"] for c in final["tool_calls"]] == ["get_weather", "get_time"]
    for parser, mode, keeps in (("mistral", "auto", False), ("mistral", "required", True), ("hermes", "auto", False),
                                ("llama3_json", "auto", True)):
        serving.tool_parser = get_tool_parser(parser)
        params = SamplingParams()
        serving.keep_call_markers(ToolMode(mode), params)
        assert params.skip_special_tokens is keeps, (parser, mode)


def test_xlam_calls():
    """vLLM's xlam parser (xLAM-2 models; its openai_chat_completion_client_with_tools_xlam*.py examples): a JSON
    array of {"name", "arguments"} alone, in a ```json block, after [TOOL_CALLS], in <tool_call> tags or after
    </think>; other text is content. A stream sends a bare array's calls as generated, the other forms at the end."""
    from pagedllm.entrypoints.openai.serving_chat import OpenAIServingChat, ToolCallStream, ToolMode

    xlam = get_tool_parser("xlam")
    array = '[{"name": "get_weather", "arguments": {"location": "SF", "unit": "celsius"}}, ' \
            '{"name": "translate_text", "arguments": {"text": "hi", "target_language": "fr"}}]'
    expected = [("get_weather", {"location": "SF", "unit": "celsius"}),
                ("translate_text", {"text": "hi", "target_language": "fr"})]
    assert calls(xlam.extract(array)) == (None, expected)
    assert calls(xlam.extract("Here you go:\n```json\n" + array + "\n```")) == ("Here you go:", expected)
    assert calls(xlam.extract("[TOOL_CALLS]" + array)) == (None, expected)
    assert calls(xlam.extract("<tool_call>" + array + "</tool_call>")) == (None, expected)
    assert calls(xlam.extract("<think>SF, celsius</think>\n" + array)) == ("<think>SF, celsius</think>", expected)
    for plain in ("It is sunny.", "[1] A reference", '[{"name": "f"}]', "```json\n{broken\n```"):
        assert xlam.extract(plain) == (plain, [])
    assert stream_prefixes(array, xlam.call_nodes)[-1] == [(n, json.dumps(a)) for n, a in expected]
    serving = OpenAIServingChat.__new__(OpenAIServingChat)
    serving.tool_parser = xlam
    text = "Sure.\n```json\n" + array + "\n```"
    stream = ToolCallStream(serving, ToolMode("auto"), 1)
    deltas = [stream.delta(0, text[k:k + 5], None)[0] for k in range(0, len(text), 5)]
    assert "".join((d or {}).get("content", "") for d in deltas) == "Sure.\n"      # the block is held back
    final, finish = stream.delta(0, "", "stop")
    assert finish == "tool_calls"
    assert [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in final["tool_calls"]] == expected


def test_stream_cut_after_a_streamed_call_does_not_repeat_it_as_content():
    """A hermes output cut by max_tokens inside its second call: the first call streamed as deltas; the finishing
    delta must not send the raw <tool_call> markup again as content (it did: the client got the call twice)."""
    from pagedllm.entrypoints.openai.serving_chat import OpenAIServingChat, ToolCallStream, ToolMode

    serving = OpenAIServingChat.__new__(OpenAIServingChat)
    serving.tool_parser = get_tool_parser("hermes")
    text = ('Sure. <tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
            '<tool_call>\n{"name": "get_time"')
    stream = ToolCallStream(serving, ToolMode("auto"), 1)
    deltas = [stream.delta(0, text[k:k + 5], None)[0] for k in range(0, len(text), 5)]
    final, finish = stream.delta(0, "", "length")
    deltas.append(final)
    content = "".join(d.get("content", "") for d in deltas if d)
    args = "".join(c["function"].get("arguments", "") for d in deltas if d for c in d.get("tool_calls", [])
                   if c["index"] == 0)
    assert finish == "length"
    assert content == "Sure. " and "<tool_call>" not in content
    assert json.loads(args) == {"city": "Paris"}
    # With nothing streamed as a call, a cut output still comes back as content (as the non-streamed response).
    plain = ToolCallStream(serving, ToolMode("auto"), 1)
    assert plain.delta(0, "<tool_call>\n{", None)[0] is None
    assert plain.delta(0, "", "length") == ({"content": "<tool_call>\n{"}, "length")


def test_llama3_json_calls_after_or_before_text():
    """vLLM's llama3_json takes every JSON object with a name and arguments / parameters out of the whole output and
    drops the text around them (content None): a Llama that writes a sentence before its call, or after it, still
    calls the tool. A brace that is not such an object (or does not parse) leaves the whole output as content. A
    stream sends the sentence before the call as content and the call as deltas."""
    from pagedllm.entrypoints.openai.serving_chat import OpenAIServingChat, ToolCallStream, ToolMode

    llama = get_tool_parser("llama3_json")
    call = '{"name": "get_weather", "parameters": {"city": "Paris"}}'
    assert calls(llama.extract("Let me check. " + call)) == (None, [("get_weather", {"city": "Paris"})])
    assert calls(llama.extract(call + "\n\nI hope this helps.")) == (None, [("get_weather", {"city": "Paris"})])
    assert calls(llama.extract('Two: {"name": "a", "arguments": {"x": {"y": 1}}}; {"name": "b", "parameters": {}}')) \
        == (None, [("a", {"x": {"y": 1}}), ("b", {})])
    for plain in ('The answer is {"value": 1}.', "A set {1, 2} " + call, call + " and {broken"):
        assert llama.extract(plain) == (plain, [])
    serving = OpenAIServingChat.__new__(OpenAIServingChat)
    serving.tool_parser = llama
    text = "Let me check. " + call
    stream = ToolCallStream(serving, ToolMode("auto"), 1)
    deltas = [stream.delta(0, text[k:k + 4], None)[0] for k in range(0, len(text), 4)]
    final, finish = stream.delta(0, "", "stop")
    deltas.append(final)
    assert finish == "tool_calls"
    assert "".join(d.get("content", "") for d in deltas if d) == "Let me check. "
    sent = [c for d in deltas if d for c in d.get("tool_calls", [])]
    assert sent[0]["function"]["name"] == "get_weather"
    assert json.loads("".join(c["function"]["arguments"] for c in sent)) == {"city": "Paris"}


def test_the_template_sees_the_tools_as_vllms_request_model_dumps_them(tiny_llama_dir):
    """/v1/chat/completions and /tokenize hand the chat template each tool as vLLM's request model dumps it: the
    function's name, description, parameters in that order, null where the request left one out (Qwen's and
    Llama's templates write ``tool | tojson``, so the prompt holds "description": null), then strict when given;
    other keys are dropped. Before, the request's dicts went through as sent (other order, no nulls): the prompt,
    its token count and so the output differed from vLLM's."""
    from app_client import post_to_server_app

    template = "{{ tools | tojson }}{% for m in messages %}|{{ m.content }}{% endfor %}"
    tools = [{"function": {"parameters": {"type": "object"}, "name": "get_weather", "x-extra": 1}, "type": "function"},
             {"type": "function", "function": {"name": "get_time", "strict": True, "description": "Now."}}]
    expected = ('[{"type": "function", "function": {"name": "get_weather", "description": null, "parameters": '
                '{"type": "object"}}}, {"type": "function", "function": {"name": "get_time", "description": "Now.", '
                '"parameters": null, "strict": true}}]|Hi')
    body = {"messages": [{"role": "user", "content": "Hi"}], "tools": tools}
    (s1, tokenized), (s2, chat) = post_to_server_app(
        tiny_llama_dir, [("/tokenize", {**body, "return_token_strs": True}),
                         ("/v1/chat/completions", {**body, "tool_choice": "none", "max_tokens": 1})],
        chat_template=template)
    assert s1 == 200 and s2 == 200, (tokenized, chat)
    from transformers import AutoTokenizer
    assert AutoTokenizer.from_pretrained(tiny_llama_dir).decode(tokenized["tokens"]) == expected
    assert chat["usage"]["prompt_tokens"] == tokenized["count"]


@pytest.mark.parametrize("parser, text", [
    ("hermes", 'Let me check that.\n\n<tool_call>\n{"name": "a", "arguments": {"x": 1}}\n</tool_call>'),
    ("mistral", 'Let me check that.\n\n[TOOL_CALLS][{"name": "a", "arguments": {"x": 1}}]'),
    ("mistral", 'Let me check that.\n\n[TOOL_CALLS]a{"x": 1}'),
    ("hermes", '\n\n<tool_call>{"name": "a", "arguments": {"x": 1}}</tool_call>'),
])
def test_text_before_a_call_is_its_content_as_written(parser, text):
    """vLLM's hermes and mistral parsers: the text before the first call marker is the message's content as the
    model wrote it (not stripped; None only when there is none), and a stream sends the same text as content."""
    from pagedllm.entrypoints.openai.serving_chat import OpenAIServingChat, ToolCallStream, ToolMode
    before = text[:text.index("<tool_call>" if parser == "hermes" else "[TOOL_CALLS]")]
    assert calls(get_tool_parser(parser).extract(text)) == (before, [("a", {"x": 1})])
    serving = OpenAIServingChat.__new__(OpenAIServingChat)
    serving.tool_parser = get_tool_parser(parser)
    stream = ToolCallStream(serving, ToolMode("auto"), 1)
    deltas = [stream.delta(0, text[k:k + 5], None)[0] for k in range(0, len(text), 5)]
    deltas.append(stream.delta(0, "", "stop")[0])
    assert "".join((d or {}).get("content") or "" for d in deltas) == before


QWEN3_CODER_TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"},
                                     "metric": {"type": "boolean"}, "tags": {"type": "array"},
                                     "note": {"anyOf": [{"type": "string"}, {"type": "null"}]},
                                     "temp": {"type": "number"}}}}}]
QWEN3_CODER_OUTPUT = ("Let me check.\n<tool_call>\n<function=get_weather>\n<parameter=city>\nSan Francisco\n"
                      "</parameter>\n<parameter=days>\n3\n</parameter>\n<parameter=metric>\nTrue\n</parameter>\n"
                      '<parameter=tags>\n["a", "b"]\n</parameter>\n<parameter=note>\nNone\n</parameter>\n'
                      "<parameter=temp>\n21.5\n</parameter>\n<parameter=code>\nif a </parameter> b\n</parameter>\n"
                      "</function>\n</tool_call>\n<tool_call>\n<function=get_weather>\n<parameter=city>\nLyon\n"
                      "</function>\n</tool_call>")
QWEN3_CODER_CALLS = [("get_weather", {"city": "San Francisco", "days": 3, "metric": True, "tags": ["a", "b"],
                                      "note": None, "temp": 21.5, "code": "if a </parameter> b"}),
                     ("get_weather", {"city": "Lyon"})]


def test_qwen3_coder_xml_calls():
    """vLLM's qwen3_coder / qwen3_xml parsers (Qwen3-Coder, Qwen3.5): <tool_call><function=NAME><parameter=KEY>
    blocks, each value typed by the tool's schema as vLLM types it (a parameter the schema does not name stays
    text; a </parameter> inside a value is text; a missing </parameter> ends at the next parameter); the text
    before the first call is the content. A stream sends that content as it comes, then each call's header and its
    parameters one by one as vLLM does. Before, --tool-call-parser qwen3_coder failed at start-up ('is not
    known')."""
    from pagedllm.entrypoints.openai.serving_chat import OpenAIServingChat, ToolCallStream, ToolMode

    for name in ("qwen3_coder", "qwen3_xml"):
        content, found = get_tool_parser(name).extract(QWEN3_CODER_OUTPUT, QWEN3_CODER_TOOLS)
        assert calls((content, found)) == ("Let me check.\n", QWEN3_CODER_CALLS)
        assert all(c["id"].startswith("call_") and len(c["id"]) == 29 for c in found), found
    parser = get_tool_parser("qwen3_coder")
    # Without the tools every value is text; a template placeholder is no call; no <tool_call>: the whole output.
    assert calls(parser.extract(QWEN3_CODER_OUTPUT))[1][0][1]["days"] == "3"
    for plain in ("Sunny today.", "<tool_call>\n<function={{ name }}>\n</function>\n</tool_call>"):
        assert parser.extract(plain, QWEN3_CODER_TOOLS) == (plain, [])
    bare = "<function=get_weather>\n<parameter=days>\n2\n</parameter>\n</function>"
    assert calls(parser.extract(bare, QWEN3_CODER_TOOLS)) == (None, [("get_weather", {"days": 2})])
    # A value that converts to no JSON (Infinity) stays text: the arguments are always JSON.
    infinite = "<tool_call>\n<function=get_weather>\n<parameter=temp>\ninf\n</parameter>\n</function>\n</tool_call>"
    assert calls(parser.extract(infinite, QWEN3_CODER_TOOLS)) == (None, [("get_weather", {"temp": "inf"})])
    # A missing </parameter>: the value runs to the next parameter (a nested one in a value pairs with its own).
    missing = ("<tool_call>\n<function=get_weather>\n<parameter=city>\nOslo\n<parameter=days>\n2\n</parameter>\n"
               "</function>\n</tool_call>")
    assert calls(parser.extract(missing, QWEN3_CODER_TOOLS))[1] == [("get_weather", {"city": "Oslo", "days": 2})]
    serving = OpenAIServingChat.__new__(OpenAIServingChat)
    serving.tool_parser = parser
    stream = ToolCallStream(serving, ToolMode("auto", tools=QWEN3_CODER_TOOLS), 1)
    text = QWEN3_CODER_OUTPUT
    deltas = [stream.delta(0, text[k:k + 6], None)[0] for k in range(0, len(text), 6)]
    final, finish = stream.delta(0, "", "stop")
    assert "".join((d or {}).get("content") or "" for d in deltas) == "Let me check.\n"
    # As vLLM's stream: each call's header once its name is whole, then its parameters as each one ends.
    early = [c for d in deltas for c in (d or {}).get("tool_calls", [])]
    assert [c["function"]["name"] for c in early if "id" in c] == ["get_weather", "get_weather"]
    assert len([c for c in early if c["function"]["arguments"]]) >= 8 and finish == "tool_calls"
    assert summed_calls(deltas + [final]) == QWEN3_CODER_CALLS


def summed_calls(deltas: list[dict | None]) -> list[tuple[str, dict]]:
    """The calls a stream's tool_call deltas add up to (the header names the call, later pieces extend its
    arguments), with the arguments parsed."""
    calls_by_index: dict[int, list] = {}
    for d in deltas:
        for c in (d or {}).get("tool_calls", []):
            if c["index"] not in calls_by_index:
                assert c["id"] and c["type"] == "function" and c["function"]["name"], c
                calls_by_index[c["index"]] = [c["function"]["name"], ""]
            else:
                assert "id" not in c and "name" not in c["function"], c
            calls_by_index[c["index"]][1] += c["function"].get("arguments") or ""
    return [(name, json.loads(args)) for name, args in (calls_by_index[i] for i in sorted(calls_by_index))]


def test_qwen3_coder_served(tiny_llama_dir):
    """--enable-auto-tool-choice --tool-call-parser qwen3_coder on the server: the request's tools type the
    arguments, whole and streamed; finish_reason tool_calls."""
    from app_client import post_all, serve_in_process
    from test_reasoning_parsers import scripted_engine, sse_chunks

    pieces = [QWEN3_CODER_OUTPUT[k:k + 9] for k in range(0, len(QWEN3_CODER_OUTPUT), 9)]
    body = {"messages": [{"role": "user", "content": "Weather?"}], "tools": QWEN3_CODER_TOOLS}
    flags = ("--enable-auto-tool-choice", "--tool-call-parser", "qwen3_coder")
    with serve_in_process(tiny_llama_dir, *flags) as (app, engine):
        scripted_engine(engine, pieces)
        whole, streamed = post_all(app, [("/v1/chat/completions", body),
                                         ("/v1/chat/completions", {**body, "stream": True})])
    choice = whole.json()["choices"][0]
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] == "Let me check.\n"
    assert [(c["function"]["name"], json.loads(c["function"]["arguments"]))
            for c in choice["message"]["tool_calls"]] == QWEN3_CODER_CALLS
    chunks = sse_chunks(streamed)
    assert summed_calls([chunk["choices"][0]["delta"] for chunk in chunks]) == QWEN3_CODER_CALLS
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
