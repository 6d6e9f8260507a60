"""Requests a vLLM user sends that once answered differently from vLLM (found by an audit with the openai client and
curl): each test states what vLLM returns for the same body."""
from __future__ import annotations

import json

import httpx
import openai
import pytest

from server_utils import MODEL, openai_client, server_fixture

PROMPT = "The capital of France is Paris"


# The bundled model, with --enable-prompt-tokens-details, --trust-request-chat-template and
# --exclude-tools-when-tool-choice-none (the tests that do not use them do not notice them).
server = server_fixture("--enable-prompt-tokens-details", "--trust-request-chat-template",
                       "--exclude-tools-when-tool-choice-none")


@pytest.fixture(scope="module")
def client(server):
    return openai_client(server)


def post(server, path: str, body: dict) -> httpx.Response:
    return httpx.post(server.url + path, json={"model": MODEL, **body}, timeout=120)


# ---- /v1/completions echo --------------------------------------------------------------------------------------------
def test_echo_max_tokens_0_returns_prompt_logprobs(server, client):
    # lm-eval-harness scores a text this way (loglikelihood): the prompt alone, with a logprob per prompt token.
    out = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=0, echo=True, logprobs=1)
    (choice,) = out.choices
    assert choice.text == PROMPT and choice.finish_reason == "length"
    lp = choice.logprobs
    assert lp is not None
    assert len(lp.tokens) == out.usage.prompt_tokens and "".join(lp.tokens) == PROMPT
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None      # nothing predicts the first token
    assert all(x <= 0.0 for x in lp.token_logprobs[1:])
    assert out.usage.completion_tokens == 0
    # The same numbers as the prompt part of an echo that also generates.
    longer = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=2, temperature=0, echo=True,
                                       logprobs=1)
    n = out.usage.prompt_tokens
    assert longer.choices[0].logprobs.tokens[:n] == lp.tokens
    assert longer.choices[0].logprobs.token_logprobs[1:n] == pytest.approx(lp.token_logprobs[1:], abs=1e-4)


def test_echo_max_tokens_0_checks_sampling_fields(server):
    r = post(server, "/v1/completions", {"prompt": PROMPT, "max_tokens": 0, "echo": True, "temperature": -1})
    assert r.status_code == 400 and r.json()["error"]["param"] == "temperature"


def test_echo_max_tokens_0_streams_sse(client):
    # stream=true must answer with server-sent events even when nothing is generated (the openai client read a
    # plain JSON body as an empty stream).
    chunks = list(client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=0, echo=True, stream=True,
                                            logprobs=0, stream_options={"include_usage": True}))
    text_chunks = [c for c in chunks if c.choices]
    assert "".join(c.choices[0].text for c in text_chunks) == PROMPT
    assert text_chunks[-1].choices[0].finish_reason == "length"
    assert "".join(text_chunks[0].choices[0].logprobs.tokens) == PROMPT
    assert chunks[-1].usage.completion_tokens == 0


def test_echo_logprobs_stream_matches_whole(client):
    kw = dict(model=MODEL, prompt=PROMPT, max_tokens=3, temperature=0, echo=True, logprobs=1)
    whole = client.completions.create(**kw).choices[0]
    chunks = [c.choices[0] for c in client.completions.create(**kw, stream=True) if c.choices]
    tokens = [t for c in chunks for t in c.logprobs.tokens]
    token_logprobs = [x for c in chunks for x in c.logprobs.token_logprobs]
    offsets = [x for c in chunks for x in c.logprobs.text_offset]
    assert "".join(c.text for c in chunks) == whole.text
    assert tokens == whole.logprobs.tokens          # the prompt's tokens first, as in the whole response
    assert token_logprobs[0] is None and whole.logprobs.token_logprobs[0] is None
    assert token_logprobs[1:] == pytest.approx(whole.logprobs.token_logprobs[1:], abs=1e-4)
    assert offsets == whole.logprobs.text_offset


