"""gpt-oss served as vLLM serves it: ``--reasoning-parser openai_gptoss`` returns the harmony analysis channel as
``message.reasoning`` and the final channel as ``content``; ``--tool-call-parser openai --enable-auto-tool-choice``
turns ``to=functions.NAME`` messages into OpenAI ``tool_calls`` (finish_reason "tool_calls"), streamed token by
token or not; the next request's assistant call, its reasoning and the tool's answer render through the model's
chat template (``thinking``, ``reasoning_effort``, ``model_identity``, ``builtin_tools``).

No gpt-oss tokenizer here: a tiny Llama whose tokenizer (SmolLM2's) has harmony's special tokens, a template written
like gpt-oss's, and the engine's output scripted one token per piece (``scripted_engine``)."""
from __future__ import annotations

import pytest

from app_client import post_all, serve_args, serve_in_process
from pagedllm import harmony
from test_reasoning_parsers import scripted_engine, sse_chunks

WEATHER_TOOL = {"type": "function", "function": {"name": "get_weather", "description": "The weather in a city.",
                                                 "parameters": {"type": "object", "properties": {
                                                     "city": {"type": "string"}}, "required": ["city"]}}}
ASK = [{"role": "user", "content": "Weather in Paris?"}]
HARMONY_FLAGS = ("--reasoning-parser", "openai_gptoss", "--enable-auto-tool-choice", "--tool-call-parser", "openai")
# The model's pieces, one token each, as gpt-oss writes them (the stop token, <|return|> or <|call|>, is not text).
ANSWER = ["<|channel|>", "analysis", "<|message|>", "Simple ", "question.", "<|end|>", "<|start|>", "assistant",
          "<|channel|>", "final", "<|message|>", "It is ", "sunny."]
CALL = ["<|channel|>", "analysis", "<|message|>", "Need the ", "weather.", "<|end|>", "<|start|>", "assistant",
        "<|channel|>", "commentary to", "=functions.get_weather", " ", "<|constrain|>", "json", "<|message|>",
        '{"city"', ':"Par', 'is"}']
# Written like gpt-oss's template for what these tests look at: the system message's identity, effort and built-in
# tools, the first system message as the developer's instructions, the function tools, a call turn's analysis
# ("thinking") before its call, the tool's answer (JSON-encoded) addressed from the last call's function.
GPT_OSS_LIKE_TEMPLATE = (
    "<|start|>system<|message|>{{ model_identity if model_identity is defined else 'You are ChatGPT.' }}\n"
    "Reasoning: {{ reasoning_effort if reasoning_effort is defined else 'medium' }}"
    "{% if builtin_tools %}{{ '\n# Tools: ' + builtin_tools | join(', ') }}{% endif %}<|end|>"
    "{% if messages[0].role == 'system' %}{% set loop_messages = messages[1:] %}"
    "<|start|>developer<|message|># Instructions\n\n{{ messages[0].content }}<|end|>"
    "{% else %}{% set loop_messages = messages %}{% endif %}"
    "{% if tools %}<|start|>developer<|message|># Tools\n{% for t in tools %}type {{ t.function.name }}\n"
    "{% endfor %}<|end|>{% endif %}"
    "{% set last = namespace(name=none) %}"
    "{% for m in loop_messages %}"
    "{% if m.role == 'assistant' and m.tool_calls %}{% set call = m.tool_calls[0].function %}"
    "{% if m.thinking %}<|start|>assistant<|channel|>analysis<|message|>{{ m.thinking }}<|end|>{% endif %}"
    "<|start|>assistant to=functions.{{ call.name }}<|channel|>commentary json<|message|>"
    "{{ call.arguments | tojson }}<|call|>{% set last.name = call.name %}"
    "{% elif m.role == 'assistant' %}<|start|>assistant<|channel|>final<|message|>{{ m.content }}<|end|>"
    "{% elif m.role == 'tool' %}<|start|>functions.{{ last.name }} to=assistant<|channel|>commentary<|message|>"
    "{{ m.content | tojson }}<|end|>"
    "{% else %}<|start|>{{ m.role }}<|message|>{{ m.content }}<|end|>{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|start|>assistant{% endif %}")


