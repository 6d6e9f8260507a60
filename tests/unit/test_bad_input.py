"""Bad input always gets a clear error and never hurts the engine: on the server a 4xx in OpenAI's error shape
``{"error": {"message", "type", "param", "code"}}`` that names the field (never a 500, a Python message such as
"'int' object is not iterable", or a bad value silently accepted), offline a ValueError (TypeError for a wrong
call) with such a message. Meanwhile a normal greedy request running concurrently, and the same request before and
after, give the same text: no bad request takes the engine down, hangs it or loses another request.

In-process (``build_app`` over ASGI) on a tiny random Llama with the SmolLM2 tokenizer: one generating server, one
pooling server (the same checkpoint with --runner pooling) and one ``LLM``. tests/server/test_malformed.py has the
process-level table (body size limits, API keys, request templates)."""
from __future__ import annotations

import asyncio
import json
import math

import httpx

from app_client import serve_in_process

NAN, INF = float("nan"), float("inf")
MAX_N, MAX_BODY = 8, 200_000
U = {"role": "user", "content": "Hi"}
LONG = "hi " * 300                    # > max_model_len (128) tokens
FN = {"type": "function", "function": {"name": "get", "parameters": {"type": "object",
                                                                    "properties": {"a": {"type": "string"}}}}}
C, CH, R, T, D, G = "/v1/completions", "/v1/chat/completions", "/v1/responses", "/tokenize", "/detokenize", "/generate"
E, P, S, RR = "/v1/embeddings", "/pooling", "/score", "/rerank"
JSON = {"Content-Type": "application/json"}
# Python's own messages: an error that reaches the user in these words was not checked where it should have been.
INTERNAL = ("Traceback", "object has no attribute", "is not iterable", "expected str instance", "has no len()",
            "unexpected keyword argument", "got multiple values", "not supported between instances",
            "can only concatenate", "int too big", "object is not subscriptable")


def cm(**kw) -> dict:
    return {"prompt": "Hi", "max_tokens": 2, **kw}


def ch(**kw) -> dict:
    return {"messages": [U], "max_tokens": 2, **kw}


def rs(**kw) -> dict:
    return {"input": "Hi", "max_output_tokens": 2, **kw}


def gen(**kw) -> dict:
    return {"prompt": "Hi", "max_tokens": 2, **kw}


