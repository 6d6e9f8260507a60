"""--reasoning-parser (vLLM's reasoning outputs): a reasoning model's thinking comes back as ``message.reasoning``
apart from ``message.content`` (streamed as ``delta.reasoning`` chunks, then ``delta.content``; the think tags never
go out), the tool parser sees only the content, /v1/responses returns a "reasoning" output item, and structured
output constrains only what follows the thinking.

The server tests run the app in-process over a tiny model whose tokenizer has the think tags, with the engine's
output scripted (``scripted_engine``): the parsed JSON is then exact."""
from __future__ import annotations

import json

import pytest

from app_client import post_all, serve_in_process
from pagedllm.outputs import CompletionOutput, RequestOutput
from pagedllm.reasoning_parsers import get_reasoning_parser

THINK_TAGS = ["<think>", "</think>", "<tool_call>", "</tool_call>"]
WEATHER_TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
# A Qwen3-like template: enable_thinking=false closes the thinking in the prompt; it also shows reasoning_effort.
QWEN_LIKE_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
                      "{% if add_generation_prompt %}<|im_start|>assistant\n"
                      "{% if reasoning_effort is defined %}effort={{ reasoning_effort }}\n{% endif %}"
                      "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n"
                      "{% endif %}{% endif %}")
ASK = [{"role": "user", "content": "Is 9.11 larger than 9.8?"}]


@pytest.fixture(scope="module")
def think_model_dir(tokenizer, tmp_path_factory):
    """A tiny random Llama whose tokenizer (SmolLM2's) has the think and tool-call tags as added tokens, as Qwen3's
    and DeepSeek-R1's have."""
    import copy
    from tiny_models import save_tiny_llama
    path = tmp_path_factory.mktemp("tiny_think_model")
    tok = copy.deepcopy(tokenizer)         # the shared fixture keeps its vocabulary
    tok.add_tokens(THINK_TAGS)
    save_tiny_llama(path, len(tok), bos_token_id=1, eos_token_id=2)
    tok.save_pretrained(path)
    return str(path)


# ---- the split itself ------------------------------------------------------------------------------------------
def test_deepseek_r1_split():
    r1 = get_reasoning_parser("deepseek_r1")
    assert r1.split("<think>Let me see.</think>9.8 is larger.") == ("Let me see.", "9.8 is larger.")
    # The R1 distills' template puts <think> in the prompt: what comes before </think> is reasoning all the same.
    assert r1.split("Let me see.</think>\n\n9.8") == ("Let me see.", "\n\n9.8")
    # Cut by max_tokens while thinking: all reasoning, no content.
    assert r1.split("<think>Hmm, 9.11 versus") == ("Hmm, 9.11 versus", None)
    assert r1.split("Hmm, 9.11") == ("Hmm, 9.11", None)
    # Ends right after the thinking: null content; an empty think block is an empty reasoning (vLLM's).
    assert r1.split("<think>ok</think>") == ("ok", None)
    assert r1.split("<think></think>Answer") == ("", "Answer")
    # A prompt that closed the thinking: all content.
    assert r1.split("Answer </think> x", reasoning_ended=True) == (None, "Answer </think> x")


def test_qwen3_split():
    qwen3 = get_reasoning_parser("qwen3")
    assert qwen3.split("<think>\nLet me see.\n</think>\n\nNo.") == ("\nLet me see.\n", "\n\nNo.")
    # Thinking is on by default (vLLM 0.24): output without tags, cut while thinking, is reasoning.
    assert qwen3.split("Let me see") == ("Let me see", None)
    # enable_thinking=false in the chat template kwargs: everything is content.
    assert not qwen3.thinking({"enable_thinking": False}) and qwen3.thinking({}) and qwen3.thinking(None)
    # A tool call the model starts without closing its thinking ends the thinking and stays in the content.
    text = 'I need the weather.<tool_call>\n{"name": "get_weather", "arguments": {}}\n</tool_call>'
    assert qwen3.split(text) == ("I need the weather.", text[len("I need the weather."):])
    # A repeated </think> after the thinking is dropped (vLLM's qwen3 parser; deepseek_r1 keeps it).
    assert qwen3.split("a</think>b</think>c") == ("a", "bc")
    assert get_reasoning_parser("deepseek_r1").split("a</think>b</think>c") == ("a", "b</think>c")
    v3 = get_reasoning_parser("deepseek_v3")      # thinking only when the request turns it on
    assert not v3.thinking({}) and v3.thinking({"thinking": True}) and get_reasoning_parser("holo2").thinking({})