@pytest.fixture(scope="module")
def harmony_model_dir(tokenizer, tmp_path_factory):
    """A tiny random Llama whose tokenizer has gpt-oss's harmony markers as special tokens."""
    import copy
    from tiny_models import save_tiny_llama
    path = tmp_path_factory.mktemp("tiny_harmony_model")
    tok = copy.deepcopy(tokenizer)
    tok.add_special_tokens({"additional_special_tokens": list(harmony.SPECIAL_TOKENS)})
    save_tiny_llama(path, len(tok), bos_token_id=1, eos_token_id=2)
    tok.save_pretrained(path)
    return str(path)


# ---- the reader ------------------------------------------------------------------------------------------------------
def test_split_sorts_messages_as_vllm():
    out = harmony.split("".join(ANSWER))
    assert (out.reasoning, out.content, out.calls) == ("Simple question.", "It is sunny.", [])
    out = harmony.split("".join(CALL))
    assert (out.reasoning, out.content, out.calls) == ("Need the weather.", None, [("get_weather", {"city": "Paris"})])
    # The recipient after the role (the template's form), a preamble on the commentary channel (content), two
    # analysis messages (joined by a newline), a built-in tool's call (dropped), arguments that are not JSON.
    text = ("<|channel|>analysis<|message|>A<|end|><|start|>assistant<|channel|>commentary<|message|>Checking."
            "<|end|><|start|>assistant<|channel|>analysis<|message|>B<|end|>"
            "<|start|>assistant<|channel|>commentary to=browser.search json<|message|>{}<|end|>"
            "<|start|>assistant to=functions.f<|channel|>commentary json<|message|>{not json")
    out = harmony.split(text)
    assert (out.reasoning, out.content, out.calls) == ("A\nB", "Checking.", [("f", "{not json")])
    # Cut by max_tokens inside the analysis: all reasoning; no harmony at all: the raw text is the content.
    assert harmony.split("<|channel|>analysis<|message|>Hmm, let").reasoning == "Hmm, let"
    assert (harmony.split("plain words").content, harmony.split("<|channel|>anal").content) == ("plain words", None)


def test_stream_reader_char_by_char():
    """Fed one character at a time (markers split across deltas), the reader's pieces add up to each message's text
    and never carry a piece of a marker."""
    text = "".join(ANSWER)
    reader = harmony.HarmonyStream()
    pieces = [p for k, ch in enumerate(text) for p in reader.feed(ch, final=k == len(text) - 1)]
    by_kind: dict = {}
    for _, message, piece in pieces:
        by_kind[message.kind] = by_kind.get(message.kind, "") + piece
    assert by_kind == {"reasoning": "Simple question.", "content": "It is sunny."}


def test_unknown_combination_and_tokenizer_without_markers(tiny_llama_dir, harmony_model_dir):
    with pytest.raises(ValueError, match=r"--reasoning-parser openai_gptoss needs gpt-oss's harmony special tokens "
                                         r"<\|start\|>"):
        with serve_in_process(tiny_llama_dir, "--reasoning-parser", "openai_gptoss"):
            pass
    with pytest.raises(ValueError, match="use them together, not with another format's parser"):
        with serve_in_process(harmony_model_dir, "--reasoning-parser", "openai_gptoss", "--enable-auto-tool-choice",
                              "--tool-call-parser", "hermes"):
            pass
    assert serve_args(harmony_model_dir, *HARMONY_FLAGS).tool_call_parser == "openai"


# ---- the server ------------------------------------------------------------------------------------------------------
def test_reasoning_and_content_whole_and_streamed(harmony_model_dir):
    with serve_in_process(harmony_model_dir, *HARMONY_FLAGS, chat_template=GPT_OSS_LIKE_TEMPLATE) as (app, engine):
        seen = scripted_engine(engine, ANSWER)
        body = {"messages": ASK, "max_tokens": 20}
        whole, streamed, hidden = post_all(app, [
            ("/v1/chat/completions", body), ("/v1/chat/completions", {**body, "stream": True}),
            ("/v1/chat/completions", {**body, "include_reasoning": False, "stream": True})])
        vocab = engine.input_processor.tokenizer.get_vocab()
    choice = whole.json()["choices"][0]
    assert choice["message"] == {"role": "assistant", "content": "It is sunny.", "reasoning": "Simple question."}
    assert choice["finish_reason"] == "stop"
    deltas = [c["choices"][0]["delta"] for c in sse_chunks(streamed)][1:]
    # Token by token: the markers and headers never show, the pieces arrive as the model writes them.
    assert deltas == [{"reasoning": "Simple "}, {"reasoning": "question."}, {"content": "It is "},
                      {"content": "sunny."}]
    assert [c["choices"][0]["delta"] for c in sse_chunks(hidden)][1:] == [{"content": "It is "}, {"content": "sunny."}]
    # The markers are special tokens: kept in the text; <|return|> and <|call|> end the output (vLLM's gpt-oss).
    assert all(s["params"].skip_special_tokens is False for s in seen)
    assert {vocab["<|return|>"], vocab["<|call|>"]} <= set(seen[0]["params"].stop_token_ids)


