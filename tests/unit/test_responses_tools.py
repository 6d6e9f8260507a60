"""/v1/responses with function tools (OpenAI's Responses API, as vLLM serves it): flat function tools run as the
chat completion's tools, calls come back as ``function_call`` output items, and a tool loop's ``function_call`` /
``function_call_output`` items go back in. Driven in-process on a tiny random Llama (a named tool choice constrains
its output to the tool's arguments, so it calls whatever it "thinks"), through the official ``openai`` client."""
from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from app_client import post_all, serve_args

WEATHER = {"type": "function", "name": "get_weather", "description": "The weather in a city.",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
CLOCK = {"type": "function", "name": "get_time", "parameters": {"type": "object", "properties": {}}}


@pytest.fixture(scope="module")
def app(tiny_llama_dir, tiny_engine):
    from pagedllm.entrypoints.openai.api_server import build_app
    return build_app(serve_args(tiny_llama_dir), *tiny_engine)


def test_named_tool_choice_answers_a_function_call_item(app, tiny_engine):
    import openai

    async def run():
        http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test", timeout=60)
        client = openai.AsyncOpenAI(base_url="http://test/v1", api_key="x", http_client=http, max_retries=0)
        resp = await client.responses.create(model=tiny_engine[2][0], input="What is the weather in Paris?",
                                             tools=[WEATHER, CLOCK], max_output_tokens=12, temperature=0,
                                             tool_choice={"type": "function", "name": "get_weather"})
        chat = await client.chat.completions.create(
            model=tiny_engine[2][0], messages=[{"role": "user", "content": "What is the weather in Paris?"}],
            tools=[{"type": "function", "function": {k: v for k, v in t.items() if k != "type"}}
                   for t in (WEATHER, CLOCK)],
            tool_choice={"type": "function", "function": {"name": "get_weather"}}, max_completion_tokens=12,
            temperature=0)
        await http.aclose()
        return resp, chat
    resp, chat = asyncio.run(run())
    (item,) = resp.output          # no message item: the model wrote only the call
    expected = chat.choices[0].message.tool_calls[0]
    assert item.type == "function_call" and item.name == "get_weather" and item.id.startswith("fc_")
    assert item.arguments == expected.function.arguments and item.call_id.startswith("chatcmpl-tool-")
    assert item.status == ("incomplete" if resp.status == "incomplete" else "completed")
    assert [t.name for t in resp.tools] == ["get_weather", "get_time"]
    assert resp.tool_choice.type == "function" and resp.tool_choice.name == "get_weather"
    assert resp.usage.input_tokens == chat.usage.prompt_tokens


def test_text_and_calls_become_a_message_then_function_call_items():
    # The chat answer of tool_choice="auto" (a parser found two calls after some text) or "required", in the
    # Responses shape: the text as a message item, then one function_call item per call, in order.
    from pagedllm.entrypoints.openai.protocol import ResponsesRequest
    from pagedllm.entrypoints.openai.serving_responses import OpenAIServingResponses
    req = ResponsesRequest.model_validate({"input": "Hi", "tools": [WEATHER, CLOCK]})
    calls = [{"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}},
             {"id": "call_2", "type": "function", "function": {"name": "get_time", "arguments": "{}"}}]
    chat = {"created": 5, "model": "m", "usage": {"prompt_tokens": 3, "completion_tokens": 9, "total_tokens": 12},
            "choices": [{"finish_reason": "tool_calls", "message": {"content": "Checking.", "tool_calls": calls}}]}
    body = OpenAIServingResponses(chat=None)._response(req, chat, "r1")
    assert [o["type"] for o in body["output"]] == ["message", "function_call", "function_call"]
    assert body["output"][0]["content"][0]["text"] == "Checking." and body["status"] == "completed"
    assert [(o["call_id"], o["name"], o["arguments"], o["status"]) for o in body["output"][1:]] == [
        ("call_1", "get_weather", '{"city": "Oslo"}', "completed"), ("call_2", "get_time", "{}", "completed")]
    chat["choices"][0]["message"]["content"] = None           # calls alone: no message item
    assert [o["type"] for o in OpenAIServingResponses(chat=None)._response(req, chat, "r1")["output"]] == [
        "function_call", "function_call"]


def test_a_tool_loop_sends_calls_and_outputs_back_as_input_items(app):
    # OpenAI's function-calling guide: the function_call items the model made, then function_call_output items.
    # Consecutive calls join one assistant message (vLLM's rule): the prompt is the chat conversation's.
    user = {"role": "user", "content": "Weather and time in Oslo?"}
    calls = [{"type": "function_call", "id": "fc_1", "call_id": "call_1", "name": "get_weather",
              "arguments": '{"city": "Oslo"}', "status": "completed"},
             {"type": "function_call", "call_id": "call_2", "name": "get_time", "arguments": "{}"}]
    outputs = [{"type": "function_call_output", "call_id": "call_1", "output": "Sunny, 21 C"},
               {"type": "function_call_output", "call_id": "call_2", "output": "12:00"}]
    chat_messages = [user, {"role": "assistant", "content": None, "tool_calls": [
        {"id": c["call_id"], "type": "function", "function": {"name": c["name"], "arguments": c["arguments"]}}
        for c in calls]}] + [{"role": "tool", "tool_call_id": o["call_id"], "content": o["output"]} for o in outputs]
    tools = [WEATHER, CLOCK]
    resp, chat, split = post_all(app, [
        ("/v1/responses", {"input": [user, *calls, *outputs], "tools": tools, "tool_choice": "none",
                           "max_output_tokens": 2}),
        ("/v1/chat/completions", {"messages": chat_messages, "max_tokens": 2, "tool_choice": "none",
                                  "tools": [{"type": "function", "function": {k: v for k, v in t.items() if k != "type"}}
                                            for t in tools]}),
        # A call and its output, then the next call: two assistant messages, not one.
        ("/v1/responses", {"input": [user, calls[0], outputs[0], calls[1], outputs[1]], "max_output_tokens": 2})])
    assert resp.status_code == 200 and chat.status_code == 200 and split.status_code == 200, resp.text
    assert resp.json()["usage"]["input_tokens"] == chat.json()["usage"]["prompt_tokens"]
    assert split.json()["usage"]["input_tokens"] > resp.json()["usage"]["input_tokens"]


def test_what_is_not_supported_is_a_400_naming_the_field(app):
    bad = [({"tools": [{"type": "web_search_preview"}]}, "tools", "only function tools"),
           ({"tools": [{"type": "function", "parameters": {}}]}, "tools", "'name'"),
           ({"tools": [WEATHER], "tool_choice": {"type": "file_search"}}, "tool_choice", "not supported"),
           ({"tools": [WEATHER]}, "tool_choice", "--enable-auto-tool-choice"),      # "auto", as on chat
           ({"tools": [WEATHER], "tool_choice": {"type": "function", "name": "nope"}}, "tool_choice", "does not match any"),
           ({"input": [{"type": "function_call", "name": "get_weather"}]}, "input", "call_id, name and arguments"),
           ({"input": [{"type": "function_call_output", "call_id": "c"}]}, "input", "call_id and output")]
    responses = post_all(app, [("/v1/responses", {"input": "Hi", "max_output_tokens": 2, **body})
                               for body, _, _ in bad])
    for r, (body, param, words) in zip(responses, bad):
        error = r.json()["error"]
        assert r.status_code == 400 and error["param"].startswith(param) and words in error["message"], (body, r.text)


def _chunk(**fields) -> str:
    return "data: " + json.dumps({"id": "chatcmpl-x", "object": "chat.completion.chunk", "created": 7, "model": "m",
                                  **fields}) + "\n\n"


def test_streamed_calls_become_function_call_events():
    # A chat stream of tool_choice="auto" (text, then two calls whose arguments come in pieces) as the Responses
    # events: the message item closes when the first call starts; each call is output_item.added, its argument
    # deltas, then function_call_arguments.done and output_item.done; the final response lists the same items.
    from pagedllm.entrypoints.openai.protocol import ResponsesRequest
    from pagedllm.entrypoints.openai.serving_responses import OpenAIServingResponses

    def delta(d, finish=None):
        return _chunk(choices=[{"index": 0, "delta": d, "finish_reason": finish}])
    stream = (delta({"role": "assistant", "content": ""}) + delta({"content": "Checking."})
              + delta({"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                                       "function": {"name": "get_weather", "arguments": '{"city": '}}]})
              + delta({"tool_calls": [{"index": 0, "function": {"arguments": '"Oslo"}'}}]})
              + delta({"tool_calls": [{"index": 1, "id": "call_2", "type": "function",
                                       "function": {"name": "get_time", "arguments": "{}"}}]}, "tool_calls")
              + _chunk(choices=[], usage={"prompt_tokens": 3, "completion_tokens": 9, "total_tokens": 12})
              + "data: [DONE]\n\n")

    async def run():
        async def body():
            yield stream
        req = ResponsesRequest.model_validate({"input": "Hi", "stream": True, "tools": [WEATHER, CLOCK]})
        return [json.loads(e.split("\ndata: ", 1)[1]) async for e in
                OpenAIServingResponses(chat=None)._events(req, body(), "r1")]
    events = asyncio.run(run())
    assert [e["type"] for e in events] == [
        "response.created", "response.in_progress",
        "response.output_item.added", "response.content_part.added", "response.output_text.delta",
        "response.output_text.done", "response.content_part.done", "response.output_item.done",
        "response.output_item.added", "response.function_call_arguments.delta",
        "response.function_call_arguments.delta",
        "response.output_item.added", "response.function_call_arguments.delta",
        "response.function_call_arguments.done", "response.output_item.done",
        "response.function_call_arguments.done", "response.output_item.done", "response.completed"]
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    added = [e["item"] for e in events if e["type"] == "response.output_item.added"]
    assert [(a["type"], a.get("call_id"), a.get("name"), a.get("status")) for a in added] == [
        ("message", None, None, "in_progress"), ("function_call", "call_1", "get_weather", "in_progress"),
        ("function_call", "call_2", "get_time", "in_progress")]
    pieces = [e["delta"] for e in events if e["type"] == "response.function_call_arguments.delta"
              and e["output_index"] == 1]
    assert "".join(pieces) == '{"city": "Oslo"}'
    final = events[-1]["response"]
    assert [o["type"] for o in final["output"]] == ["message", "function_call", "function_call"]
    assert [o["id"] for o in final["output"]] == [a["id"] for a in added]
    assert final["output"][1]["arguments"] == '{"city": "Oslo"}' and final["output"][1]["status"] == "completed"
    assert final["output"][0]["content"][0]["text"] == "Checking." and final["usage"]["output_tokens"] == 9


def test_a_streamed_named_call_matches_the_whole_answer(app, tiny_engine):
    import openai

    async def run():
        http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test", timeout=60)
        client = openai.AsyncOpenAI(base_url="http://test/v1", api_key="x", http_client=http, max_retries=0)
        common = dict(model=tiny_engine[2][0], input="What is the weather in Paris?", tools=[WEATHER],
                      max_output_tokens=10, temperature=0, tool_choice={"type": "function", "name": "get_weather"})
        whole = await client.responses.create(**common)
        events = [e async for e in await client.responses.create(stream=True, **common)]
        await http.aclose()
        return whole, events
    whole, events = asyncio.run(run())
    kinds = [e.type for e in events]
    assert kinds[:3] == ["response.created", "response.in_progress", "response.output_item.added"]
    assert events[2].item.type == "function_call" and events[2].item.name == "get_weather"
    args = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
    (call,) = events[-1].response.output
    assert args == call.arguments == whole.output[0].arguments
    assert kinds[-3:] == ["response.function_call_arguments.done", "response.output_item.done",
                          "response.incomplete" if whole.status == "incomplete" else "response.completed"]



PERSON = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 8}, "age": {"type": "integer"}},
          "required": ["name", "age"], "additionalProperties": False}


def test_text_format_json_schema_and_json_object_constrain_the_output(tiny_llama_dir):
    """``text.format`` as OpenAI's Responses API sends it: the output text is JSON of the schema (a random tiny
    model writes whatever the grammar allows; the engine's disable_any_whitespace keeps it from writing only
    blanks), and the response echoes the format; json_object gives an object. (The openai client's
    ``responses.parse`` on the real model: tests/server/test_structured_output_server.py.)"""
    from app_client import serve_in_process
    fmt = {"type": "json_schema", "name": "person", "schema": PERSON, "strict": True}
    with serve_in_process(tiny_llama_dir, "--max-model-len", "256", "--structured-outputs-config",
                          '{"disable_any_whitespace": true}') as (app, _):
        typed, obj = post_all(app, [
            ("/v1/responses", {"input": "Who?", "text": {"format": fmt}, "max_output_tokens": 80, "temperature": 0}),
            ("/v1/responses", {"input": "Who?", "text": {"format": {"type": "json_object"}}, "max_output_tokens": 40,
                               "temperature": 0})])
    typed, obj = typed.json(), obj.json()
    text = typed["output"][0]["content"][0]["text"]
    assert typed["status"] == "completed", text
    person = json.loads(text)
    assert set(person) == {"name", "age"} and isinstance(person["name"], str) and isinstance(person["age"], int)
    assert typed["text"]["format"] == fmt
    obj_text = obj["output"][0]["content"][0]["text"]
    assert obj_text.startswith("{") and (obj["status"] != "completed" or isinstance(json.loads(obj_text), dict))
    assert obj["text"]["format"] == {"type": "json_object"}


def test_bad_text_formats_are_400s_naming_text(app):
    bad = [({"format": {"type": "json_schema", "name": "p"}}, "needs 'schema'"),
           ({"format": {"type": "json_schema", "schema": PERSON}}, "needs 'name'"),
           ({"format": {"type": "yaml"}}, "must be 'text', 'json_object' or 'json_schema'")]
    responses = post_all(app, [("/v1/responses", {"input": "Hi", "max_output_tokens": 2, "text": text})
                               for text, _ in bad])
    for r, (text, words) in zip(responses, bad):
        error = r.json()["error"]
        assert r.status_code == 400 and error["param"] == "text" and words in error["message"], (text, r.text)