@pytest.mark.parametrize("name", ["deepseek_r1", "qwen3"])
@pytest.mark.parametrize("text", ["<think>abc</think>def", "Thinking about <b> and </b>.</think>\n\nAnswer: <x>",
                                  "<think>never ends <thi", "no tags at all", "</think>just content",
                                  "a</think>b</think></think>c</thi"])
def test_stream_matches_the_whole_split_for_any_chunking(name, text):
    """Deltas of 1, 2, 3 and 5 characters (tags split across deltas) add up to the whole-output split, and no
    delta carries a piece of a tag."""
    parser = get_reasoning_parser(name)
    whole = parser.split(text)
    for size in (1, 2, 3, 5):
        stream = parser.stream()
        pieces = [text[k:k + size] for k in range(0, len(text), size)]
        out = [stream.feed(p, final=k == len(pieces) - 1) for k, p in enumerate(pieces)]
        reasoning, content = "".join(r for r, _ in out), "".join(c for _, c in out)
        assert (reasoning or None, content or None) == (whole[0] or None, whole[1]), (size, out)
        assert not any(tag in r or tag in c for r, c in out for tag in ("<think>", "</think>"))


def test_unknown_parser_and_tokenizer_without_tags_fail_at_start_up(tiny_llama_dir):
    from app_client import serve_args
    from pagedllm import LLM
    with pytest.raises(ValueError, match=r"invalid reasoning parser: nope \(choose from \{ deepseek_r1,qwen3,"):
        serve_args(tiny_llama_dir, "--reasoning-parser", "nope")
    with pytest.raises(ValueError, match="invalid reasoning parser: r2"):
        serve_args(tiny_llama_dir, "--structured-outputs-config", '{"reasoning_parser": "r2"}')
    # SmolLM2's tokenizer has no <think> token: vLLM's parser cannot work on it either; said at start-up.
    with pytest.raises(ValueError, match="could not locate the think start/end tokens '<think>' / '</think>'"):
        LLM(model=tiny_llama_dir, reasoning_parser="deepseek_r1", dtype="float32", max_model_len=64,
            kv_cache_memory_gb=0.01)


# ---- the server, its engine output scripted -----------------------------------------------------------------------
class ScriptedStream:
    """What the engine's request stream yields: one RequestOutput per text piece (one token each), the last with
    ``finish``."""

    def __init__(self, request_id: str, prompt_ids: list[int], pieces: list[str], finish: str,
                 token_ids: list[int] | None = None):
        ids = token_ids or [100 + k for k in range(len(pieces))]
        self.outputs = [RequestOutput(request_id, None, prompt_ids, None, [CompletionOutput(
            0, piece, [ids[k]], None, None, finish if k == len(pieces) - 1 else None)], k == len(pieces) - 1)
            for k, piece in enumerate(pieces)]

    def __aiter__(self):
        return self._gen()

    async def _gen(self):
        for out in self.outputs:
            yield out

    def abort(self):
        pass