def test_tool_call_whole_streamed_and_round_trip(harmony_model_dir):
    with serve_in_process(harmony_model_dir, *HARMONY_FLAGS, chat_template=GPT_OSS_LIKE_TEMPLATE) as (app, engine):
        seen = scripted_engine(engine, CALL)
        body = {"messages": ASK, "tools": [WEATHER_TOOL]}
        whole, streamed = post_all(app, [("/v1/chat/completions", body),
                                         ("/v1/chat/completions", {**body, "stream": True})])
        message = whole.json()["choices"][0]["message"]
        history = [{"role": "system", "content": "Be brief."}, *ASK, message,
                   {"role": "tool", "tool_call_id": message["tool_calls"][0]["id"], "content": '{"temp": 20}'}]
        seen = scripted_engine(engine, ANSWER)
        again, = post_all(app, [("/v1/chat/completions", {
            "messages": history, "tools": [WEATHER_TOOL], "reasoning_effort": "high",
            "chat_template_kwargs": {"model_identity": "You are Weatherbot.", "builtin_tools": ["browser"]}})])
        prompt = engine.input_processor.tokenizer.decode(seen[-1]["prompt_ids"])
    choice = whole.json()["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert (message["reasoning"], message["content"]) == ("Need the weather.", None)
    call, = message["tool_calls"]
    assert call["type"] == "function" and call["id"].startswith("chatcmpl-tool-")
    assert (call["function"]["name"], call["function"]["arguments"]) == ("get_weather", '{"city": "Paris"}')
    chunks = sse_chunks(streamed)
    deltas = [c["choices"][0]["delta"] for c in chunks]
    calls = [t for d in deltas for t in d.get("tool_calls", [])]
    assert calls[0]["function"]["name"] == "get_weather" and calls[0]["id"].startswith("chatcmpl-tool-")
    assert all(t["index"] == 0 for t in calls) and [t for t in calls if "id" in t] == calls[:1]
    assert "".join(t["function"]["arguments"] for t in calls) == '{"city": "Paris"}'
    assert "".join(d.get("reasoning", "") for d in deltas) == "Need the weather."
    assert not any(d.get("content") for d in deltas[1:])
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
    # The next turn renders through the template: the call's analysis (from "reasoning"), the call with its
    # arguments as JSON (not a JSON string), the tool's answer from get_weather, and the request's effort, identity
    # and built-in tools.
    assert again.status_code == 200, again.text
    assert prompt.startswith("<|start|>system<|message|>You are Weatherbot.\nReasoning: high\n# Tools: browser<|end|>"
                             "<|start|>developer<|message|># Instructions\n\nBe brief.<|end|>")
    assert ("<|start|>assistant<|channel|>analysis<|message|>Need the weather.<|end|>"
            "<|start|>assistant to=functions.get_weather<|channel|>commentary json<|message|>{\"city\": \"Paris\"}"
            "<|call|><|start|>functions.get_weather to=assistant<|channel|>commentary<|message|>"
            "\"{\\\"temp\\\": 20}\"<|end|><|start|>assistant") in prompt


def test_tool_parser_alone_and_refusals(harmony_model_dir):
    """--tool-call-parser openai without the reasoning parser: the analysis channel is dropped (vLLM's too); what the
    harmony format cannot take here is a 400 naming the field."""
    with serve_in_process(harmony_model_dir, "--enable-auto-tool-choice", "--tool-call-parser", "openai",
                          chat_template=GPT_OSS_LIKE_TEMPLATE) as (app, engine):
        scripted_engine(engine, ANSWER)
        plain, streamed, effort, required = post_all(app, [
            ("/v1/chat/completions", {"messages": ASK}),
            ("/v1/chat/completions", {"messages": ASK, "stream": True}),
            ("/v1/chat/completions", {"messages": ASK, "reasoning_effort": "none"}),
            ("/v1/chat/completions", {"messages": ASK, "tools": [WEATHER_TOOL], "tool_choice": "required"})])
    assert plain.json()["choices"][0]["message"] == {"role": "assistant", "content": "It is sunny.", "reasoning": None}
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in sse_chunks(streamed)) == "It is sunny."
    assert not any("reasoning" in c["choices"][0]["delta"] for c in sse_chunks(streamed))
    assert effort.status_code == 400 and effort.json()["error"]["param"] == "reasoning_effort"
    assert "'low', 'medium' and 'high'" in effort.json()["error"]["message"]
    assert required.status_code == 400 and "harmony" in required.json()["error"]["message"]