# ---- /v1/chat/completions echo of content parts --------------------------------------------------------------------
def test_chat_echo_of_content_parts_is_text(client):
    # vLLM's chat echo prepends the last message's text when its role answers; for content parts that is their texts
    # joined by newlines (how the template saw them too). It was a 400 "can only concatenate list (not "str") to
    # list", and a stream sent the list of parts as delta.content.
    parts = [{"type": "text", "text": "The capital of France"}, {"type": "text", "text": "is"}]
    body = dict(model=MODEL, messages=[{"role": "user", "content": "Tell me about France."},
                                       {"role": "assistant", "content": parts}],
                max_tokens=3, temperature=0,
                extra_body={"echo": True, "continue_final_message": True, "add_generation_prompt": False})
    as_string = client.chat.completions.create(**{**body, "messages": [
        body["messages"][0], {"role": "assistant", "content": "The capital of France\nis"}]})
    whole = client.chat.completions.create(**body)
    content = whole.choices[0].message.content
    assert content == as_string.choices[0].message.content
    assert content.startswith("The capital of France\nis") and len(content) > len("The capital of France\nis")
    deltas = [c.choices[0].delta.content for c in client.chat.completions.create(stream=True, **body) if c.choices]
    assert all(d is None or isinstance(d, str) for d in deltas), deltas
    assert "".join(d or "" for d in deltas) == content


# ---- tools -----------------------------------------------------------------------------------------------------------
MESSAGES = [{"role": "user", "content": "Weather in Paris?"}]