def scripted_engine(engine, pieces: list[str], finish: str = "stop", token_ids: list[int] | None = None) -> list[dict]:
    """Make ``engine`` answer every request with ``pieces`` (one token each: ``token_ids``, else 100, 101, ...);
    the list of what each request brought."""
    seen: list[dict] = []

    async def add_request(request_id, prompt, params, arrival_time=None, priority=0, reasoning_ended=None,
                          lora_request=None):
        seen.append({"prompt_ids": prompt["prompt_token_ids"], "params": params, "reasoning_ended": reasoning_ended})
        return ScriptedStream(request_id, prompt["prompt_token_ids"], pieces, finish, token_ids)
    engine.add_request = add_request
    return seen


def sse_chunks(response) -> list[dict]:
    return [json.loads(line[6:]) for line in response.text.splitlines()
            if line.startswith("data: ") and line != "data: [DONE]"]


R1_OUTPUT = ["Let me ", "compare.</th", "ink>\n\n9.8 ", "is larger."]


def test_chat_reasoning_split_whole_and_streamed(think_model_dir):
    with serve_in_process(think_model_dir, "--reasoning-parser", "deepseek_r1") as (app, engine):
        seen = scripted_engine(engine, R1_OUTPUT)
        body = {"messages": ASK, "max_tokens": 20}
        whole, streamed, hidden, hidden_streamed = post_all(app, [
            ("/v1/chat/completions", body),
            ("/v1/chat/completions", {**body, "stream": True, "stream_options": {"include_usage": True}}),
            ("/v1/chat/completions", {**body, "include_reasoning": False}),
            ("/v1/chat/completions", {**body, "include_reasoning": False, "stream": True})])
    message = whole.json()["choices"][0]["message"]
    assert (message["reasoning"], message["content"]) == ("Let me compare.", "\n\n9.8 is larger.")
    assert "reasoning_content" not in message          # vLLM 0.24 removed the old name
    assert whole.json()["usage"]["completion_tokens"] == 4
    chunks = sse_chunks(streamed)
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    # The tag split over two deltas never shows: reasoning pieces while thinking, then content pieces.
    assert [d for d in deltas[1:]] == [{"reasoning": "Let me "}, {"reasoning": "compare."},
                                       {"content": "\n\n9.8 "}, {"content": "is larger."}]
    assert chunks[-1]["usage"]["completion_tokens"] == 4
    assert hidden.json()["choices"][0]["message"] == {"role": "assistant", "content": "\n\n9.8 is larger.",
                                                      "reasoning": None}
    assert [c["choices"][0]["delta"] for c in sse_chunks(hidden_streamed)][1:] == \
        [{"content": "\n\n9.8 "}, {"content": "is larger."}]
    # The engine learns whether the grammar (if any) may start at once: not while the model thinks, at once when
    # the request drops the reasoning (vLLM's include_reasoning=false).
    assert [s["reasoning_ended"] for s in seen] == [False, False, True, True]


def test_unfinished_thinking_and_no_start_tag(think_model_dir):
    with serve_in_process(think_model_dir, "--reasoning-parser", "deepseek_r1") as (app, engine):
        scripted_engine(engine, ["9.11 has ", "more digits, but"], finish="length")
        whole, streamed = post_all(app, [("/v1/chat/completions", {"messages": ASK, "max_tokens": 2}),
                                         ("/v1/chat/completions", {"messages": ASK, "max_tokens": 2, "stream": True})])
    choice = whole.json()["choices"][0]
    assert choice["finish_reason"] == "length"
    assert (choice["message"]["reasoning"], choice["message"]["content"]) == ("9.11 has more digits, but", None)
    deltas = [c["choices"][0]["delta"] for c in sse_chunks(streamed)]
    assert "".join(d.get("reasoning", "") for d in deltas) == "9.11 has more digits, but"
    assert not any(d.get("content") for d in deltas)


