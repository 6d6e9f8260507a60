"""/v1/responses with function tools (OpenAI's Responses API, as vLLM serves it): flat function tools run as the
chat completion's tools, calls come back as ``function_call`` output items, and a tool loop's ``function_call`` /
``function_call_output`` items go back in. Driven in-process on a tiny random Llama (a named tool choice constrains
its output to the tool's arguments, so it calls whatever it "thinks"), through the official ``openai`` client."""
from __future__ import annotations

import asyncio

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
           ({"tools": [WEATHER], "stream": True}, "tools", "stream=true"),
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