@pytest.mark.parametrize("tool", [
    {"type": "function", "function": {"description": "no name"}},
    {"type": "function"},
    {"type": "function", "function": {"name": "f", "parameters": 5}},
    {"type": "retrieval", "function": {"name": "f"}},
])
def test_malformed_tool_is_a_400_without_tool_choice(server, tool):
    # vLLM's pydantic model of a tool refuses these whatever tool_choice is; they used to be rendered silently.
    r = post(server, "/v1/chat/completions", {"messages": MESSAGES, "tools": [tool], "max_tokens": 2})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == "tools"
    r = post(server, "/tokenize", {"messages": MESSAGES, "tools": [tool]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "tools"
    good = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
    r = post(server, "/v1/chat/completions", {"messages": MESSAGES, "tools": [good], "tool_choice": "none",
                                              "max_tokens": 2})
    assert r.status_code == 200


def test_tools_without_tool_choice_need_auto_tool_choice(server, client):
    # With tools, tool_choice defaults to "auto" (OpenAI, vLLM): a server started without --enable-auto-tool-choice
    # answers vLLM's 400. It answered plain text, so a client never learnt that its tools were not in use.
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL, messages=MESSAGES, tools=WEATHER, max_tokens=2)
    assert e.value.body["message"] == ('"auto" tool choice requires --enable-auto-tool-choice and '
                                       '--tool-call-parser to be set')
    # tool_choice "none" (or an explicit null) shows the tools to the template and answers text.
    for choice in ("none", None):
        r = post(server, "/v1/chat/completions", {"messages": MESSAGES, "tools": WEATHER, "tool_choice": choice,
                                                  "max_tokens": 2})
        assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"], r.text
    # An empty tools array is a 400 whatever tool_choice is (vLLM, OpenAI).
    for extra in ({}, {"tool_choice": "none"}, {"tool_choice": "required"}):
        r = post(server, "/v1/chat/completions", {"messages": MESSAGES, "tools": [], "max_tokens": 2, **extra})
        assert r.status_code == 400, r.text
        assert r.json()["error"]["param"] == "tools" and "must not be an empty array" in r.json()["error"]["message"]


def test_exclude_tools_when_tool_choice_none(server):
    # vLLM's flag (it was an unknown argument): tool_choice "none" keeps the tools out of the template; any other
    # choice (and an explicit null) still shows them.
    template = "{% if tools %}[tools: {{ tools | length }}]{% endif %}{{ messages[-1].content }}"

    def prompt_tokens(extra: dict) -> int:
        r = post(server, "/v1/chat/completions", {"messages": MESSAGES, "chat_template": template, "max_tokens": 1,
                                                  **extra})
        assert r.status_code == 200, r.text
        return r.json()["usage"]["prompt_tokens"]

    bare = prompt_tokens({})
    assert prompt_tokens({"tools": WEATHER, "tool_choice": "none"}) == bare
    assert prompt_tokens({"tools": WEATHER, "tool_choice": None}) > bare
    assert prompt_tokens({"tools": WEATHER, "tool_choice": "required", "max_tokens": 30}) > bare


@pytest.mark.parametrize("tool_choice, param, message", [
    ({"type": "function", "function": "get_weather"}, "tool_choice.function", "Invalid value for `function`"),
    ({"type": "function"}, "tool_choice.function", "Invalid value for `function`"),
    ({"type": "function", "function": {}}, "tool_choice.function.name", "Expected field `name` in `function`"),
    ({"type": "function", "function": {"name": 3}}, "tool_choice.function.name", "Invalid `name` in `function`"),
    ({"type": "function", "function": {"name": "nope"}}, "tool_choice",
     "The tool specified in `tool_choice` does not match any of the specified `tools`"),
    ("sometimes", "tool_choice", 'Invalid value for `tool_choice`: sometimes! Only named tools, "none", "auto" or '
                                 '"required" are supported.'),
])
def test_malformed_tool_choice_is_a_400(server, tool_choice, param, message):
    # vLLM's messages; a "function" that is not an object was a 500 (AttributeError).
    r = post(server, "/v1/chat/completions", {"messages": MESSAGES, "tools": WEATHER, "tool_choice": tool_choice,
                                              "max_tokens": 2})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param and message in r.json()["error"]["message"], r.text


# ---- chat_template_kwargs ----------------------------------------------------------------------------------------------
def test_chat_template_kwargs_override_template_arguments(server):
    # vLLM merges chat_template_kwargs over add_generation_prompt / continue_final_message / tools; the same key
    # in both used to be a 400 "got multiple values for keyword argument".
    plain = post(server, "/tokenize", {"messages": MESSAGES, "add_generation_prompt": False}).json()["tokens"]
    with_prompt = post(server, "/tokenize", {"messages": MESSAGES}).json()["tokens"]
    assert len(with_prompt) > len(plain)
    r = post(server, "/tokenize", {"messages": MESSAGES, "chat_template_kwargs": {"add_generation_prompt": False}})
    assert r.status_code == 200, r.text
    assert r.json()["tokens"] == plain
    r = post(server, "/v1/chat/completions", {"messages": MESSAGES, "max_tokens": 1,
                                              "chat_template_kwargs": {"add_generation_prompt": False}})
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["prompt_tokens"] == len(plain)
    r = post(server, "/v1/chat/completions", {"messages": MESSAGES, "max_tokens": 1,
                                              "chat_template_kwargs": {"add_generation_prompt": "no"}})
    assert r.status_code == 400 and "add_generation_prompt" in r.json()["error"]["message"]


def test_prompt_logprobs_of_a_one_token_prompt(server):
    # vLLM answers [null] (one entry per prompt token); it was null, as if prompt_logprobs had not been asked for.
    r = post(server, "/v1/completions", {"prompt": [100], "max_tokens": 1, "prompt_logprobs": 0})
    assert r.status_code == 200 and r.json()["choices"][0]["prompt_logprobs"] == [None]


# ---- --enable-prompt-tokens-details --------------------------------------------------------------------------------------
def test_prompt_tokens_details_report_prefix_cache_hits(server, client):
    # The flag was accepted and ignored (prompt_tokens_details stayed null); vLLM reports cached_tokens when a
    # prefix-cache hit supplied some of the prompt, and null otherwise.
    prompt = "Prefix caching test: " + " ".join(f"word{i}" for i in range(40))
    first = client.completions.create(model=MODEL, prompt=prompt, max_tokens=1)
    assert first.usage.prompt_tokens_details is None                      # nothing cached yet
    again = client.completions.create(model=MODEL, prompt=prompt, max_tokens=1)
    cached = again.usage.prompt_tokens_details.cached_tokens
    assert cached > 0 and cached % 16 == 0 and cached < again.usage.prompt_tokens    # whole blocks of 16
    chunks = list(client.completions.create(model=MODEL, prompt=prompt, max_tokens=2, stream=True,
                                            stream_options={"include_usage": True}))
    assert chunks[-1].usage.prompt_tokens_details.cached_tokens == cached
    messages = [{"role": "user", "content": prompt}]
    client.chat.completions.create(model=MODEL, messages=messages, max_tokens=1)
    chat = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=1)
    assert chat.usage.prompt_tokens_details.cached_tokens >= cached
    chunks = list(client.chat.completions.create(model=MODEL, messages=messages, max_tokens=1, stream=True,
                                                 stream_options={"include_usage": True}))
    assert chunks[-1].usage.prompt_tokens_details.cached_tokens == chat.usage.prompt_tokens_details.cached_tokens