def test_qwen3_thinking_off_and_prompt_that_closes_the_thinking(think_model_dir):
    pieces = ["9.8 is ", "larger."]
    with serve_in_process(think_model_dir, "--reasoning-parser", "qwen3",
                          chat_template=QWEN_LIKE_TEMPLATE) as (app, engine):
        seen = scripted_engine(engine, pieces)
        on, off, effort_none, streamed_off = post_all(app, [
            ("/v1/chat/completions", {"messages": ASK}),
            ("/v1/chat/completions", {"messages": ASK, "chat_template_kwargs": {"enable_thinking": False}}),
            ("/v1/chat/completions", {"messages": ASK, "reasoning_effort": "none"}),
            ("/v1/chat/completions", {"messages": ASK, "stream": True,
                                      "chat_template_kwargs": {"enable_thinking": False}})])
        tok = engine.input_processor.tokenizer
        prompts = [tok.decode(s["prompt_ids"]) for s in seen]
    # Thinking on (Qwen3's default): no </think> yet, so all of it is reasoning, as in vLLM 0.24.
    assert on.json()["choices"][0]["message"]["reasoning"] == "9.8 is larger."
    for r in (off, effort_none):
        assert r.json()["choices"][0]["message"] == {"role": "assistant", "content": "9.8 is larger.",
                                                     "reasoning": None}
    deltas = [c["choices"][0]["delta"] for c in sse_chunks(streamed_off)]
    assert "".join(d.get("content", "") for d in deltas) == "9.8 is larger." and not any("reasoning" in d
                                                                                      for d in deltas)
    # reasoning_effort reached the template, and "none" turned thinking off there (vLLM's rule).
    assert "effort=none\n<think>\n\n</think>" in prompts[2] and "<think>" not in prompts[0]
    assert [s["reasoning_ended"] for s in seen] == [False, True, True, True]
    # qwen3's parser keeps special tokens in the text (vLLM's does the same).
    assert all(s["params"].skip_special_tokens is False for s in seen)


