"""Detokenization and text-level stop conditions, with the SmolLM2 tokenizer (byte-level BPE: Chinese characters
and emoji are split over byte tokens that decode to U+FFFD on their own).

End-to-end tests use a *scripted* tiny Llama: attention and MLP outputs are zeroed, so the logits depend only on
the last token, and embeddings/lm_head are set so that each scripted token is followed by its successor. A prompt
ending in a trigger word then makes greedy decoding emit a known text, token by token, through the real engine.
"""
from __future__ import annotations

import copy

import pytest
import torch

from pagedllm import LLM, SamplingParams
from pagedllm.engine.detokenizer import IncrementalDetokenizer
from pagedllm.engine.request import Request
from pagedllm.sampling_params import RequestOutputKind

EOS = 2  # <|im_end|>
SCRIPTS = {
    "English": " The quick brown fox jumps over the lazy dog.",
    "Chinese": "你好，世界！🎉 done.",
    "Greek": " alpha beta gamma delta epsilon.",
    "French": " Ünïcödé café.",
}
SPECIAL_SCRIPT = [1, 4093, 198, 6004, 17]   # <|im_start|> "user" "\n" "hi" "!"


def build_scripted_model(path, tokenizer, chains: list[list[int]]) -> None:
    import transformers
    hidden = 64
    cfg = transformers.LlamaConfig(hidden_size=hidden, intermediate_size=128, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, vocab_size=len(tokenizer),
                                   max_position_embeddings=512, tie_word_embeddings=False,
                                   bos_token_id=1, eos_token_id=EOS)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(cfg)
    successor: dict[int, int] = {}
    for chain in chains:
        for a, b in zip(chain, chain[1:]):
            assert successor.setdefault(a, b) == b, f"token {a} would need two successors"
    assert len(successor) <= hidden
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        emb, head = model.model.embed_tokens.weight, model.lm_head.weight
        emb.zero_()
        head.zero_()
        for i, (a, b) in enumerate(sorted(successor.items())):
            emb[a, i] = 1.0
            head[b, i] = 10.0
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)


@pytest.fixture(scope="module")
def scripted(tokenizer, tmp_path_factory):
    """(llm, prompts by name, expected output ids by name)."""
    prompts, outputs, chains = {}, {}, []
    for name, text in SCRIPTS.items():
        prompt = f"Answer in {name}"
        trigger = tokenizer.encode(prompt)[-1]
        ids = tokenizer.encode(text)
        assert tokenizer.decode(ids) == text
        prompts[name], outputs[name] = prompt, ids + [EOS]
        chains.append([trigger] + ids + [EOS])
    trigger = tokenizer.encode("Answer in Special")[-1]
    prompts["Special"], outputs["Special"] = "Answer in Special", SPECIAL_SCRIPT + [EOS]
    chains.append([trigger] + SPECIAL_SCRIPT + [EOS])
    path = tmp_path_factory.mktemp("scripted_llama")
    build_scripted_model(path, tokenizer, chains)
    llm = LLM(model=str(path), dtype="float32", max_model_len=256)
    return llm, prompts, outputs


def run(llm, prompts, params):
    return llm.generate(prompts, params, use_tqdm=False)


# ---- IncrementalDetokenizer on its own -----------------------------------------------------------------------------

TEXTS = [
    " The quick brown fox jumps over the lazy dog.",
    "Hello\n\n  world\t! Tabs,   spaces and\nnewlines.",
    "你好，世界！今天天气很好。",
    "日本語のテキストと中文混合 text 123",
    "Emoji: 🎉👍🏽 family 👨‍👩‍👧 end",
    "Ünïcödé café naïve façade",
    "def f(x):\n    return x ** 2  # square",
    "<|im_start|>assistant\nSure!<|im_end|> after",
]


@pytest.mark.parametrize("skip_special", [True, False])
@pytest.mark.parametrize("text", TEXTS)
def test_incremental_text_equals_full_decode(tokenizer, text, skip_special):
    prompt_ids = tokenizer.encode("Prompt: here is some context")
    out_ids = tokenizer.encode(text)
    request = Request("r", prompt_ids, SamplingParams(skip_special_tokens=skip_special, max_tokens=len(out_ids)))
    detok = IncrementalDetokenizer(tokenizer, request.sampling_params, request.num_prompt_tokens)
    expected = tokenizer.decode(out_ids, skip_special_tokens=skip_special)
    assert "\ufffd" not in expected
    seen = []
    for t in out_ids:
        request.append_token(t)
        assert detok.update(request.token_ids) is None
        seen.append(detok.output_text)
    assert seen[-1] == expected
    for partial in seen:
        assert "\ufffd" not in partial           # an incomplete character is held back, never shown
        assert expected.startswith(partial)      # text only grows
    if not skip_special and "<|im_start|>" in text:
        assert "<|im_start|>" in expected