# (method, route, body, status, what the error names: a fragment of `param` or of the message).
# body: a JSON value (NaN / Infinity written as Python's json writes them), raw bytes, or (bytes, headers).
GENERATE_CASES: list[tuple[str, str, object, int, str]] = [
    # the body itself
    ("POST", C, b'{"prompt": "Hi", ', 400, "JSON decode error"),
    ("POST", C, b"", 400, "JSON object"),
    ("POST", C, b"\xff\xfe", 400, "JSON decode error"),
    ("POST", C, [cm()], 400, "JSON object"),
    ("POST", C, "Hi", 400, "JSON object"),
    ("POST", C, None, 400, "JSON object"),
    ("POST", C, b"[" * 100_000 + b"]" * 100_000, 400, "JSON"),
    ("POST", C, b'{"prompt": ' + b"[" * 5000 + b"]" * 5000 + b"}", 400, "JSON"),
    ("POST", C, (json.dumps(cm()).encode(), {"Content-Type": "text/plain"}), 400,
     "'Content-Type: application/json'; this request's Content-Type is 'text/plain'"),
    ("POST", C, (json.dumps(cm()).encode(), {"Content-Type": "application/x-www-form-urlencoded"}), 400,
     "this request's Content-Type is 'application/x-www-form-urlencoded'"),
    ("POST", C, b'{"prompt": "Hi", "max_tokens": 1e400}', 400, "max_tokens"),
    ("POST", C, b'{"prompt": "Hi", "max_tokens": 2}{"x": 1}', 400, "JSON decode error"),
    ("POST", C, b"x" * (MAX_BODY + 1), 413, "--max-request-body-bytes"),
    ("GET", C, None, 405, "not allowed"),
    ("POST", "/v1/nothing", {}, 404, "Not found"),
    # /v1/completions: wrong types, out of range, NaN / Infinity as numbers and as strings
    ("POST", C, cm(temperature="NaN"), 400, "temperature"),
    ("POST", C, cm(temperature="Infinity"), 400, "temperature"),
    ("POST", C, cm(temperature=INF), 400, "temperature"),
    ("POST", C, cm(temperature=[1]), 400, "temperature"),
    ("POST", C, cm(temperature={"a": 1}), 400, "temperature"),
    ("POST", C, cm(temperature=-1), 400, "temperature"),
    ("POST", C, cm(top_p=NAN), 400, "top_p"),
    ("POST", C, cm(top_p=0), 400, "top_p"),
    ("POST", C, cm(top_k=-5), 400, "top_k"),
    ("POST", C, cm(top_k=2 ** 70), 400, "top_k"),
    ("POST", C, cm(min_p=-0.1), 400, "min_p"),
    ("POST", C, cm(repetition_penalty=0), 400, "repetition_penalty"),
    ("POST", C, cm(presence_penalty=3), 400, "presence_penalty"),
    ("POST", C, cm(frequency_penalty=-INF), 400, "frequency_penalty"),
    ("POST", C, cm(length_penalty=NAN), 400, "length_penalty"),
    ("POST", C, cm(max_tokens=1.5), 400, "max_tokens"),
    ("POST", C, cm(max_tokens=0), 400, "max_tokens"),
    ("POST", C, cm(max_tokens=-1), 400, "max_tokens"),
    ("POST", C, cm(max_tokens=2 ** 64), 400, "max_tokens"),
    ("POST", C, cm(max_tokens="many"), 400, "max_tokens"),
    ("POST", C, cm(n=None), 400, "n"),
    ("POST", C, cm(n=0), 400, "n"),
    ("POST", C, cm(n=MAX_N + 1, temperature=1), 400, "--max-n"),
    ("POST", C, cm(best_of=0), 400, "best_of"),
    ("POST", C, cm(best_of=3, n=2, temperature=1), 400, "best_of"),
    ("POST", C, cm(min_tokens=5), 400, "min_tokens"),
    ("POST", C, cm(min_tokens=2 ** 70), 400, "min_tokens"),
    ("POST", C, cm(seed=2 ** 64), 400, "seed"),
    ("POST", C, cm(seed=-(2 ** 63) - 1), 400, "seed"),
    ("POST", C, cm(seed=1.5), 400, "seed"),
    ("POST", C, cm(logprobs=-3), 400, "logprobs"),
    ("POST", C, cm(logprobs=1.5), 400, "logprobs"),
    ("POST", C, cm(logprobs=21), 400, "logprobs"),
    ("POST", C, cm(prompt_logprobs=100), 400, "prompt_logprobs"),
    ("POST", C, cm(prompt_logprobs=1, stream=True), 400, "prompt_logprobs"),
    ("POST", C, cm(prompt_logprobs=-1, stream=True), 400, "prompt_logprobs"),
    ("POST", C, cm(echo="maybe"), 400, "echo"),
    ("POST", C, cm(ignore_eos=None), 400, "ignore_eos"),
    ("POST", C, cm(stream="maybe"), 400, "stream"),
    ("POST", C, cm(stream_options={"include_usage": True}), 400, "stream_options"),
    ("POST", C, cm(stream=True, stream_options=5), 400, "stream_options"),
    ("POST", C, cm(stop=5), 400, "stop"),
    ("POST", C, cm(stop=[5]), 400, "stop"),
    ("POST", C, cm(stop=[None]), 400, "stop"),
    ("POST", C, cm(stop=""), 400, "stop"),
    ("POST", C, cm(stop_token_ids=5), 400, "stop_token_ids"),
    ("POST", C, cm(stop_token_ids=[-1]), 400, "stop_token_ids"),
    ("POST", C, cm(stop_token_ids=[10 ** 9]), 400, "stop_token_ids"),
    ("POST", C, cm(allowed_token_ids=[]), 400, "allowed_token_ids"),
    ("POST", C, cm(allowed_token_ids=[-1]), 400, "allowed_token_ids"),
    ("POST", C, cm(bad_words=[""]), 400, "bad_words"),
    ("POST", C, cm(bad_words=[5]), 400, "bad_words"),
    ("POST", C, cm(logit_bias=[1, 2]), 400, "logit_bias"),
    ("POST", C, cm(logit_bias={"x": 1}), 400, "logit_bias"),
    ("POST", C, cm(logit_bias={"1.5": 1}), 400, "logit_bias"),
    ("POST", C, cm(logit_bias={"": 1}), 400, "logit_bias"),
    ("POST", C, cm(logit_bias={"-1": 1}), 400, "logit_bias"),
    ("POST", C, cm(logit_bias={"999999999": 1}), 400, "logit_bias"),
    ("POST", C, cm(logit_bias={"5": NAN}), 400, "logit_bias"),
    ("POST", C, cm(logit_bias={"5": "x"}), 400, "logit_bias"),
    ("POST", C, cm(truncate_prompt_tokens=-2), 400, "truncate_prompt_tokens"),
    ("POST", C, cm(truncate_prompt_tokens=2 ** 70), 400, "truncate_prompt_tokens"),
    ("POST", C, cm(truncate_prompt_tokens=129), 400, "is greater than max_model_len (128)"),
    ("POST", C, cm(priority="high"), 400, "priority"),
    ("POST", C, cm(priority=5), 400, "priority"),
    ("POST", C, cm(use_beam_search=True, stream=True), 400, "Streaming is not currently supported with beam"),
    ("POST", C, cm(cache_salt=5), 400, "cache_salt"),
    ("POST", C, cm(request_id="a\nINFO forged"), 400, "request_id"),
    ("POST", C, cm(user=5), 400, "user"),
    ("POST", C, cm(model=5), 400, "model"),
    ("POST", C, cm(model="nope"), 404, "model"),
    ("POST", C, cm(model="\ud800"), 404, "model"),
    ("POST", T, {"prompt": "Hi", "model": "\udc00"}, 404, "model"),
    ("POST", C, cm(stop=["a\ud800"]), 400, "stop contains invalid Unicode"),
    ("POST", C, cm(bad_words=["\ud800"]), 400, "bad_words contains invalid Unicode"),
    ("POST", C, cm(guided_regex="\ud800"), 400, "regex contains invalid Unicode"),
    ("POST", C, cm(guided_choice=["\ud800", "b"]), 400, "choice contains invalid Unicode"),
    ("POST", C, cm(guided_grammar='root ::= "\ud800"'), 400, "grammar contains invalid Unicode"),
    ("POST", C, cm(suffix="x"), 400, "suffix"),
    # prompts: empty, out-of-vocab / negative / non-integer ids, bad unicode, longer than max_model_len
    ("POST", C, cm(prompt=None), 400, "prompt"),
    ("POST", C, cm(prompt=""), 400, "prompt"),
    ("POST", C, cm(prompt=[]), 400, "prompt"),
    ("POST", C, cm(prompt=[""]), 400, "prompt"),
    ("POST", C, cm(prompt=[[]]), 400, "prompt"),
    ("POST", C, cm(prompt=[-1]), 400, "prompt"),
    ("POST", C, cm(prompt=[2 ** 70]), 400, "prompt"),
    ("POST", C, cm(prompt=[[1, 2], [3, -1]]), 400, "prompt"),
    ("POST", C, cm(prompt=[1.5, 2]), 400, "prompt"),
    ("POST", C, cm(prompt=[None]), 400, "prompt"),
    ("POST", C, cm(prompt={"a": 1}), 400, "prompt"),
    ("POST", C, cm(prompt="\ud800 lone"), 400, "prompt contains invalid Unicode"),
    ("POST", C, cm(prompt=LONG), 400, "maximum context length is 128"),
    ("POST", C, cm(prompt=list(range(3, 200))), 400, "maximum context length is 128"),
    ("POST", C, cm(prompt="Hi " * 60, max_tokens=100), 400, "maximum context length is 128"),
    # structured output: invalid schemas, regexes, grammars, several at once
    ("POST", C, cm(response_format={"type": "xml"}), 400, "response_format"),
    ("POST", C, cm(response_format="json"), 400, "response_format"),
    ("POST", C, cm(response_format={"type": "json_schema"}), 400, "response_format"),
    ("POST", C, cm(response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": 5}}), 400,
     "response_format"),
    ("POST", C, cm(response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "no"}}}),
     400, "response_format"),
    ("POST", C, cm(response_format={"type": "structural_tag"}), 400, "response_format"),
    ("POST", C, cm(guided_json="{not json"), 400, "guided_json"),
    ("POST", C, cm(guided_regex="("), 400, "guided_regex"),
    ("POST", C, cm(guided_grammar="root ::= "), 400, "guided_grammar"),
    ("POST", C, cm(guided_choice=[]), 400, "guided_choice"),
    ("POST", C, cm(structured_outputs={"json": "x", "regex": "a"}), 400, "structured_outputs"),
    ("POST", C, cm(structured_outputs={"bogus": 1}), 400, "unknown field(s) ['bogus']"),
    ("POST", C, cm(structured_outputs={"regex": 5}), 400, "regex must be a string"),
    ("POST", C, cm(guided_json=5), 400, "guided_json"),
    ("POST", C, cm(guided_regex="a", guided_choice=["a"]), 400, "guided_choice"),
    ("POST", C, cm(guided_regex="a", guided_decoding_backend="outlines"), 400, "guided_decoding_backend"),
    # /v1/chat/completions: messages with wrong roles, missing or wrong content, malformed tools and tool_choice
    ("POST", CH, ch(messages=None), 400, "messages"),
    ("POST", CH, ch(messages=[]), 400, "messages"),
    ("POST", CH, ch(messages="hello"), 400, "messages"),
    ("POST", CH, ch(messages=U), 400, "messages"),
    ("POST", CH, ch(messages=[None]), 400, "messages"),
    ("POST", CH, ch(messages=[[U]]), 400, "messages"),
    ("POST", CH, ch(messages=[{"content": "no role"}]), 400, "messages"),
    ("POST", CH, ch(messages=[{"role": "wizard", "content": "x"}]), 400, "messages"),
    ("POST", CH, ch(messages=[{"role": 5, "content": "x"}]), 400, "messages"),
    ("POST", CH, ch(messages=[{"role": "user", "content": 5}]), 400, "messages"),
    ("POST", CH, ch(messages=[{"role": "user", "content": {"a": 1}}]), 400, "messages"),
    ("POST", CH, ch(messages=[{"role": "user", "content": ["x"]}]), 400, "messages"),
    ("POST", CH, ch(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]),
     400, "messages"),
    ("POST", CH, ch(messages=[{"role": "user", "content": "\ud800"}]), 400, "messages"),
    ("POST", CH, ch(messages=[{"role": "user", "content": LONG}]), 400, "maximum context length is 128"),
    ("POST", CH, ch(messages=[{"role": "assistant", "tool_calls": "x"}]), 400, "messages"),
    ("POST", CH, ch(messages=[{"role": "assistant", "tool_calls": [{"id": "1", "type": "function", "function": {
        "name": "f", "arguments": "{bad"}}]}]), 400, "arguments is not valid JSON"),
    ("POST", CH, ch(max_tokens=200), 400, "max_"),
    ("POST", CH, ch(max_completion_tokens=NAN), 400, "max_completion_tokens"),
    ("POST", CH, ch(max_completion_tokens=0), 400, "max_tokens"),
    ("POST", CH, ch(logprobs="x"), 400, "logprobs"),
    ("POST", CH, ch(top_logprobs=2), 400, "top_logprobs"),
    ("POST", CH, ch(logprobs=True, top_logprobs=-1), 400, "top_logprobs"),
    ("POST", CH, ch(logprobs=True, top_logprobs=21), 400, "logprobs"),
    ("POST", CH, ch(logprobs=True, top_logprobs=2 ** 70), 400, "logprobs"),
    ("POST", CH, ch(n=2, temperature=0), 400, "n"),
    ("POST", CH, ch(add_generation_prompt=True, continue_final_message=True), 400, "continue_final_message"),
    ("POST", CH, ch(chat_template="{{ 'x' }}"), 400, "chat_template"),
    ("POST", CH, ch(chat_template_kwargs="x"), 400, "chat_template_kwargs"),
    ("POST", CH, ch(chat_template_kwargs={"add_generation_prompt": "x"}), 400, "add_generation_prompt"),
    ("POST", CH, ch(chat_template_kwargs={"tokenize": True}), 400, "chat_template_kwargs"),
    ("POST", CH, ch(chat_template_kwargs={"messages": 5}), 400, "chat_template_kwargs"),
    ("POST", CH, ch(chat_template_kwargs={"tools": 5}), 400, "tools must be a list"),
    ("POST", CH, ch(messages=[{"role": "user", "content": [{"type": "text", "text": 5}]}]), 400,
     "messages[0].content[0]"),
    ("POST", CH, ch(messages=[{"role": "user", "content": [{"type": "text"}]}]), 400, "messages[0].content[0]"),
    ("POST", R, rs(input=[{"role": "user", "content": [{"type": "input_text"}]}]), 400, "input[0].content[0]"),
    ("POST", T, {"messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]}, 400, "messages"),
    ("POST", T, {"messages": [U], "chat_template_kwargs": {"tokenize": True}}, 400, "chat_template_kwargs"),
    ("POST", CH, ch(tools="x"), 400, "tools"),
    ("POST", CH, ch(tools=["x"]), 400, "tools"),
    ("POST", CH, ch(tools=[{"type": "function"}]), 400, "tools"),
    ("POST", CH, ch(tools=[{"type": "function", "function": {"name": 5}}]), 400, "tools"),
    ("POST", CH, ch(tools=[{"type": "function", "function": {"name": "f", "parameters": "x"}}]), 400, "tools"),
    ("POST", CH, ch(tools=[], tool_choice="required"), 400, "tools"),
    ("POST", CH, ch(tools=[FN]), 400, "tool_choice"),          # "auto" needs --enable-auto-tool-choice
    ("POST", CH, ch(tools=[FN], tool_choice="bogus"), 400, "tool_choice"),
    ("POST", CH, ch(tools=[FN], tool_choice=5), 400, "tool_choice"),
    ("POST", CH, ch(tools=[FN], tool_choice={"type": "function"}), 400, "tool_choice"),
    ("POST", CH, ch(tools=[FN], tool_choice={"type": "function", "function": {"name": "nope"}}), 400, "tool_choice"),
    ("POST", CH, ch(tool_choice="required"), 400, "tool_choice"),
    ("POST", CH, ch(tools=[{"type": "function", "function": {"name": "f", "parameters": {"type": "bogus"}}}],
                    tool_choice="required"), 400, "tools"),
    ("POST", CH, ch(response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {
        "type": "string", "pattern": "("}}}), 400, "response_format"),
    ("POST", CH, ch(response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {
        "$ref": "#/nope"}}}), 400, "response_format"),
    ("POST", CH, ch(documents="x"), 400, "documents"),
    ("POST", CH, ch(stream=True, stream_options={"include_usage": True, "continuous_usage_stats": "x"}), 400,
     "stream_options"),
    # /v1/responses
    ("POST", R, rs(input=5), 400, "input"),
    ("POST", R, rs(input=None), 400, "input"),
    ("POST", R, rs(input=[]), 400, "input"),
    ("POST", R, rs(input=[5]), 400, "input"),
    ("POST", R, rs(input=[{"role": "wizard", "content": "x"}]), 400, "input"),
    ("POST", R, rs(input=[{"role": "user", "content": 5}]), 400, "input"),
    ("POST", R, rs(input=[{"type": "bogus"}]), 400, "input"),
    ("POST", R, rs(input=[{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]), 400, "input"),
    ("POST", R, rs(input="\ud800"), 400, "input"),
    ("POST", R, rs(input=LONG), 400, "maximum context length is 128"),
    ("POST", R, rs(max_output_tokens=0), 400, "max_output_tokens"),
    ("POST", R, rs(max_output_tokens=2 ** 70), 400, "max_output_tokens"),
    ("POST", R, rs(temperature=NAN), 400, "temperature"),
    ("POST", R, rs(top_p=2), 400, "top_p"),
    ("POST", R, rs(top_k=-5), 400, "top_k"),
    ("POST", R, rs(instructions=5), 400, "instructions"),
    ("POST", R, rs(text="x"), 400, "text"),
    ("POST", R, rs(text={"format": {"type": "json_schema"}}), 400, "text"),
    ("POST", R, rs(tools=[{"type": "function"}]), 400, "tools"),
    ("POST", R, rs(previous_response_id="resp_x"), 400, "previous_response_id"),
    ("POST", R, rs(background=True), 400, "background"),
    ("POST", R, rs(reasoning={"effort": "extreme"}), 400, "reasoning"),
    ("POST", R, rs(reasoning={"summary": "auto"}), 400, "reasoning summaries are not supported"),
    ("POST", R, rs(metadata="x"), 400, "metadata"),
    ("POST", R, rs(model="nope"), 404, "model"),
    ("POST", R, rs(text={"format": "x"}), 400, "text"),
    ("POST", R, rs(truncation="bogus"), 400, "truncation must be 'auto' or 'disabled'"),
    ("POST", R, rs(request_id="a\nINFO forged"), 400, "request_id"),
    ("POST", R, rs(tool_choice="required"), 400, "tool_choice"),
    ("POST", R, rs(tool_choice={"type": "function", "name": "get"}), 400, "tool_choice"),
    ("POST", R, rs(stream=True, temperature=-1), 400, "temperature"),
    # /tokenize, /detokenize
    ("POST", T, {}, 400, ""),
    ("POST", T, {"prompt": None}, 400, "prompt"),
    ("POST", T, {"prompt": ["a"]}, 400, "prompt"),
    ("POST", T, {"prompt": "\ud800"}, 400, "prompt contains invalid Unicode"),
    ("POST", T, {"prompt": "hi", "add_special_tokens": "x"}, 400, "add_special_tokens"),
    ("POST", T, {"prompt": "hi", "model": "nope"}, 404, "model"),
    ("POST", T, {"messages": []}, 400, "messages"),
    ("POST", T, {"messages": [U], "tools": [{"type": "function"}]}, 400, "tools"),
    ("POST", T, {"messages": [U], "add_generation_prompt": True, "continue_final_message": True}, 400,
     "continue_final_message"),
    ("POST", D, {}, 400, "tokens"),
    ("POST", D, {"tokens": None}, 400, "tokens"),
    ("POST", D, {"tokens": "abc"}, 400, "tokens"),
    ("POST", D, {"tokens": [[1, 2]]}, 400, "tokens"),
    ("POST", D, {"tokens": [1.5]}, 400, "tokens"),
    ("POST", D, {"tokens": [-1]}, 400, "tokens"),
    ("POST", D, {"tokens": [2 ** 70]}, 400, "tokens"),
    ("POST", D, {"tokens": [1], "model": "nope"}, 404, "model"),
    # /generate (the demo server's route)
    ("POST", G, [1], 400, "prompt"),
    ("POST", G, gen(prompt=None), 400, "prompt"),
    ("POST", G, gen(prompt=""), 400, "prompt"),
    ("POST", G, gen(prompt=5), 400, "prompt"),
    ("POST", G, gen(prompt=[1, "a"]), 400, "prompt"),
    ("POST", G, gen(prompt=LONG), 400, "maximum context length is 128"),
    ("POST", G, gen(temperature=NAN), 400, "temperature"),
    ("POST", G, gen(n=MAX_N + 1, temperature=1), 400, "--max-n"),
    ("POST", G, gen(logprobs=100), 400, "logprobs"),
    ("POST", G, gen(stop=[""]), 400, "stop"),
    ("POST", G, gen(logit_bias={"x": 1}), 400, "logit_bias"),
    ("POST", G, gen(foo=1), 400, "foo"),
    ("POST", G, gen(stream="yes"), 400, "stream"),
    ("POST", G, gen(extra_args={"a": 1}), 400, "extra_args"),
    ("POST", G, gen(stop=5), 400, "stop"),
    ("POST", G, gen(stop=[5]), 400, "stop"),
    ("POST", G, gen(detokenize="x"), 400, "detokenize"),
    ("POST", G, gen(ignore_eos=None), 400, "ignore_eos"),
    ("POST", G, gen(output_kind="x"), 400, "output_kind"),
    ("POST", G, b"{", 400, "JSON"),
    # the GET routes
    ("GET", "/v1/models/nope", None, 404, "The model `nope` does not exist."),
    ("GET", "/v1/models/%00", None, 404, "model"),
    ("POST", "/v1/models", {}, 405, "not allowed"),
    ("POST", "/metrics", {}, 405, "not allowed"),
    ("POST", "/load", {}, 405, "not allowed"),
    ("POST", "/health", {}, 405, "not allowed"),
    # pooling routes on a generating model
    ("POST", E, {"input": "hi"}, 400, "model"),
    ("POST", P, {"input": "hi"}, 400, "model"),
    ("POST", S, {"text_1": "a", "text_2": "b"}, 400, "model"),
    ("POST", RR, {"query": "a", "documents": ["b"]}, 400, "model"),
    ("POST", "/classify", {"input": "a"}, 400, "model"),
]