def test_tools_see_only_the_content(think_model_dir):
    call = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
    # The model drafts a call while thinking, then makes it: only the one after </think> is a tool call.
    pieces = ["Maybe <tool_call>{\"name\": \"x\", \"arguments\": {}}</tool_call>? ", "No.</think>",
              "Checking. ", call[:20], call[20:]]
    with serve_in_process(think_model_dir, "--reasoning-parser", "deepseek_r1", "--enable-auto-tool-choice",
                          "--tool-call-parser", "hermes") as (app, engine):
        scripted_engine(engine, pieces)
        body = {"messages": ASK, "tools": [WEATHER_TOOL]}
        whole, streamed = post_all(app, [("/v1/chat/completions", body),
                                         ("/v1/chat/completions", {**body, "stream": True})])
    choice = whole.json()["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["reasoning"] == 'Maybe <tool_call>{"name": "x", "arguments": {}}</tool_call>? No.'
    assert choice["message"]["content"] == "Checking. "            # as written (vLLM's hermes parser)
    assert [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in choice["message"]["tool_calls"]] \
        == [("get_weather", {"city": "Paris"})]
    deltas = [c["choices"][0]["delta"] for c in sse_chunks(streamed)]
    assert "".join(d.get("reasoning", "") for d in deltas) == choice["message"]["reasoning"]
    names = [t["function"]["name"] for d in deltas for t in d.get("tool_calls", []) if t.get("function", {}).get("name")]
    assert names == ["get_weather"] and sse_chunks(streamed)[-1]["choices"][0]["finish_reason"] == "tool_calls"


def test_forced_tool_call_after_thinking(think_model_dir):
    """A named tool_choice is a JSON-schema constraint: with a reasoning parser it applies after the thinking, and
    the call's arguments are what follows </think>; streamed, the call's header comes with its first argument text
    (an empty delta while thinking used to swallow it)."""
    pytest.importorskip("xgrammar")
    pieces = ["Paris, then.", "</think>", '{"city": ', '"Paris"}']
    named = {"type": "function", "function": {"name": "get_weather"}}
    with serve_in_process(think_model_dir, "--reasoning-parser", "deepseek_r1") as (app, engine):
        seen = scripted_engine(engine, pieces)
        body = {"messages": ASK, "tools": [WEATHER_TOOL], "tool_choice": named}
        whole, streamed = post_all(app, [("/v1/chat/completions", body),
                                         ("/v1/chat/completions", {**body, "stream": True})])
    message = whole.json()["choices"][0]["message"]
    assert message["reasoning"] == "Paris, then." and message["content"] == ""
    assert [(c["function"]["name"], c["function"]["arguments"]) for c in message["tool_calls"]] == \
        [("get_weather", '{"city": "Paris"}')]
    assert seen[0]["params"].structured_outputs is not None and seen[0]["reasoning_ended"] is False
    deltas = [c["choices"][0]["delta"] for c in sse_chunks(streamed)]
    calls = [t for d in deltas for t in d.get("tool_calls", [])]
    assert calls[0]["function"]["name"] == "get_weather" and calls[0]["id"]
    assert "".join(t["function"]["arguments"] for t in calls) == '{"city": "Paris"}'
    assert "".join(d.get("reasoning", "") for d in deltas) == "Paris, then."


def test_forced_tool_call_cut_while_thinking_is_no_call(think_model_dir):
    """max_tokens spent before </think>: no tool call, streamed or not (the stream used to end with a call whose
    arguments were "", which no client can parse as JSON)."""
    pytest.importorskip("xgrammar")
    named = {"type": "function", "function": {"name": "get_weather"}}
    with serve_in_process(think_model_dir, "--reasoning-parser", "deepseek_r1") as (app, engine):
        scripted_engine(engine, ["Paris, ", "or maybe"], finish="length")
        body = {"messages": ASK, "tools": [WEATHER_TOOL], "tool_choice": named, "max_tokens": 2}
        whole, streamed = post_all(app, [("/v1/chat/completions", body),
                                         ("/v1/chat/completions", {**body, "stream": True})])
    choice = whole.json()["choices"][0]
    assert choice["message"]["reasoning"] == "Paris, or maybe" and not choice["message"].get("tool_calls")
    chunks = sse_chunks(streamed)
    deltas = [c["choices"][0]["delta"] for c in chunks]
    assert "".join(d.get("reasoning", "") for d in deltas) == "Paris, or maybe"
    assert not any("tool_calls" in d for d in deltas)
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"


def test_responses_reasoning_item(think_model_dir):
    with serve_in_process(think_model_dir, "--reasoning-parser", "deepseek_r1",
                          chat_template=QWEN_LIKE_TEMPLATE) as (app, engine):
        seen = scripted_engine(engine, R1_OUTPUT)
        whole, streamed, summary = post_all(app, [
            ("/v1/responses", {"input": "Is 9.11 larger than 9.8?", "reasoning": {"effort": "high"}}),
            ("/v1/responses", {"input": "Is 9.11 larger than 9.8?", "stream": True}),
            ("/v1/responses", {"input": "Hi", "reasoning": {"summary": "detailed"}})])
        prompt = engine.input_processor.tokenizer.decode(seen[0]["prompt_ids"])
    output = whole.json()["output"]
    assert [item["type"] for item in output] == ["reasoning", "message"]
    assert output[0]["content"] == [{"type": "reasoning_text", "text": "Let me compare."}]
    assert output[0]["id"].startswith("rs_") and output[0]["summary"] == []
    assert output[1]["content"][0]["text"] == "\n\n9.8 is larger."
    assert "effort=high\n" in prompt           # reasoning.effort reaches the template, as vLLM's
    events = [json.loads(line[6:]) for line in streamed.text.splitlines() if line.startswith("data: ")]
    kinds = [e["type"] for e in events]
    assert kinds[:9] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.reasoning_part.added", "response.reasoning_text.delta",
                         "response.reasoning_text.delta", "response.reasoning_text.done",
                         "response.reasoning_part.done", "response.output_item.done"]
    assert events[6]["text"] == "Let me compare." and events[2]["item"]["type"] == "reasoning"
    final = events[-1]["response"]
    assert [item["type"] for item in final["output"]] == ["reasoning", "message"]
    assert final["output"][1]["content"][0]["text"] == "\n\n9.8 is larger."
    assert summary.status_code == 400 and summary.json()["error"]["param"] == "reasoning"