# ---- parallel_tool_calls -------------------------------------------------------------------------------------------------
WEATHER = [{"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
THREE_CITIES = [{"role": "user", "content": "What is the weather in Paris, in London and in Rome? "
                                            "Call get_weather once per city."}]


def test_parallel_tool_calls_false_gives_one_call(client):
    # The field was ignored. vLLM returns one tool call at most when it is false; here the "required" constraint
    # allows only one, so the call also ends instead of running into max_tokens.
    kw = dict(model=MODEL, messages=THREE_CITIES, tools=WEATHER, tool_choice="required", max_tokens=80,
              temperature=0)
    chunks = list(client.chat.completions.create(**kw, stream=True))
    indexes = {tc.index for c in chunks for ch in c.choices for tc in (ch.delta.tool_calls or [])}
    assert len(indexes) > 1                         # by default this prompt makes several calls
    out = client.chat.completions.create(**kw, parallel_tool_calls=False)
    (choice,) = out.choices
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls
    assert call.function.name == "get_weather" and json.loads(call.function.arguments)["city"]
    chunks = list(client.chat.completions.create(**kw, parallel_tool_calls=False, stream=True))
    calls = [tc for c in chunks for ch in c.choices for tc in (ch.delta.tool_calls or [])]
    assert {tc.index for tc in calls} == {0} and chunks[-1].choices[0].finish_reason == "tool_calls"
    assert "".join(tc.function.arguments or "" for tc in calls) == call.function.arguments


def test_required_tool_choice_cut_by_max_tokens(client):
    # The array of calls does not end: no tool calls and empty content (vLLM), streamed or not. The partial JSON
    # came back as content, and a stream sent it again as content after its partial calls.
    kw = dict(model=MODEL, messages=THREE_CITIES, tools=WEATHER, tool_choice="required", max_tokens=12,
              temperature=0)
    (choice,) = client.chat.completions.create(**kw).choices
    assert choice.finish_reason == "length" and choice.message.content == "" and choice.message.tool_calls is None
    chunks = [c for c in client.chat.completions.create(**kw, stream=True) if c.choices]
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == ""
    assert chunks[-1].choices[0].finish_reason == "length"


def test_required_tool_choice_with_defs(client):
    # Tool parameters written by pydantic keep nested models and enums in "$defs" with "#/$defs/..." references;
    # nested in the "required" array schema they pointed nowhere (400 "Cannot find field '$defs'"). vLLM moves
    # them to the root.
    params = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 10},
                                               "unit": {"$ref": "#/$defs/Unit"}},
              "required": ["city", "unit"], "additionalProperties": False,
              "$defs": {"Unit": {"enum": ["celsius", "fahrenheit"]}}}
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": params}}]
    out = client.chat.completions.create(model=MODEL, messages=MESSAGES, tools=tools, tool_choice="required",
                                         max_tokens=60, temperature=0, parallel_tool_calls=False)
    (call,) = out.choices[0].message.tool_calls
    assert json.loads(call.function.arguments)["unit"] in ("celsius", "fahrenheit"), call.function.arguments
    other = {"type": "function", "function": {"name": "get_time", "parameters": {
        "type": "object", "properties": {"unit": {"$ref": "#/$defs/Unit"}}, "$defs": {"Unit": {"enum": ["s"]}}}}}
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL, messages=MESSAGES, tools=tools + [other], tool_choice="required",
                                       max_tokens=5)
    assert e.value.body["param"] == "tools" and "'Unit' has multiple schemas" in e.value.body["message"]


# ---- assistant tool calls in the conversation ------------------------------------------------------------------------
def rendered(server, messages: list[dict], template: str) -> httpx.Response:
    r = post(server, "/tokenize", {"messages": messages, "chat_template": template, "add_generation_prompt": False})
    if r.status_code != 200:
        return r
    return post(server, "/detokenize", {"tokens": r.json()["tokens"]})


def test_tool_call_arguments_reach_the_template_as_a_dict(server):
    # The OpenAI format carries arguments as a JSON string; vLLM (and HF) hand templates a dict, so that
    # "arguments.city" or "arguments | tojson" work. The string went through as is.
    template = ("{% for m in messages %}{% for tc in m.tool_calls or [] %}"
                "{{ tc.function.name }}:{{ tc.function.arguments.city }};{% endfor %}{% endfor %}")
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
    messages = MESSAGES + [{"role": "assistant", "content": None, "tool_calls": [call]},
                           {"role": "tool", "tool_call_id": "call_1", "content": "20C"}]
    r = rendered(server, messages, template)
    assert r.status_code == 200 and r.json()["prompt"] == "get_weather:Paris;"
    bad = {**call, "function": {"name": "get_weather", "arguments": "{not json"}}
    r = post(server, "/v1/chat/completions", {"messages": MESSAGES + [{"role": "assistant", "tool_calls": [bad]}],
                                              "max_tokens": 1})
    assert r.status_code == 400 and "arguments is not valid JSON" in r.json()["error"]["message"]