def _incremental_texts(tokenizer, prompt_ids, out_ids, skip_special) -> list[str]:
    request = Request("r", prompt_ids, SamplingParams(skip_special_tokens=skip_special, max_tokens=len(out_ids)))
    detok = IncrementalDetokenizer(tokenizer, request.sampling_params, request.num_prompt_tokens)
    seen = []
    for t in out_ids:
        request.append_token(t)
        detok.update(request.token_ids)
        seen.append(detok.output_text)
    return seen


@pytest.mark.parametrize("skip_special", [True, False])
def test_fast_tokenizer_decodes_in_rust_with_hf_text(tokenizer, monkeypatch, skip_special):
    """A stock fast tokenizer without clean-up is decoded by its Rust tokenizer directly (two calls per streamed
    token, 2.5x cheaper; docs/perf.md session 35): every step's text is the same as through HF's ``decode``, which
    is not called. With ``clean_up_tokenization_spaces`` set, HF's ``decode`` (and its clean-up) is kept."""
    prompt_ids = tokenizer.encode("Prompt: here is some context")
    hf_decode = type(tokenizer).decode
    calls = []

    def counted(self, *args, **kwargs):
        calls.append(1)
        return hf_decode(self, *args, **kwargs)
    subclassed = copy.copy(tokenizer)        # a subclass that overrides decode: HF's call is kept
    subclassed.__class__ = type("CountingTokenizer", (type(tokenizer),), {"decode": counted})
    for text in TEXTS:
        out_ids = tokenizer.encode(text)
        reference = _incremental_texts(subclassed, prompt_ids, out_ids, skip_special)
        assert calls, "the reference run must go through HF's decode"
        calls.clear()
        with monkeypatch.context() as m:
            m.setattr(tokenizer, "decode", lambda *a, **k: calls.append(1) or hf_decode(tokenizer, *a, **k))
            assert _incremental_texts(tokenizer, prompt_ids, out_ids, skip_special) == reference
            assert not calls
            m.setattr(tokenizer, "clean_up_tokenization_spaces", True)
            assert _incremental_texts(tokenizer, prompt_ids, out_ids, skip_special) == reference
        assert calls
        calls.clear()


def test_incremental_text_after_prompt_ending_mid_character(tokenizer):
    # The prompt ends in the middle of a multi-byte character: the output must not start with a stray U+FFFD.
    ids = tokenizer.encode("前缀你好世界")
    prompt_ids, out_ids = ids[:-3], ids[-3:]
    request = Request("r", prompt_ids, SamplingParams())
    detok = IncrementalDetokenizer(tokenizer, request.sampling_params, request.num_prompt_tokens)
    for t in out_ids:
        request.append_token(t)
        detok.update(request.token_ids)
    assert tokenizer.decode(ids).endswith(detok.output_text)
    assert "\ufffd" not in detok.output_text


# ---- through the engine ------------------------------------------------------------------------------------------------

def test_scripted_outputs_text_and_eos(scripted, tokenizer):
    llm, prompts, outputs = scripted
    names = list(SCRIPTS)
    outs = run(llm, [prompts[n] for n in names], SamplingParams(temperature=0.0, max_tokens=40))
    for name, out in zip(names, outs):
        c = out.outputs[0]
        assert out.prompt == prompts[name]
        assert list(c.token_ids) == outputs[name]
        assert c.text == SCRIPTS[name]
        assert c.text == tokenizer.decode(c.token_ids, skip_special_tokens=True)
        assert "\ufffd" not in c.text
        assert (c.finish_reason, c.stop_reason) == ("stop", None)


def test_skip_special_tokens(scripted):
    llm, prompts, outputs = scripted
    params = [SamplingParams(temperature=0.0, max_tokens=20),
              SamplingParams(temperature=0.0, max_tokens=20, skip_special_tokens=False),
              SamplingParams(temperature=0.0, max_tokens=20, skip_special_tokens=False, include_stop_str_in_output=True)]
    outs = [o.outputs[0] for o in run(llm, [prompts["Special"]] * 3, params)]
    assert all(list(c.token_ids) == outputs["Special"] for c in outs)
    assert outs[0].text == "user\nhi!"
    # The EOS token's own text is not part of the output unless include_stop_str_in_output (vLLM).
    assert outs[1].text == "<|im_start|>user\nhi!"
    assert outs[2].text == "<|im_start|>user\nhi!<|im_end|>"


def test_detokenize_false_gives_ids_only(scripted):
    llm, prompts, outputs = scripted
    c = run(llm, prompts["Chinese"], SamplingParams(temperature=0.0, max_tokens=40, detokenize=False))[0].outputs[0]
    assert c.text == ""
    assert list(c.token_ids) == outputs["Chinese"]
    assert c.finish_reason == "stop"