# ---- structured output after the thinking (the real engine) ---------------------------------------------------------
def test_grammar_starts_after_the_thinking(think_model_dir):
    """With a reasoning parser the model thinks freely and only what follows </think> is constrained (vLLM's
    rule); enable_in_reasoning constrains from the first token. Offline too (vLLM's engine does it for LLM)."""
    pytest.importorskip("xgrammar")
    from pagedllm import LLM, SamplingParams, StructuredOutputsParams
    choice = StructuredOutputsParams(choice=["yes", "no"])
    prompt = {"prompt_token_ids": [1, 20, 30, 40]}
    outs = {}
    for name, extra in (("gated", {}), ("in_reasoning", {"structured_outputs_config": {"enable_in_reasoning": True}})):
        llm = LLM(model=think_model_dir, reasoning_parser="deepseek_r1", dtype="float32", max_model_len=128,
                  kv_cache_memory_gb=0.01, seed=0, **extra)
        end = llm.get_tokenizer().convert_tokens_to_ids("</think>")
        free = SamplingParams(max_tokens=6, temperature=0, structured_outputs=choice)
        # A bias that makes </think> the first token: the grammar must let it through, then constrain the rest.
        biased = SamplingParams(max_tokens=12, temperature=0, logit_bias={end: 100}, structured_outputs=choice)
        outs[name] = [o.outputs[0] for o in llm.generate([prompt, prompt], [free, biased], use_tqdm=False)]
        del llm
    free, biased = outs["gated"]
    assert biased.token_ids[0] == end and biased.text.split("</think>", 1)[1] in ("yes", "no")
    assert biased.finish_reason == "stop"                 # the grammar ended it
    assert len(free.token_ids) == 6 and free.text not in ("yes", "no")     # thinking: not held to the grammar
    free_c, biased_c = outs["in_reasoning"]
    assert free_c.text in ("yes", "no") and biased_c.text in ("yes", "no") and end not in biased_c.token_ids


# ---- thinking sent back in the history ---------------------------------------------------------------------------
HISTORY_TEMPLATE = ("{% for m in messages %}[{{ m.role }}]"
                    "{% if m.reasoning_content %}<think>{{ m.reasoning_content }}</think>{% endif %}"
                    "{{ m.content or '' }}{% for c in m.tool_calls or [] %}<call {{ c.function.name }}>{% endfor %}|"
                    "{% endfor %}[assistant]")