def test_documents_reach_the_template(server):
    # vLLM's chat field for RAG templates (Command-R, Granite); it was accepted and never passed on.
    template = "{% for d in documents or [] %}[{{ d.title }}: {{ d.text }}]{% endfor %}{{ messages[-1].content }}"
    docs = [{"title": "Paris", "text": "capital of France"}]
    ids = post(server, "/tokenize", {"prompt": "[Paris: capital of France]Weather in Paris?",
                                     "add_special_tokens": False}).json()["tokens"]
    r = post(server, "/v1/chat/completions", {"messages": MESSAGES, "documents": docs, "chat_template": template,
                                              "add_generation_prompt": False, "max_tokens": 1,
                                              "return_token_ids": True})
    assert r.status_code == 200, r.text
    assert r.json()["prompt_token_ids"] == ids


# ---- which field an error names --------------------------------------------------------------------------------------------
def test_logprob_limits_name_the_field_sent(server):
    r = post(server, "/v1/chat/completions", {"messages": MESSAGES, "logprobs": True, "top_logprobs": 50})
    assert r.status_code == 400 and r.json()["error"]["param"] == "top_logprobs"
    r = post(server, "/v1/completions", {"prompt": PROMPT, "prompt_logprobs": 50})
    assert r.status_code == 400 and r.json()["error"]["param"] == "prompt_logprobs"
    r = post(server, "/v1/completions", {"prompt": PROMPT, "logprobs": 50})
    assert r.status_code == 400 and r.json()["error"]["param"] == "logprobs"


# ---- truncate_prompt_tokens=-1 -----------------------------------------------------------------------------------------
def test_truncate_prompt_tokens_minus_one(server):
    # vLLM's -1 means "keep the last max_model_len tokens"; it was a 400 "must be >= 1".
    ids = post(server, "/tokenize", {"prompt": PROMPT}).json()["tokens"]
    for path, body in (("/v1/completions", {"prompt": PROMPT}), ("/v1/chat/completions", {"messages": MESSAGES})):
        r = post(server, path, {**body, "max_tokens": 1, "truncate_prompt_tokens": -1})
        assert r.status_code == 200, r.text
    r = post(server, "/v1/completions", {"prompt": PROMPT, "max_tokens": 1, "truncate_prompt_tokens": -1})
    assert r.json()["usage"]["prompt_tokens"] == len(ids)
    r = post(server, "/v1/completions", {"prompt": PROMPT, "max_tokens": 1, "truncate_prompt_tokens": 2})
    assert r.json()["usage"]["prompt_tokens"] == 2
    for bad in (0, -2):
        r = post(server, "/v1/completions", {"prompt": PROMPT, "max_tokens": 1, "truncate_prompt_tokens": bad})
        assert r.status_code == 400 and r.json()["error"]["param"] == "truncate_prompt_tokens"


def test_tokenize_without_prompt_or_messages_names_the_fields(server):
    # The error named the request model ("TokenizeCompletionRequest") as the param, not a field of the body.
    r = post(server, "/tokenize", {})
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["param"] == "prompt" and "Request" not in err["message"]
    assert "prompt: Field required" in err["message"] and "messages: Field required" in err["message"]


def test_priority_without_priority_scheduling_names_priority(server):
    r = post(server, "/v1/completions", {"prompt": PROMPT, "max_tokens": 1, "priority": 5})
    assert r.status_code == 400 and r.json()["error"]["param"] == "priority"


def test_chat_message_names_reasoning_as_vllm(server):
    # vLLM renamed the message's chain-of-thought field reasoning_content -> reasoning (PR 27752) and removed the old
    # name (PR 33402); clients of vLLM 0.24 read message["reasoning"]. Without a reasoning parser it is null.
    r = post(server, "/v1/chat/completions", {"messages": MESSAGES, "max_tokens": 2})
    message = r.json()["choices"][0]["message"]
    assert "reasoning" in message and message["reasoning"] is None
    assert "reasoning_content" not in message