@pytest.mark.parametrize("stop, include, text, num_tokens", [
    ("ta gam", False, " alpha be", 3),              # crosses the " beta" / " gamma" boundary
    ("ta gam", True, " alpha beta gam", 3),
    ([" delta", "nowhere"], False, " alpha beta gamma", 4),
    (["nowhere", "a d"], True, " alpha beta gamma d", 4),
    (" alpha", False, "", 1),                          # matched by the very first token
    ("epsilon.", False, " alpha beta gamma delta ", 6),
])
def test_stop_strings(scripted, stop, include, text, num_tokens):
    llm, prompts, outputs = scripted
    c = run(llm, prompts["Greek"], SamplingParams(temperature=0.0, max_tokens=40, stop=stop,
                                                   include_stop_str_in_output=include))[0].outputs[0]
    assert c.text == text
    assert c.finish_reason == "stop"
    assert c.stop_reason == (stop if isinstance(stop, str) else next(s for s in stop if s in SCRIPTS["Greek"]))
    assert list(c.token_ids) == outputs["Greek"][:num_tokens]


def test_stop_string_in_chinese_and_at_max_tokens(scripted):
    llm, prompts, outputs = scripted
    params = [SamplingParams(temperature=0.0, max_tokens=40, stop="世界"),
              SamplingParams(temperature=0.0, max_tokens=40, stop="🎉", include_stop_str_in_output=True),
              SamplingParams(temperature=0.0, max_tokens=3, stop="gamma")]
    outs = [o.outputs[0] for o in run(llm, [prompts["Chinese"], prompts["Chinese"], prompts["Greek"]], params)]
    assert (outs[0].text, outs[0].stop_reason, outs[0].finish_reason) == ("你好，", "世界", "stop")
    assert (outs[1].text, outs[1].stop_reason) == ("你好，世界！🎉", "🎉")
    # The stop string completes exactly on the last allowed token: it is a stop, not a length finish.
    assert (outs[2].text, outs[2].finish_reason, outs[2].stop_reason) == (" alpha beta ", "stop", "gamma")


def test_stop_string_before_min_tokens_is_not_a_stop(scripted):
    """A stop string complete before min_tokens neither stops nor cuts the text; a later one does."""
    llm, prompts, outputs = scripted
    c = run(llm, prompts["Greek"], SamplingParams(temperature=0.0, max_tokens=40, min_tokens=3,
                                                   stop=["alpha", "delta"]))[0].outputs[0]
    assert (c.text, c.finish_reason, c.stop_reason) == (" alpha beta gamma ", "stop", "delta")


def test_stop_string_of_the_min_tokens_text_is_not_found_later(scripted):
    """A short stop string in the text before min_tokens stays there when a longer stop string is also set: each
    stop string looks back only its own length (vLLM). Before, all looked back as far as the longest, so " beta"
    (the first token past min_tokens) found "alpha" again and stopped with text " ", stop_reason "alpha"."""
    llm, prompts, outputs = scripted
    c = run(llm, prompts["Greek"], SamplingParams(temperature=0.0, max_tokens=40, min_tokens=1,
                                                   stop=["alpha", " gamma delta"]))[0].outputs[0]
    assert (c.text, c.finish_reason, c.stop_reason) == (" alpha beta", "stop", " gamma delta")
    assert list(c.token_ids) == outputs["Greek"][:4]


def test_stop_token_ids_text_excludes_the_stop_token(scripted, tokenizer):
    llm, prompts, outputs = scripted
    gamma = tokenizer.encode(" gamma")[0]
    params = [SamplingParams(temperature=0.0, max_tokens=40, stop_token_ids=[gamma]),
              SamplingParams(temperature=0.0, max_tokens=40, stop_token_ids=[gamma], include_stop_str_in_output=True)]
    outs = [o.outputs[0] for o in run(llm, [prompts["Greek"]] * 2, params)]
    for c in outs:
        assert list(c.token_ids) == outputs["Greek"][:3]
        assert (c.finish_reason, c.stop_reason) == ("stop", gamma)
    assert outs[0].text == " alpha beta"
    assert outs[1].text == " alpha beta gamma"


def _stream(llm, prompt, params):
    """Step the engine directly and collect every RequestOutput of one request."""
    engine = llm.llm_engine
    engine.add_request("stream-" + str(id(params)), prompt, params)
    seen = []
    while engine.has_unfinished_requests():
        seen.extend(engine.step())
    return seen