def test_thinking_in_the_history_reaches_the_template(think_model_dir):
    """An assistant turn's reasoning sent back (chat: message.reasoning; responses: the reasoning output item, as a
    client that appends response.output to its input sends it) reaches the chat template as reasoning and
    reasoning_content (vLLM 0.24's names; Qwen3's and DeepSeek's templates read the second); a response's output
    sent back (reasoning, message, function_call) is one assistant turn again, as vLLM rebuilds it."""
    call = {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": '{"city": "Paris"}'}
    items = [{"role": "user", "content": "Weather in Paris?"},
             {"type": "reasoning", "id": "rs_1", "summary": [],
              "content": [{"type": "reasoning_text", "text": "Use the tool."}]},
             {"type": "message", "id": "msg_1", "role": "assistant", "status": "completed",
              "content": [{"type": "output_text", "text": "Checking.", "annotations": []}]},
             {**call, "id": "fc_1", "status": "completed"},
             {"type": "function_call_output", "call_id": "call_1", "output": "sunny"}]
    with serve_in_process(think_model_dir, "--reasoning-parser", "deepseek_r1",
                          chat_template=HISTORY_TEMPLATE) as (app, engine):
        seen = scripted_engine(engine, ["ok"])
        chat, responses = post_all(app, [
            ("/v1/chat/completions", {"messages": [ASK[0], {"role": "assistant", "content": "No.",
                                                            "reasoning": "9.8 > 9.11"},
                                                   {"role": "user", "content": "Sure?"}]}),
            ("/v1/responses", {"input": items, "tools": [{"type": "function", "name": "get_weather",
                                                          "parameters": WEATHER_TOOL["function"]["parameters"]}],
                               "tool_choice": "none"})])
        prompts = [engine.input_processor.tokenizer.decode(s["prompt_ids"]) for s in seen]
    assert chat.status_code == 200 and responses.status_code == 200, responses.text
    assert "[assistant]<think>9.8 > 9.11</think>No.|[user]Sure?" in prompts[0]
    assert "[assistant]<think>Use the tool.</think>Checking.<call get_weather>|[tool]sunny|" in prompts[1]


def test_reasoning_content_sent_back_reaches_the_template(think_model_dir):
    """An assistant turn sent back with ``reasoning_content`` (the field's name before vLLM's rename, and DeepSeek's
    API's; clients that keep a reasoning model's answer send it so) is read as its reasoning, as vLLM does; it was
    dropped, so the template rendered the turn without its thinking. ``reasoning`` wins when both are given."""
    turn = {"role": "assistant", "content": "No.", "reasoning_content": "9.8 > 9.11"}
    with serve_in_process(think_model_dir, "--reasoning-parser", "deepseek_r1",
                          chat_template=HISTORY_TEMPLATE) as (app, engine):
        seen = scripted_engine(engine, ["ok"])
        again = {"role": "user", "content": "Sure?"}
        responses = post_all(app, [("/v1/chat/completions", {"messages": [ASK[0], t, again]})
                                   for t in (turn, {**turn, "reasoning": "both"})])
        prompts = [engine.input_processor.tokenizer.decode(s["prompt_ids"]) for s in seen]
    assert [r.status_code for r in responses] == [200, 200], responses[0].text
    assert "[assistant]<think>9.8 > 9.11</think>No.|[user]Sure?" in prompts[0]
    assert "[assistant]<think>both</think>No.|" in prompts[1]


# ---- thinking_token_budget ----------------------------------------------------------------------------------------
def test_thinking_token_budget_forces_the_end_of_thinking(think_model_dir):
    """vLLM's thinking_token_budget: at most N tokens after the start tag, then </think> is forced (thinking the
    prompt opened counts from its start tag); no start tag, no thinking to cut. Without a reasoning parser it is an
    error, as vLLM's."""
    from pagedllm import LLM, SamplingParams
    llm = LLM(model=think_model_dir, reasoning_parser="deepseek_r1", dtype="float32", max_model_len=128,
              kv_cache_memory_gb=0.01, seed=0)
    tok = llm.get_tokenizer()
    start, end = tok.convert_tokens_to_ids("<think>"), tok.convert_tokens_to_ids("</think>")
    opened = {"prompt_token_ids": [1, 20, start, 30]}         # one thinking token already in the prompt
    plain = {"prompt_token_ids": [1, 20, 30, 40]}
    params = [SamplingParams(max_tokens=8, temperature=0, thinking_token_budget=b) for b in (4, 1, 0, -1)]
    outs = [o.outputs[0].token_ids for o in llm.generate([opened] * 4 + [plain],
                                                        params + [params[2]], use_tqdm=False)]
    free = outs[3]
    assert end not in free                                    # the model left alone does not close its thinking
    assert outs[0][:3] == free[:3] and outs[0][3] == end      # 1 in the prompt + 3 generated = 4, then </think>
    assert outs[1][0] == end and outs[2][0] == end            # budget already spent by the prompt
    assert end not in outs[4]                                 # no start tag: not thinking, nothing forced
    with pytest.raises(ValueError, match="must be a non-negative integer or -1"):
        SamplingParams(thinking_token_budget=-2)
    del llm
    no_parser = LLM(model=think_model_dir, dtype="float32", max_model_len=64, kv_cache_memory_gb=0.01)
    with pytest.raises(ValueError, match="thinking_token_budget is set but no reasoning parser is configured"):
        no_parser.generate([plain], SamplingParams(thinking_token_budget=3), use_tqdm=False)


def test_thinking_token_budget_on_the_server(think_model_dir):
    r1_template = QWEN_LIKE_TEMPLATE.replace("{% endif %}{% endif %}", "{% endif %}<think>\n{% endif %}")
    with serve_in_process(think_model_dir, "--reasoning-parser", "deepseek_r1",
                          chat_template=r1_template) as (app, engine):
        budgeted, bad, completion = post_all(app, [
            ("/v1/chat/completions", {"messages": ASK, "max_tokens": 6, "temperature": 0,
                                      "thinking_token_budget": 3}),
            ("/v1/chat/completions", {"messages": ASK, "thinking_token_budget": -5}),
            ("/v1/completions", {"prompt": "<think>\nx", "max_tokens": 4, "temperature": 0,
                                 "thinking_token_budget": 0, "skip_special_tokens": False})])
    message = budgeted.json()["choices"][0]["message"]
    # "\n" after the prompt's <think> and 2 generated tokens make the budget of 3; then </think>, then the answer.
    assert message["reasoning"] is not None and message["content"], message
    assert budgeted.json()["usage"]["completion_tokens"] == 6
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "thinking_token_budget"
    assert completion.json()["choices"][0]["text"].startswith("</think>")


def test_responses_usage_counts_reasoning_tokens(think_model_dir):
    """usage.output_tokens_details.reasoning_tokens: the output tokens between <think> and </think>, vLLM's count
    (it was always 0)."""
    with serve_in_process(think_model_dir, "--reasoning-parser", "qwen3") as (app, engine):
        tok = engine.input_processor.tokenizer
        start, end = tok.convert_tokens_to_ids("<think>"), tok.convert_tokens_to_ids("</think>")
        scripted_engine(engine, ["<think>", "Let me ", "compare.", "</think>", "No."], token_ids=[start, 7, 8, end, 9])
        whole, streamed = post_all(app, [("/v1/responses", {"input": "Is 9.11 larger than 9.8?"}),
                                         ("/v1/responses", {"input": "Is 9.11 larger than 9.8?", "stream": True})])
    assert whole.json()["usage"]["output_tokens_details"] == {"reasoning_tokens": 2}
    assert whole.json()["usage"]["output_tokens"] == 5
    final = [json.loads(line[6:]) for line in streamed.text.splitlines() if line.startswith("data: ")][-1]
    assert final["type"] == "response.completed"
    assert final["response"]["usage"]["output_tokens_details"] == {"reasoning_tokens": 2}


def test_thinking_token_budget_with_async_scheduling(think_model_dir):
    """Async scheduling launches a step before the host has seen the previous token: a request under a thinking
    budget is sampled synchronously, so a <think> it just wrote already counts at the next step."""
    from pagedllm import LLM, SamplingParams
    llm = LLM(model=think_model_dir, reasoning_parser="deepseek_r1", dtype="float32", max_model_len=64,
              kv_cache_memory_gb=0.01, seed=0, async_scheduling=True)
    tok = llm.get_tokenizer()
    start, end = tok.convert_tokens_to_ids("<think>"), tok.convert_tokens_to_ids("</think>")
    # The bias makes every free token <think>; a budget of 0 must answer each with </think>.
    params = SamplingParams(max_tokens=6, temperature=0, thinking_token_budget=0, logit_bias={start: 100})
    out = llm.generate([{"prompt_token_ids": [1, 20, 30]}], params, use_tqdm=False)[0].outputs[0]
    assert out.token_ids == [start, end] * 3