def test_stream_adds_up_to_the_whole_response(harmony_model_dir):
    """Whatever the model writes (a preamble, two analysis messages, no harmony at all), the streamed pieces add up
    to the finished response's fields."""
    outputs = [ANSWER, CALL, ["plain ", "words"],
               ["<|channel|>analysis<|message|>A<|end|><|start|>assistant<|channel|>commentary", "<|message|>Pre",
                "amble.<|end|><|start|>assistant<|channel|>analysis<|message|>",
                "B<|end|><|start|>assistant<|channel|>final<|message|>Done", "."]]
    with serve_in_process(harmony_model_dir, *HARMONY_FLAGS, chat_template=GPT_OSS_LIKE_TEMPLATE) as (app, engine):
        body = {"messages": ASK, "tools": [WEATHER_TOOL]}
        answers = []
        for pieces in outputs:
            scripted_engine(engine, pieces)
            answers.append(post_all(app, [("/v1/chat/completions", body),
                                          ("/v1/chat/completions", {**body, "stream": True})]))
    for whole, streamed in answers:
        message = whole.json()["choices"][0]["message"]
        deltas = [c["choices"][0]["delta"] for c in sse_chunks(streamed)]
        assert ("".join(d.get("content") or "" for d in deltas) or None) == message["content"]
        assert ("".join(d.get("reasoning") or "" for d in deltas) or None) == message["reasoning"]
        args = "".join(t["function"]["arguments"] for d in deltas for t in d.get("tool_calls", []))
        assert args == "".join(c["function"]["arguments"] for c in message.get("tool_calls", []))
    assert [answers[k][0].json()["choices"][0]["message"]["content"] for k in (2, 3)] == ["plain words",
                                                                                          "Preamble.\nDone."]


def test_offline_grammar_with_the_harmony_reasoning_parser_is_refused(harmony_model_dir):
    from pagedllm import LLM, SamplingParams
    from pagedllm.sampling_params import StructuredOutputsParams
    llm = LLM(model=harmony_model_dir, reasoning_parser="openai_gptoss", dtype="float32", max_model_len=64,
              kv_cache_memory_gb=0.01)
    for params in (SamplingParams(structured_outputs=StructuredOutputsParams(json={"type": "object"})),
                   SamplingParams(thinking_token_budget=8)):
        with pytest.raises(ValueError, match="not supported with the openai_gptoss reasoning parser yet"):
            llm.generate(["hi"], params, use_tqdm=False)
    del llm


def test_responses_reasoning_item_and_reasoning_tokens(harmony_model_dir):
    """/v1/responses over the harmony parsers: a reasoning item, then the message; usage counts the analysis body's
    tokens as reasoning (vLLM's count), the output's own token ids decoding to the harmony text."""
    with serve_in_process(harmony_model_dir, *HARMONY_FLAGS, chat_template=GPT_OSS_LIKE_TEMPLATE) as (app, engine):
        tok = engine.input_processor.tokenizer
        ids = tok.encode("".join(ANSWER), add_special_tokens=False)
        reasoning_ids = tok.encode("Simple question.", add_special_tokens=False)
        scripted_engine(engine, [tok.decode([i]) for i in ids], token_ids=ids)
        whole, = post_all(app, [("/v1/responses", {"input": "Weather in Paris?", "reasoning": {"effort": "low"}})])
    body = whole.json()
    assert [item["type"] for item in body["output"]] == ["reasoning", "message"]
    assert body["output"][0]["content"] == [{"type": "reasoning_text", "text": "Simple question."}]
    assert body["output"][1]["content"][0]["text"] == "It is sunny."
    assert body["usage"]["output_tokens_details"]["reasoning_tokens"] == len(reasoning_ids)
    assert body["usage"]["output_tokens"] == len(ids)