@pytest.mark.parametrize("name, stop, final", [
    ("Chinese", None, SCRIPTS["Chinese"]),
    ("Greek", "ta gam", " alpha be"),
    ("Greek", "delta", " alpha beta gamma "),
])
def test_streamed_deltas_add_up_to_final_text(scripted, name, stop, final):
    llm, prompts, _ = scripted
    delta = _stream(llm, prompts[name], SamplingParams(temperature=0.0, max_tokens=40, stop=stop,
                                                       output_kind=RequestOutputKind.DELTA))
    assert len(delta) >= 3 and delta[-1].finished and not any(o.finished for o in delta[:-1])
    pieces = [o.outputs[0].text for o in delta]
    assert all("\ufffd" not in p for p in pieces)
    assert "".join(pieces) == final
    cumulative = _stream(llm, prompts[name], SamplingParams(temperature=0.0, max_tokens=40, stop=stop))
    texts = [o.outputs[0].text for o in cumulative]
    assert texts[-1] == final
    assert all(final.startswith(t) for t in texts)   # never shows text that is later withdrawn


def test_n_completions_deltas_carry_each_finish_once(tiny_llama_dir):
    """n > 1 streamed as deltas: a completion appears in a delta only when it has news, and its finish once (as
    vLLM's). Before, every delta repeated every completion: one that had finished came back step after step with
    text "" and its finish_reason again."""
    llm = LLM(model=tiny_llama_dir, dtype="float32", max_model_len=64)
    # Half the vocabulary stops a completion (a random model's tokens): the seeded completions end after different
    # numbers of tokens.
    params = dict(n=3, temperature=1.0, seed=5, max_tokens=12, stop_token_ids=list(range(24000)))
    delta = _stream(llm, "Hello there", SamplingParams(**params, output_kind=RequestOutputKind.DELTA))
    final = run(llm, "Hello there", SamplingParams(**params))[0].outputs
    assert len({len(c.token_ids) for c in final}) > 1, "the completions should end at different steps"
    pieces: dict[int, list] = {c.index: [] for c in final}
    for out in delta:
        for c in out.outputs:
            assert c.text or c.token_ids or c.finish_reason == "stop", c
            pieces[c.index].append(c)
    for c in final:
        mine = pieces[c.index]
        assert [p.finish_reason for p in mine] == [None] * (len(mine) - 1) + [c.finish_reason]
        assert [t for p in mine for t in p.token_ids] == list(c.token_ids)
        assert "".join(p.text for p in mine) == c.text


def test_stream_interval_batches_deltas(tiny_llama_dir):
    """vLLM's stream_interval (--stream-interval): a streamed (DELTA) request reports its first token, then every
    stream_interval tokens, and its finish; the pieces still add up to the whole completion. Cumulative outputs are
    reported every step, as vLLM's."""
    llm = LLM(model=tiny_llama_dir, dtype="float32", max_model_len=64, stream_interval=3)
    params = dict(temperature=0.0, max_tokens=8, ignore_eos=True)
    delta = _stream(llm, "Hello there", SamplingParams(**params, output_kind=RequestOutputKind.DELTA))
    assert [len(o.outputs[0].token_ids) for o in delta] == [1, 3, 3, 1]
    assert [o.finished for o in delta] == [False, False, False, True]
    final = run(llm, "Hello there", SamplingParams(**params))[0].outputs[0]
    assert [t for o in delta for t in o.outputs[0].token_ids] == list(final.token_ids)
    assert "".join(o.outputs[0].text for o in delta) == final.text
    assert len(_stream(llm, "Hello there", SamplingParams(**params))) == 8
    with pytest.raises(ValueError, match="stream_interval must be >= 1, got 0"):
        LLM(model=tiny_llama_dir, stream_interval=0)


def test_per_request_stream_interval(tiny_llama_dir):
    """vLLM's SamplingParams(stream_interval=k) (a TypeError before): this request's DELTA outputs batch k new tokens,
    above the engine's --stream-interval (a smaller value is raised to it); first and final outputs at once."""
    llm = LLM(model=tiny_llama_dir, dtype="float32", max_model_len=64)
    params = dict(temperature=0.0, max_tokens=8, ignore_eos=True, output_kind=RequestOutputKind.DELTA)
    delta = _stream(llm, "Hello there", SamplingParams(**params, stream_interval=3))
    assert [len(o.outputs[0].token_ids) for o in delta] == [1, 3, 3, 1]
    final = run(llm, "Hello there", SamplingParams(**{**params, "output_kind": RequestOutputKind.CUMULATIVE}))[0]
    assert [t for o in delta for t in o.outputs[0].token_ids] == list(final.outputs[0].token_ids)
    assert [len(o.outputs[0].token_ids) for o in _stream(llm, "Hello there", SamplingParams(**params))] == [1] * 8
    engine_3 = LLM(model=tiny_llama_dir, dtype="float32", max_model_len=64, stream_interval=3)
    assert [len(o.outputs[0].token_ids) for o in _stream(engine_3, "Hello there",
                                                          SamplingParams(**params, stream_interval=1))] == [1, 3, 3, 1]
    with pytest.raises(ValueError, match="stream_interval must be at least 1, got 0"):
        SamplingParams(stream_interval=0)