POOLING_CASES: list[tuple[str, str, object, int, str]] = [
    ("POST", E, {}, 400, "input"),
    ("POST", E, [1], 400, "JSON object"),
    ("POST", E, b"{", 400, "JSON decode error"),
    ("POST", E, {"input": ""}, 400, "input"),
    ("POST", E, {"input": []}, 400, "input"),
    ("POST", E, {"input": [""]}, 400, "input"),
    ("POST", E, {"input": [[]]}, 400, "input"),
    ("POST", E, {"input": [-1]}, 400, "input"),
    ("POST", E, {"input": [2 ** 70]}, 400, "input"),
    ("POST", E, {"input": [[1, 2], [-5]]}, 400, "input"),
    ("POST", E, {"input": [1.5]}, 400, "input"),
    ("POST", E, {"input": 5}, 400, "input"),
    ("POST", E, {"input": None}, 400, "input"),
    ("POST", E, {"input": {"a": 1}}, 400, "input"),
    ("POST", E, {"input": "\ud800"}, 400, "input"),
    ("POST", E, {"input": LONG}, 400, "maximum context length is 128"),
    ("POST", E, {"input": ["a"] * 5000}, 400, "--max-prompts-per-request"),
    ("POST", E, {"input": "hi", "encoding_format": "bogus"}, 400, "encoding_format"),
    ("POST", E, {"input": "hi", "dimensions": 0}, 400, "dimensions"),
    ("POST", E, {"input": "hi", "dimensions": 1.5}, 400, "dimensions"),
    ("POST", E, {"input": "hi", "dimensions": 32}, 400, "dimensions"),
    ("POST", E, {"input": "hi", "truncate_prompt_tokens": 0}, 400, "truncate_prompt_tokens"),
    ("POST", E, {"input": "hi", "truncate_prompt_tokens": 2 ** 70}, 400, "truncate_prompt_tokens"),
    ("POST", E, {"input": "hi", "truncate_prompt_tokens": 129}, 400, "is greater than max_model_len (128)"),
    ("POST", S, {"text_1": "a", "text_2": "b", "truncate_prompt_tokens": 129}, 400, "truncate_prompt_tokens"),
    ("POST", E, {"input": "hi", "normalize": "x"}, 400, "normalize"),
    ("POST", E, {"input": "hi", "priority": 5}, 400, "priority"),
    ("POST", E, {"input": "hi", "model": "nope"}, 404, "model"),
    ("POST", E, {"messages": [{"role": "wizard", "content": "x"}]}, 400, "messages"),
    ("POST", E, {"messages": [U], "chat_template": "{{ 'x' }}"}, 400, "chat_template"),
    ("POST", E, {"messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]}, 400, "messages"),
    ("POST", E, {"messages": [U], "chat_template_kwargs": {"tokenize": True}}, 400, "chat_template_kwargs"),
    ("POST", P, {"input": [-1]}, 400, "input"),
    ("POST", S, {"text_1": "a"}, 400, "text_2"),
    ("POST", S, {"text_1": [], "text_2": "b"}, 400, "text_1"),
    ("POST", S, {"text_1": ["a", "b"], "text_2": ["a", "b", "c"]}, 400, "text_1"),
    ("POST", S, {"text_1": 5, "text_2": "b"}, 400, "text_1"),
    ("POST", S, {"text_1": "a", "text_2": "\udc00"}, 400, "text_2"),
    ("POST", S, {"text_1": "a", "text_2": "b", "truncate_prompt_tokens": -2}, 400, "truncate_prompt_tokens"),
    ("POST", RR, {"query": "a", "documents": []}, 400, "documents"),
    ("POST", RR, {"query": "a", "documents": "b"}, 400, "documents"),
    ("POST", RR, {"query": "a", "documents": [5]}, 400, "documents"),
    ("POST", RR, {"query": None, "documents": ["b"]}, 400, "query"),
    ("POST", RR, {"query": "a", "documents": ["b"], "top_n": -1}, 400, "top_n"),
    ("POST", C, cm(), 400, "model"),
    ("POST", CH, ch(), 400, "model"),
    ("POST", R, rs(), 400, "model"),
    ("POST", G, gen(), 400, "prompt"),
]


async def send(client: httpx.AsyncClient, method: str, route: str, body: object) -> httpx.Response:
    if isinstance(body, tuple):
        content, headers = body
    elif isinstance(body, bytes):
        content, headers = body, JSON
    elif body is None and method == "GET":
        content, headers = None, {}
    else:
        content, headers = json.dumps(body, allow_nan=True).encode(), JSON
    return await client.request(method, route, content=content, headers=headers)


# Cases whose answer names no field (param null): the body as a whole is wrong, or the route / method.
BODY_LEVEL = ("JSON", "not allowed", "Not found", "--max-request-body-bytes", "Exactly one of input or messages")


def error_problem(r: httpx.Response, status: int, fragment: str) -> str | None:
    """What is wrong with ``r`` as the answer to a bad request (None: nothing)."""
    if r.status_code != status:
        return f"status {r.status_code}, want {status}: {r.text[:300]}"
    try:
        error = r.json()["error"]
    except (ValueError, KeyError, TypeError):
        return f"not OpenAI's error JSON: {r.text[:300]}"
    if set(error) != {"message", "type", "param", "code"} or error["code"] != status \
            or not error["type"].endswith("Error"):
        return f"not OpenAI's error shape: {error}"
    if any(s in error["message"] for s in INTERNAL):
        return f"a Python message, not a user's: {error}"
    if fragment not in (error["param"] or "") and fragment not in error["message"]:
        return f"does not name {fragment!r}: {error}"
    if error["param"] is None and not any(s in error["message"] for s in BODY_LEVEL):
        return f"param is null: {error}"
    if error["message"].startswith("Value error"):
        return f"pydantic's wording: {error}"
    return None


async def run_table(app, cases, normal: tuple[str, dict], answer, streamed: bool = False) -> tuple[list[str], list]:
    """Send ``normal`` (``answer`` picks what must not change from its JSON), then every case while the same request
    runs again and again concurrently (every other time streamed, with ``streamed``: its text deltas joined), then
    ``normal`` again. Returns the failed cases and every answer to ``normal``."""
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test",
                                 timeout=60) as client:
        async def normal_answer(stream: bool = False):
            if not stream:
                r = await client.post(normal[0], json=normal[1])
                assert r.status_code == 200, r.text
                return answer(r.json())
            async with client.stream("POST", normal[0], json={**normal[1], "stream": True}) as r:
                assert r.status_code == 200
                chunks = [json.loads(line[6:]) async for line in r.aiter_lines()
                          if line.startswith("data: {")]
            return "".join(chunk["choices"][0]["text"] for chunk in chunks if chunk["choices"])

        async def bad_ones() -> list[str]:
            failures = []
            for method, route, body, status, fragment in cases:
                r = await asyncio.wait_for(send(client, method, route, body), 30)
                problem = error_problem(r, status, fragment)
                if problem:
                    failures.append(f"{method} {route} {str(body)[:150]!r}: {problem}")
            done.set()
            return failures

        async def normals_meanwhile() -> list:
            answers = []
            while not done.is_set():
                answers.append(await normal_answer(stream=streamed and len(answers) % 2 == 1))
            return answers

        done = asyncio.Event()
        before = await normal_answer()
        during, failures = await asyncio.gather(normals_meanwhile(), bad_ones())
        after = await normal_answer()
        assert (await client.get("/health")).status_code == 200
    return failures, [before, *during, after]


def test_server_bad_requests_are_4xx_and_harmless(tiny_llama_dir):
    with serve_in_process(tiny_llama_dir, "--max-n", str(MAX_N), "--max-request-body-bytes", str(MAX_BODY)) \
            as (app, _):
        normal = (C, {"prompt": "The capital of France is", "max_tokens": 24, "temperature": 0, "ignore_eos": True})
        failures, texts = asyncio.run(run_table(app, GENERATE_CASES, normal,
                                                lambda body: body["choices"][0]["text"], streamed=True))
    assert not failures, f"{len(failures)} of {len(GENERATE_CASES)} cases failed:\n" + "\n".join(failures)
    assert len(texts) >= 3 and len(texts[0]) > 10 and all(t == texts[0] for t in texts), texts


def test_pooling_server_bad_requests_are_4xx_and_harmless(tiny_llama_dir):
    with serve_in_process(tiny_llama_dir, "--runner", "pooling") as (app, _):
        normal = (E, {"input": ["The capital of France is", "hello"]})
        failures, vectors = asyncio.run(run_table(app, POOLING_CASES, normal,
                                                  lambda body: [d["embedding"] for d in body["data"]]))
    assert not failures, f"{len(failures)} of {len(POOLING_CASES)} cases failed:\n" + "\n".join(failures)
    for other in vectors[1:]:
        assert all(math.isclose(a, b, abs_tol=1e-5) for u, v in zip(vectors[0], other) for a, b in zip(u, v))


# ---- offline: LLM and its parameter classes ----------------------------------------------------------------------
def _offline_cases(llm, greedy):
    from pagedllm import SamplingParams
    from pagedllm.pooling_params import PoolingParams
    from pagedllm.sampling_params import BeamSearchParams, StructuredOutputsParams

    def generate(prompt, params=greedy, **kw):
        return llm.generate(prompt, params, use_tqdm=False, **kw)

    def chat(messages, params=greedy, **kw):
        return llm.chat(messages, params, use_tqdm=False, **kw)

    def sp(**kw):
        return lambda: generate("Hi", SamplingParams(**{"max_tokens": 2, **kw}))
    # (what, the call, the exception it must raise, a fragment of its message)
    return [
        ("temperature str", sp(temperature="0.5"), ValueError, "temperature"),
        ("temperature NaN", sp(temperature=NAN), ValueError, "temperature"),
        ("top_p 0", sp(top_p=0), ValueError, "top_p"),
        ("n float", sp(n=2.0), ValueError, "n must be an integer"),
        ("max_tokens float", sp(max_tokens=1.0), ValueError, "max_tokens"),
        ("max_tokens 0", sp(max_tokens=0), ValueError, "max_tokens"),
        ("min_tokens > max_tokens", lambda: SamplingParams(min_tokens=5, max_tokens=2), ValueError, "min_tokens"),
        ("seed str", sp(seed="1"), ValueError, "seed"),
        ("seed 2^64", sp(seed=2 ** 64), ValueError, "seed"),
        ("logit_bias list", sp(logit_bias=[1]), ValueError, "logit_bias"),
        ("logit_bias NaN", sp(logit_bias={1: NAN}), ValueError, "logit_bias"),
        ("logit_bias huge id", sp(logit_bias={2 ** 70: 1}), ValueError, "logit_bias"),
        ("bad_words str", sp(bad_words="x"), ValueError, "bad_words"),
        ("allowed_token_ids out of vocab", sp(allowed_token_ids=[2 ** 70]), ValueError, "allowed_token_ids"),
        ("stop_token_ids negative", sp(stop_token_ids=[-1]), ValueError, "stop_token_ids"),
        ("logprobs over max_logprobs", sp(logprobs=6), ValueError, "max allowed: 5"),
        ("prompt_logprobs over max_logprobs", sp(prompt_logprobs=6), ValueError, "max allowed: 5"),
        ("truncate_prompt_tokens 2^70", sp(truncate_prompt_tokens=2 ** 70), ValueError, "truncate_prompt_tokens"),
        ("structured_outputs dict", sp(structured_outputs={"regex": "a"}), ValueError, "structured_outputs"),
        ("stop int", sp(stop=5), ValueError, "stop must be a string or a list of strings"),
        ("stop [int]", sp(stop=[5]), ValueError, "stop must be a string or a list of strings"),
        ("stop bytes", sp(stop=b"x"), ValueError, "stop must be a string or a list of strings"),
        ("stop lone surrogate", sp(stop=["\ud800"]), ValueError, "stop contains invalid Unicode"),
        ("bad_words lone surrogate", sp(bad_words=["\ud800"]), ValueError, "bad_words contains invalid Unicode"),
        ("regex lone surrogate", lambda: StructuredOutputsParams(regex="\ud800"), ValueError,
         "regex contains invalid Unicode"),
        ("ignore_eos str", sp(ignore_eos="x"), ValueError, "ignore_eos"),
        ("detokenize None", sp(detokenize=None), ValueError, "detokenize"),
        ("skip_special_tokens 2", sp(skip_special_tokens=2), ValueError, "skip_special_tokens"),
        ("include_stop_str_in_output str", sp(include_stop_str_in_output="no"), ValueError,
         "include_stop_str_in_output"),
        ("spaces_between_special_tokens str", sp(spaces_between_special_tokens="no"), ValueError,
         "spaces_between_special_tokens"),
        ("output_kind str", sp(output_kind="x"), ValueError, "output_kind"),
        ("output_kind 7", sp(output_kind=7), ValueError, "output_kind"),
        ("beam_width NaN", lambda: BeamSearchParams(beam_width=NAN, max_tokens=2), ValueError, "beam_width"),
        ("beam_width 1.5", lambda: BeamSearchParams(beam_width=1.5, max_tokens=2), ValueError, "beam_width"),
        ("beam_width str", lambda: BeamSearchParams(beam_width="2", max_tokens=2), ValueError, "beam_width"),
        ("beam length_penalty NaN", lambda: BeamSearchParams(beam_width=2, max_tokens=2, length_penalty=NAN),
         ValueError, "length_penalty"),
        ("beam_search params None", lambda: llm.beam_search(["Hi"], None), ValueError, "BeamSearchParams"),
        ("unknown field", lambda: SamplingParams(foo=1), TypeError, "foo"),
        ("prompts int", lambda: generate(5), ValueError, "prompts"),
        ("prompts None", lambda: generate(None), ValueError, "prompts"),
        ("prompt empty", lambda: generate([""]), ValueError, "empty"),
        ("prompt int in list", lambda: generate([5]), ValueError, "prompt"),
        ("prompt bytes", lambda: generate(b"hi"), ValueError, "prompt"),
        ("token id negative", lambda: generate({"prompt_token_ids": [-1]}), ValueError, "out of vocabulary"),
        ("token id huge", lambda: generate({"prompt_token_ids": [2 ** 70]}), ValueError, "out of vocabulary"),
        ("token ids empty", lambda: generate({"prompt_token_ids": []}), ValueError, "empty"),
        ("token id float", lambda: generate({"prompt_token_ids": [1.5]}), ValueError, "must be integers, got float"),
        ("token id str", lambda: generate({"prompt_token_ids": ["1"]}), ValueError, "must be integers, got str"),
        ("structured regex int", lambda: SamplingParams(structured_outputs=StructuredOutputsParams(regex=5)),
         ValueError, "regex must be a string"),
        ("structured json list", lambda: StructuredOutputsParams(json=[1]), ValueError, "json must be"),
        ("token ids str", lambda: generate({"prompt_token_ids": "abc"}), ValueError, "prompt_token_ids"),
        ("prompt dict wrong key", lambda: generate({"bogus": "x"}), ValueError, "bogus"),
        ("prompt dict int", lambda: generate({"prompt": 5}), ValueError, "prompt"),
        ("multi_modal_data", lambda: generate({"prompt": "x", "multi_modal_data": {"image": 1}}), ValueError,
         "At most 0 image(s) may be provided in one prompt"),     # vLLM's words for a model without images
        ("lone surrogate", lambda: generate("\ud800"), ValueError, "lone surrogate"),
        ("prompt too long", lambda: generate(LONG), ValueError, "maximum context length is 128"),
        ("one bad prompt of two", lambda: generate(["Hi", {"prompt_token_ids": [-1]}]), ValueError,
         "out of vocabulary"),
        ("params dict", lambda: generate("Hi", {"temperature": 0}), ValueError, "sampling_params"),
        ("params list length", lambda: generate(["Hi", "x"], [greedy]), ValueError, "lengths"),
        ("params str", lambda: generate(["Hi"], ["x"]), ValueError, "SamplingParams"),
        ("params PoolingParams", lambda: generate("Hi", PoolingParams()), ValueError, "SamplingParams"),
        ("priority without the policy", lambda: generate("Hi", priority=[1]), ValueError, "priority"),
        ("priority length", lambda: generate("Hi", priority=[0, 0]), ValueError, "priority"),
        ("chat messages None", lambda: chat(None), ValueError, "messages"),
        ("chat messages empty", lambda: chat([]), ValueError, "messages"),
        ("chat conversation empty", lambda: chat([[]]), ValueError, "empty"),
        ("chat message without role", lambda: chat([{"content": "x"}]), ValueError, "role"),
        ("chat messages str", lambda: chat("hi"), ValueError, "messages must be a list"),
        ("chat role int", lambda: chat([{"role": 5, "content": "x"}]), ValueError, "messages[0].role"),
        ("chat content int", lambda: chat([{"role": "user", "content": 5}]), ValueError, "messages[0].content"),
        ("chat content dict", lambda: chat([{"role": "user", "content": {"a": 1}}]), ValueError,
         "messages[0].content"),
        ("chat text part int", lambda: chat([{"role": "user", "content": [{"type": "text", "text": 5}]}]),
         ValueError, "messages[0].content[0]"),
        ("chat text part without text", lambda: chat([{"role": "user", "content": [{"type": "text"}]}]),
         ValueError, "messages[0].content[0]"),
        ("chat lone surrogate", lambda: chat([{"role": "user", "content": "\ud800"}]), ValueError, "lone surrogate"),
        ("chat template syntax error", lambda: chat([U], chat_template="{% if %}"), ValueError,
         "Could not apply the chat template"),
        ("chat tool without function", lambda: chat([U], tools=[{"type": "function"}]), ValueError, "tools[0]"),
        ("chat tool parameters str", lambda: chat([U], tools=[{"type": "function", "function": {
            "name": "f", "parameters": "x"}}]), ValueError, "tools[0].function.parameters"),
        ("chat tools str", lambda: chat([U], tools="x"), ValueError, "tools must be a list"),
        ("chat_template_kwargs str", lambda: chat([U], chat_template_kwargs="x"), ValueError,
         "chat_template_kwargs must be a dict"),
        ("chat_template_kwargs tokenize", lambda: chat([U], chat_template_kwargs={"tokenize": True}), ValueError,
         "unexpected chat template kwargs"),
        ("chat_template_kwargs tools int", lambda: chat([U], chat_template_kwargs={"tools": 5}), ValueError,
         "tools must be a list"),
        ("chat image part", lambda: chat([{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]),
         ValueError, "image_url"),
        ("chat too long", lambda: chat([{"role": "user", "content": LONG}]), ValueError, "maximum context length is 128"),
        ("chat both flags", lambda: chat([U], continue_final_message=True), ValueError, "continue_final_message"),
        ("chat content format", lambda: chat([U], chat_template_content_format="x"), ValueError,
         "chat_template_content_format"),
        ("chat tool call arguments", lambda: chat([{"role": "assistant", "tool_calls": [
            {"function": {"name": "f", "arguments": "{x"}}]}]), ValueError, "arguments is not valid JSON"),
        ("embed on a generator", lambda: llm.embed("hi", use_tqdm=False), ValueError, "pooling"),
        ("beam_width 0", lambda: BeamSearchParams(beam_width=0, max_tokens=2), ValueError, "beam_width"),
        ("beam logprobs over max_logprobs",
         lambda: llm.beam_search(["Hi"], BeamSearchParams(beam_width=3, max_tokens=2)), ValueError, "max allowed"),
        ("beam bad prompt", lambda: llm.beam_search([{"prompt_token_ids": [-1]}],
                                                    BeamSearchParams(beam_width=1, max_tokens=2)),
         ValueError, "out of vocabulary"),
        ("PoolingParams dimensions 0", lambda: PoolingParams(dimensions=0), ValueError, "imensions"),
        ("PoolingParams dimensions True", lambda: PoolingParams(dimensions=True), ValueError, "imensions"),
        ("PoolingParams normalize str", lambda: PoolingParams(normalize="x"), ValueError, "normalize"),
        ("PoolingParams truncate str", lambda: PoolingParams(truncate_prompt_tokens="x"), ValueError,
         "truncate_prompt_tokens must be an integer"),
        ("truncate over max_model_len", sp(truncate_prompt_tokens=129), ValueError, "greater than max_model_len"),
    ]


def offline_failures(cases, answer) -> list[str]:
    """Run each case, which must raise its exception with a message holding its fragment; ``answer()`` (the LLM's
    answer to a normal request) must not change."""
    before = answer()
    failures = []
    for what, call, exc, fragment in cases:
        try:
            call()
            failures.append(f"{what}: no error")
        except exc as e:
            message = str(e)
            # A TypeError is Python's own answer to a wrong call (an unknown keyword): its words are fine.
            if fragment not in message or exc is ValueError and any(s in message for s in INTERNAL):
                failures.append(f"{what}: {type(e).__name__}: {message[:200]}")
        except Exception as e:
            failures.append(f"{what}: {type(e).__name__} (want {exc.__name__}): {str(e)[:200]}")
        if answer() != before:
            failures.append(f"{what}: the LLM answers differently afterwards")
    return failures


def test_offline_bad_input_raises_and_llm_stays_usable(tiny_llama_dir):
    from pagedllm import LLM, SamplingParams
    llm = LLM(tiny_llama_dir, dtype="float32", max_model_len=128, max_logprobs=5)
    greedy = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True)
    failures = offline_failures(_offline_cases(llm, greedy), lambda: llm.generate(
        "The capital of France is", greedy, use_tqdm=False)[0].outputs[0].text)
    assert not failures, "\n".join(failures)


def test_offline_pooling_bad_input_raises_and_llm_stays_usable(tiny_llama_dir):
    from pagedllm import LLM, SamplingParams
    from pagedllm.pooling_params import PoolingParams
    llm = LLM(tiny_llama_dir, dtype="float32", max_model_len=128, runner="pooling")

    def embed(prompts, *args, **kw):
        return llm.embed(prompts, *args, use_tqdm=False, **kw)
    cases = [
        ("prompts int", lambda: embed(5), ValueError, "prompts"),
        ("prompt empty", lambda: embed([""]), ValueError, "empty"),
        ("token id negative", lambda: embed({"prompt_token_ids": [-1]}), ValueError, "out of vocabulary"),
        ("too long", lambda: embed(LONG), ValueError, "maximum context length is 128"),
        ("lone surrogate", lambda: embed("\ud800"), ValueError, "lone surrogate"),
        ("truncate over max_model_len", lambda: embed("hi", truncate_prompt_tokens=129), ValueError,
         "greater than max_model_len"),
        ("truncate str", lambda: embed("hi", truncate_prompt_tokens="x"), ValueError, "truncate_prompt_tokens"),
        ("SamplingParams", lambda: embed("hi", SamplingParams()), ValueError, "PoolingParams"),
        ("params dict", lambda: embed("hi", {"normalize": True}), ValueError, "got dict"),
        ("params length", lambda: embed(["a", "b"], [PoolingParams()]), ValueError, "lengths"),
        ("dimensions without Matryoshka", lambda: embed("hi", PoolingParams(dimensions=8)), ValueError,
         "matryoshka"),
        ("pooling_task", lambda: llm.encode("hi", pooling_task="bogus", use_tqdm=False), ValueError, "pooling_task"),
        ("score int", lambda: llm.score(5, "a", use_tqdm=False), ValueError, "text_1"),
        ("score None", lambda: llm.score("a", None, use_tqdm=False), ValueError, "text_2"),
        ("score lengths", lambda: llm.score(["a", "b"], ["a", "b", "c"], use_tqdm=False), ValueError, "text_1"),
        ("generate", lambda: llm.generate("hi", use_tqdm=False), ValueError, "pooling"),
        ("chat", lambda: llm.chat([U], use_tqdm=False), ValueError, "pooling"),
        ("classify", lambda: llm.classify("hi"), ValueError, "classify"),
    ]
    failures = offline_failures(cases, lambda: embed("The capital of France is")[0].outputs.embedding)
    assert not failures, "\n".join(failures)
