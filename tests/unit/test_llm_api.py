"""The offline ``LLM`` API: prompt forms, per-prompt params, output order and fields, progress bar, constructor
errors, chat (with a template override) and beam search, on a tiny random Llama that uses the SmolLM2 tokenizer."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from pagedllm import (LLM, BeamSearchOutput, BeamSearchParams, CompletionOutput, Logprob, RequestOutput,
                      SamplingParams)
from tiny_models import save_tiny_llama, save_word_tokenizer

GREEDY = SamplingParams(temperature=0.0, max_tokens=5)


@pytest.fixture(scope="module")
def model_dir(tokenizer, tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny_llama_api")
    hf = save_tiny_llama(path, len(tokenizer), bos_token_id=1, eos_token_id=2)
    tokenizer.save_pretrained(path)
    return path, hf


@pytest.fixture(scope="module")
def hf(model_dir):
    return model_dir[1]


@pytest.fixture(scope="module")
def llm(model_dir):
    return LLM(model=str(model_dir[0]), dtype="float32", max_model_len=256)


@torch.no_grad()
def hf_logprobs(hf, ids: list[int]) -> torch.Tensor:
    return torch.log_softmax(hf(torch.tensor([ids])).logits[0].float(), dim=-1)


def hf_greedy(hf, ids: list[int], steps: int) -> list[int]:
    ids, out = list(ids), []
    for _ in range(steps):
        tok = int(hf_logprobs(hf, ids)[-1].argmax())
        out.append(tok)
        ids.append(tok)
    return out


# ---- prompts and params ----------------------------------------------------------------------------------------------

def test_prompt_forms(llm, tokenizer, hf):
    text = "The capital of France is"
    ids = tokenizer.encode(text)
    other = "Once upon a time"
    outs = llm.generate([text, {"prompt": text}, {"prompt_token_ids": ids}, other], GREEDY, use_tqdm=False)
    assert len(outs) == 4
    expected = hf_greedy(hf, ids, 5)
    for out in outs[:3]:
        assert out.prompt_token_ids == ids
        assert list(out.outputs[0].token_ids) == expected
        assert out.outputs[0].text == tokenizer.decode(expected, skip_special_tokens=True)
    assert outs[0].prompt == text and outs[1].prompt == text
    assert outs[2].prompt is None
    assert outs[3].prompt == other and outs[3].prompt_token_ids == tokenizer.encode(other)
    single = llm.generate(text, GREEDY, use_tqdm=False)
    assert isinstance(single, list) and len(single) == 1
    assert list(single[0].outputs[0].token_ids) == expected



def test_vllm_prompt_types_importable(llm, tokenizer, hf):
    # `from vllm.inputs import TokensPrompt, TextPrompt` (or from vllm) in code written for vLLM.
    import pagedllm
    from pagedllm.inputs import TextPrompt, TokensPrompt
    assert pagedllm.TokensPrompt is TokensPrompt and pagedllm.TextPrompt is TextPrompt
    ids = tokenizer.encode("The capital of France is")
    outs = llm.generate([TokensPrompt(prompt_token_ids=ids), TextPrompt(prompt="The capital of France is")], GREEDY,
                        use_tqdm=False)
    assert [list(o.outputs[0].token_ids) for o in outs] == [hf_greedy(hf, ids, 5)] * 2


def test_multi_modal_and_unknown_prompt_fields_rejected(llm):
    # A text-only engine must not drop an image silently and answer as if it had seen it (vLLM's words, then ours).
    with pytest.raises(ValueError, match=r"^At most 0 image\(s\) may be provided in one prompt\. \w+ reads text only"):
        llm.generate({"prompt": "What is in the image?", "multi_modal_data": {"image": object()}}, GREEDY,
                     use_tqdm=False)
    with pytest.raises(ValueError, match="enable_prompt_embeds=True"):
        llm.generate({"prompt_embeds": torch.zeros(3, 64)}, GREEDY, use_tqdm=False)
    with pytest.raises(ValueError, match="Unknown prompt field 'promt'"):
        llm.generate([{"prompt": "a"}, {"promt": "b"}], GREEDY, use_tqdm=False)
    assert not llm.llm_engine.has_unfinished_requests()
    # vLLM's optional fields left as None are fine.
    out = llm.generate({"prompt": "a", "multi_modal_data": None, "mm_processor_kwargs": None}, GREEDY,
                       use_tqdm=False)[0]
    assert len(out.outputs[0].token_ids) == 5

def test_per_prompt_params_and_input_order(llm):
    prompts = ["one two three", "a", "the longest prompt of them all, by quite a few tokens", "four five"]
    lengths = [12, 1, 6, 3]          # the 2nd finishes first, the 1st last
    params = [SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True) for n in lengths]
    outs = llm.generate(prompts, params, use_tqdm=False)
    assert [o.prompt for o in outs] == prompts
    assert [len(o.outputs[0].token_ids) for o in outs] == lengths
    assert all(o.outputs[0].finish_reason == "length" for o in outs)
    assert len({o.request_id for o in outs}) == 4
    # Request ids keep counting across calls.
    again = llm.generate(prompts[:1], params[:1], use_tqdm=False)
    assert again[0].request_id not in {o.request_id for o in outs}


def test_params_length_mismatch(llm):
    with pytest.raises(ValueError, match=r"^The lengths of prompts and params must be the same\.$"):
        llm.generate(["a", "b", "c"], [GREEDY, GREEDY], use_tqdm=False)
    assert not llm.llm_engine.has_unfinished_requests()


def test_empty_prompt_list(llm):
    assert llm.generate([], GREEDY, use_tqdm=False) == []


def test_default_sampling_params(llm):
    # No generation_config sampling fields: SamplingParams() -> 16 tokens.
    out = llm.generate("Tell me a story", use_tqdm=False)[0]
    assert len(out.outputs[0].token_ids) == 16 and out.outputs[0].finish_reason == "length"
    assert llm.get_default_sampling_params().max_tokens == 16


def test_generation_config_folder(model_dir, tmp_path):
    import json
    with open(tmp_path / "generation_config.json", "w") as f:
        json.dump({"temperature": 0.5, "max_new_tokens": 3, "top_k": 7}, f)
    llm = LLM(model=str(model_dir[0]), dtype="float32", max_model_len=64, generation_config=str(tmp_path))
    defaults = llm.get_default_sampling_params()
    assert (defaults.temperature, defaults.max_tokens, defaults.top_k) == (0.5, 3, 7)
    assert len(llm.generate("Hi", use_tqdm=False)[0].outputs[0].token_ids) == 3
    # A folder without the file (a typo) is an error, not generation without the defaults asked for.
    with pytest.raises(ValueError, match="no generation_config.json there"):
        LLM(model=str(model_dir[0]), generation_config=str(tmp_path / "missing"))


def test_generation_config_eos_ids_report_their_stop_reason(model_dir, tmp_path):
    """A generation_config.json eos_token_id list beyond the tokenizer's EOS (Gemma 3's <end_of_turn>, Llama 3.1's
    <|eom_id|>) stops generation with the id as stop_reason, as vLLM's (it adds them to stop_token_ids), also with
    generation_config="vllm"; the tokenizer's own EOS keeps stop_reason None; ignore_eos ignores both."""
    import json
    import shutil
    greedy = SamplingParams(temperature=0.0, max_tokens=6)
    base = LLM(model=str(model_dir[0]), dtype="float32", max_model_len=64)
    ids = base.generate("Hello", greedy, use_tqdm=False)[0].outputs[0].token_ids
    third = ids[2]
    assert 2 not in ids[:3]
    shutil.copytree(model_dir[0], tmp_path / "m")
    with open(tmp_path / "m" / "generation_config.json", "w") as f:
        json.dump({"eos_token_id": [2, third], "temperature": 0.5}, f)
    llm = LLM(model=str(tmp_path / "m"), dtype="float32", max_model_len=64)
    out = llm.generate("Hello", greedy, use_tqdm=False)[0].outputs[0]
    assert (list(out.token_ids), out.finish_reason, out.stop_reason) == (list(ids[:3]), "stop", third)
    # generation_config="vllm" drops the file's sampling defaults, not its EOS ids (vLLM's input processor reads
    # them whatever the setting): Llama 3's <|eot_id|> still ends a turn. They were dropped too.
    plain = LLM(model=str(tmp_path / "m"), dtype="float32", max_model_len=64, generation_config="vllm")
    assert plain.get_default_sampling_params().temperature == 1.0
    out = plain.generate("Hello", greedy, use_tqdm=False)[0].outputs[0]
    assert (list(out.token_ids), out.finish_reason, out.stop_reason) == (list(ids[:3]), "stop", third)
    del plain
    allowed = SamplingParams(temperature=0.0, max_tokens=3, allowed_token_ids=[2])
    out = llm.generate("Hello", allowed, use_tqdm=False)[0].outputs[0]
    assert (list(out.token_ids), out.finish_reason, out.stop_reason) == ([2], "stop", None)
    ignoring = SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True)
    assert llm.generate("Hello", ignoring, use_tqdm=False)[0].outputs[0].token_ids == ids


def test_override_generation_config(model_dir, tmp_path):
    """vLLM's override_generation_config: merged over the model's generation config, or alone with "vllm"."""
    import json

    from pagedllm.config import EngineArgs, FlexibleArgumentParser
    with open(tmp_path / "generation_config.json", "w") as f:
        json.dump({"temperature": 0.5, "max_new_tokens": 3, "top_k": 7}, f)
    llm = LLM(model=str(model_dir[0]), dtype="float32", max_model_len=64, generation_config=str(tmp_path),
              override_generation_config={"top_k": 2, "max_new_tokens": 4})
    defaults = llm.get_default_sampling_params()
    assert (defaults.temperature, defaults.max_tokens, defaults.top_k) == (0.5, 4, 2)
    assert len(llm.generate("Hi", use_tqdm=False)[0].outputs[0].token_ids) == 4
    # The command line's JSON, with generation_config="vllm": only the override.
    args = EngineArgs.add_cli_args(FlexibleArgumentParser()).parse_args(
        ["--model", str(model_dir[0]), "--dtype", "float32", "--max-model-len", "64", "--generation-config", "vllm",
         "--override-generation-config", '{"max_new_tokens": 2, "do_sample": false}'])
    llm = LLM(**vars(args))
    defaults = llm.get_default_sampling_params()
    assert (defaults.temperature, defaults.max_tokens, defaults.top_k) == (0.0, 2, 0)
    # A key nothing reads (vLLM's SamplingParams name instead of HF's) is an error, not a default dropped.
    with pytest.raises(ValueError, match="override_generation_config: max_tokens is not a sampling default"):
        LLM(model=str(model_dir[0]), override_generation_config={"max_tokens": 5})

def test_max_model_len_above_the_models_needs_vllms_env_var(model_dir, monkeypatch, caplog):
    """vLLM's rule: above max_position_embeddings (512 here) is an error naming VLLM_ALLOW_LONG_MAX_MODEL_LEN; with
    it set, a warning, and a prompt past position 512 runs (the rotary tables cover max_model_len)."""
    import transformers

    from pagedllm.config import EngineArgs, EngineConfig, ResolvedModel
    monkeypatch.delenv("VLLM_ALLOW_LONG_MAX_MODEL_LEN", raising=False)
    monkeypatch.delenv("PAGEDLLM_ALLOW_LONG_MAX_MODEL_LEN", raising=False)
    with pytest.raises(ValueError, match=r"^User-specified max_model_len \(600\) is greater than the derived "
                                         r"max_model_len \(max_position_embeddings=512 in model's config.json\)\. To "
                                         r"allow overriding this maximum, set the env var VLLM_ALLOW_LONG_MAX_MODEL_LEN=1"):
        LLM(model=str(model_dir[0]), max_model_len=600)
    monkeypatch.setenv("VLLM_ALLOW_LONG_MAX_MODEL_LEN", "1")
    with caplog.at_level("WARNING", logger="pagedllm"):
        llm = LLM(model=str(model_dir[0]), dtype="float32", max_model_len=600)
    assert "Make sure the value is correct and within the model context size" in caplog.text
    out = llm.generate({"prompt_token_ids": [5 + i % 90 for i in range(550)]}, GREEDY, use_tqdm=False)[0]
    assert len(out.outputs[0].token_ids) == 5 and llm.llm_engine.model_config.max_model_len == 600
    # A learned position table cannot grow: still an error for OPT.
    opt = transformers.OPTConfig(max_position_embeddings=512)
    with pytest.raises(ValueError, match="opt architecture has learned absolute position embeddings, 512 of them"):
        EngineConfig.build(EngineArgs(model="m", max_model_len=600, device="cpu"), ResolvedModel("m", opt, None))


def test_hf_overrides_dict_or_function(model_dir):
    """vLLM's hf_overrides: a dict of config fields, or a function of the config that returns it."""
    def longer(config):
        config.max_position_embeddings = 1024
        return config
    for overrides in ({"max_position_embeddings": 1024}, longer):
        llm = LLM(model=str(model_dir[0]), hf_overrides=overrides)
        assert llm.llm_engine.model_config.max_model_len == 1024
    with pytest.raises(ValueError, match="hf_overrides must be a dict of config fields or a function"):
        LLM(model=str(model_dir[0]), hf_overrides='{"max_position_embeddings": 1024}')
    # A function that changes the config in place and returns nothing: told so (it was "Model architectures [] are
    # not supported", from the None it returned).
    def no_return(config):
        config.max_position_embeddings = 1024
    with pytest.raises(ValueError, match=r"hf_overrides: the function must return the config .* got NoneType; a "
                                         r"function that changes the config in place ends with 'return config'"):
        LLM(model=str(model_dir[0]), hf_overrides=no_return)


def test_hf_overrides_of_a_nested_text_config(model_dir, tmp_path):
    """vLLM's {"text_config": {...}} (and --hf-overrides.text_config.KEY) updates the text config's keys. Before, it
    was set as a plain attribute nothing reads: an image-text Gemma 3 kept its window, a text model its length."""
    import transformers

    from pagedllm.config import EngineArgs
    from pagedllm.model.loader import resolve_model
    llm = LLM(model=str(model_dir[0]), hf_overrides={"text_config": {"max_position_embeddings": 1024}})
    assert llm.llm_engine.model_config.max_model_len == 1024          # a text model: its config is the text config
    transformers.Gemma3Config(text_config=dict(vocab_size=300, hidden_size=64, num_hidden_layers=2, sliding_window=8,
                                               num_attention_heads=4, num_key_value_heads=2, head_dim=16),
                              vision_config=dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2),
                              architectures=["Gemma3ForConditionalGeneration"]).save_pretrained(tmp_path)
    text = resolve_model(EngineArgs(model=str(tmp_path), hf_overrides={"text_config": {"sliding_window": 4}})).hf_config
    assert (text.architectures, text.sliding_window, text.num_hidden_layers) == (
        ["Gemma3ForConditionalGeneration"], 4, 2)


@pytest.mark.parametrize("overrides, rope", [
    ({"rope_theta": 1e6}, {"rope_type": "default", "rope_theta": 1e6}),      # the --hf-overrides help's example
    ({"rope_scaling": {"rope_type": "linear", "factor": 2.0}}, {"rope_type": "linear", "factor": 2.0,
                                                               "rope_theta": 10000.0})])
def test_hf_overrides_of_the_rope_reach_the_model(tokenizer, tmp_path, overrides, rope):
    """transformers 5 reads rope_theta / the scaling from rope_parameters: an override of either changes the model
    as it changes HF transformers' (it was set beside rope_parameters and ignored)."""
    import transformers
    base = save_tiny_llama(tmp_path, 512, initializer_range=0.5)    # sharp logits: the rope's effect shows
    ids = [1, 17, 301, 42, 99, 7, 250, 3, 64, 18]
    llm = LLM(model=str(tmp_path), skip_tokenizer_init=True, dtype="float32", max_model_len=64, hf_overrides=overrides)
    out = llm.generate({"prompt_token_ids": ids}, SamplingParams(max_tokens=1, temperature=0.0, logprobs=0),
                       use_tqdm=False)[0].outputs[0]
    hf = transformers.LlamaForCausalLM.from_pretrained(tmp_path, rope_parameters=rope).eval()
    ref = hf_logprobs(hf, ids)[-1]
    assert out.token_ids[0] == int(ref.argmax())
    assert out.logprobs[0][out.token_ids[0]].logprob == pytest.approx(float(ref.max()), abs=1e-4)
    assert (ref - hf_logprobs(base, ids)[-1]).abs().max() > 1e-2     # the override changes the model


def test_rope_scaling_stretches_the_derived_max_model_len(model_dir, monkeypatch):
    """Qwen's long-context recipe: a yarn scaling of factor 4 over 512 original positions allows max_model_len 2048
    (vLLM's rule), without VLLM_ALLOW_LONG_MAX_MODEL_LEN; the error above it names the scaled length."""
    for name in ("VLLM_ALLOW_LONG_MAX_MODEL_LEN", "PAGEDLLM_ALLOW_LONG_MAX_MODEL_LEN"):
        monkeypatch.delenv(name, raising=False)
    yarn = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 512}
    llm = LLM(model=str(model_dir[0]), dtype="float32", hf_overrides={"rope_scaling": yarn}, max_model_len=2048)
    assert llm.llm_engine.model_config.max_model_len == 2048
    out = llm.generate({"prompt_token_ids": [5 + i % 90 for i in range(600)]}, GREEDY, use_tqdm=False)[0]
    assert len(out.outputs[0].token_ids) == 5
    with pytest.raises(ValueError, match=r"greater than the derived max_model_len \(original_max_position_embeddings"
                                         r"=512 x yarn rope scaling factor 4\)"):
        LLM(model=str(model_dir[0]), hf_overrides={"rope_scaling": yarn}, max_model_len=4096)


def test_unknown_rope_type_is_an_error(model_dir):
    """A rope type the rotary layer cannot apply (a typo in hf_overrides, or a type transformers lacks) is vLLM's
    'Unknown RoPE scaling type' error; before, the model ran with the default rotation and the 2x length."""
    with pytest.raises(ValueError, match=r"Unknown RoPE scaling type 'yarm' .*supported: 'default', .*'yarn'"):
        LLM(model=str(model_dir[0]), hf_overrides={"rope_scaling": {"rope_type": "yarm", "factor": 2.0}})
    import transformers

    from pagedllm.config import EngineArgs, EngineConfig, ResolvedModel
    gemma = transformers.Gemma3TextConfig(rope_parameters={          # one dict per layer type: each is checked
        "sliding_attention": {"rope_type": "default", "rope_theta": 1e4},
        "full_attention": {"rope_type": "linaer", "factor": 8.0, "rope_theta": 1e6}})
    with pytest.raises(ValueError, match="Unknown RoPE scaling type 'linaer'"):
        EngineConfig.build(EngineArgs(model="m", device="cpu"), ResolvedModel("m", gemma, None))


def test_load_format_that_does_not_fit_the_files(model_dir):
    # The folder holds model.safetensors only: "pt" and "gguf" say what they looked for.
    with pytest.raises(ValueError, match="load_format='pt' but no \\*.bin or \\*.pt in"):
        LLM(model=str(model_dir[0]), load_format="pt", max_model_len=64)
    with pytest.raises(ValueError, match="load_format='gguf' needs a .gguf model file; .* is not one"):
        LLM(model=str(model_dir[0]), load_format="gguf", max_model_len=64)


def test_llm_engine_model_config_and_tokenizer(llm, tokenizer):
    # What vLLM scripts read from llm.llm_engine.
    engine = llm.llm_engine
    assert engine.get_tokenizer() is llm.get_tokenizer()
    assert engine.get_tokenizer().encode("Hi") == tokenizer.encode("Hi")
    mc = engine.model_config
    assert mc is not None and engine.get_model_config() == mc
    assert (mc.max_model_len, mc.dtype, mc.runner_type, mc.max_logprobs) == (256, torch.float32, "generate", 20)
    assert mc.get_vocab_size() == len(tokenizer) and mc.get_hidden_size() == 64 and mc.get_num_layers() == 2
    assert mc.hf_config.model_type == "llama" and mc.quantization is None
    # vLLM's LLM keeps them too: llm.model_config, llm.supported_tasks; and the engine's cache_config.
    assert llm.model_config == mc and llm.model_config.get_vocab_size() == len(tokenizer)
    assert llm.supported_tasks == ("generate",)
    # vLLM's KV-cache shape getters, as scripts size a cache with them.
    parallel = engine.vllm_config.parallel_config
    hf = mc.hf_config
    assert mc.architectures == ["LlamaForCausalLM"] and mc.get_num_layers(parallel) == 2
    assert mc.get_head_size() == hf.hidden_size // hf.num_attention_heads
    assert mc.get_num_kv_heads(parallel) == mc.get_total_num_kv_heads() == hf.num_key_value_heads
    assert mc.get_num_attention_heads(parallel) == hf.num_attention_heads
    tp4 = dataclasses.replace(parallel, tensor_parallel_size=4)      # 2 KV heads over 4 ranks: replicated, 1 each
    assert (mc.get_num_kv_heads(tp4), mc.get_num_attention_heads(tp4)) == (1, 1)
    cache = engine.cache_config
    assert cache == engine.vllm_config.cache_config and cache.block_size == 16 and cache.num_gpu_blocks > 0
    assert engine.vllm_config.speculative_config is None           # vLLM's None without speculative_config

def test_vllm_top_level_names_and_llm_engine_example(model_dir, tokenizer, hf):
    # `from vllm import EngineArgs, LLMEngine, ...` as vLLM's llm_engine_example.py writes it.
    import pagedllm
    for name in pagedllm.__all__:
        assert getattr(pagedllm, name) is not None, name
    from pagedllm import AsyncEngineArgs, AsyncLLMEngine, EngineArgs, LLMEngine
    from pagedllm.config import FlexibleArgumentParser
    assert AsyncLLMEngine.from_engine_args and AsyncEngineArgs(model="m").model == "m"
    args = EngineArgs.add_cli_args(FlexibleArgumentParser()).parse_args(
        ["--model", str(model_dir[0]), "--dtype", "float32", "--max-model-len", "64"])
    engine = LLMEngine.from_engine_args(EngineArgs.from_cli_args(args))
    ids = tokenizer.encode("To be or not to be,")
    engine.add_request("0", {"prompt_token_ids": ids}, GREEDY)
    finished = []
    while engine.has_unfinished_requests():
        finished += [out for out in engine.step() if out.finished]
    assert [list(out.outputs[0].token_ids) for out in finished] == [hf_greedy(hf, ids, 5)]

def test_empty_prompt_rejected(llm, hf, tokenizer):
    with pytest.raises(ValueError, match="The decoder prompt cannot be empty"):
        llm.generate("", GREEDY, use_tqdm=False)
    ids = tokenizer.encode("Still working?")
    out = llm.generate("Still working?", GREEDY, use_tqdm=False)[0]
    assert list(out.outputs[0].token_ids) == hf_greedy(hf, ids, 5)


# ---- outputs ---------------------------------------------------------------------------------------------------------

def test_output_fields_and_types(llm, tokenizer):
    # The one-token prompt has no prompt logprob to compute: still one (None) entry, as vLLM (it was None).
    outs = llm.generate(["Hello there", {"prompt_token_ids": [100, 200, 300]}, {"prompt_token_ids": [100]}],
                        SamplingParams(temperature=0.0, max_tokens=3, logprobs=2, prompt_logprobs=1),
                        use_tqdm=False)
    for out in outs:
        assert isinstance(out, RequestOutput)
        assert isinstance(out.request_id, str)
        assert isinstance(out.prompt_token_ids, list) and all(isinstance(t, int) for t in out.prompt_token_ids)
        assert out.finished is True
        assert isinstance(out.num_cached_tokens, int) and out.num_cached_tokens >= 0
        assert isinstance(out.prompt_logprobs, list) and out.prompt_logprobs[0] is None
        assert len(out.prompt_logprobs) == len(out.prompt_token_ids)
        assert all(isinstance(lp, Logprob) for d in out.prompt_logprobs[1:] for lp in d.values())
        assert len(out.outputs) == 1
        c = out.outputs[0]
        assert isinstance(c, CompletionOutput)
        assert c.index == 0
        assert isinstance(c.text, str) and len(c.text) > 0
        assert len(c.token_ids) == 3 and all(isinstance(t, int) for t in c.token_ids)
        assert isinstance(c.cumulative_logprob, float) and c.cumulative_logprob < 0
        assert isinstance(c.logprobs, list) and len(c.logprobs) == 3
        for tok, d in zip(c.token_ids, c.logprobs):
            assert tok in d and 1 <= len(d) <= 3
            lp = d[tok]
            assert isinstance(lp.logprob, float) and isinstance(lp.rank, int)
            assert lp.decoded_token == tokenizer.decode([tok])
        assert c.finish_reason == "length" and c.stop_reason is None and c.finished()
    assert outs[0].prompt == "Hello there" and outs[1].prompt is None


def test_num_cached_tokens_reports_prefix_cache_hits(llm):
    prompt = {"prompt_token_ids": list(range(1000, 1040))}     # 40 tokens: two full blocks of 16
    llm.reset_prefix_cache()
    first = llm.generate(prompt, GREEDY, use_tqdm=False)[0]
    second = llm.generate(prompt, GREEDY, use_tqdm=False)[0]
    assert first.num_cached_tokens == 0
    assert second.num_cached_tokens == 32
    assert second.outputs[0].token_ids == first.outputs[0].token_ids
    # vLLM's skip_reading_prefix_cache: the prompt is computed again although its prefix is cached.
    skipped = llm.generate(prompt, SamplingParams(temperature=0.0, max_tokens=5, skip_reading_prefix_cache=True),
                           use_tqdm=False)[0]
    assert skipped.num_cached_tokens == 0 and skipped.outputs[0].token_ids == first.outputs[0].token_ids
    with pytest.raises(ValueError, match="skip_reading_prefix_cache=False cannot be combined with prompt_logprobs"):
        SamplingParams(skip_reading_prefix_cache=False, prompt_logprobs=1)


def test_use_tqdm(llm, capsys):
    llm.generate(["a b c", "d e f"], GREEDY, use_tqdm=False)
    captured = capsys.readouterr()
    assert "Processed prompts" not in captured.err + captured.out
    llm.generate(["a b c", "d e f"], GREEDY, use_tqdm=True)
    captured = capsys.readouterr()
    assert "Adding requests" in captured.err + captured.out and "Processed prompts" in captured.err + captured.out
    # A callable builds both bars, as vLLM's (use_tqdm: bool | Callable[..., tqdm]): first over the prompts as they
    # are added (called with the prompts, desc="Adding requests"), then with total= as they finish.
    from tqdm import tqdm
    made = []

    def my_bar(*args, **kwargs):
        made.append(tqdm(*args, **kwargs))
        return made[-1]
    llm.generate(["a b c", "d e f"], GREEDY, use_tqdm=my_bar)
    assert [(bar.desc, bar.n, bar.total) for bar in made] == [("Adding requests", 2, 2), ("Processed prompts", 2, 2)]


def test_wrong_argument_types_are_named(llm):
    # A dict of sampling fields used to be iterated key by key ("Expected SamplingParams, got str").
    with pytest.raises(ValueError, match="sampling_params must be a SamplingParams or a list of them, got dict"):
        llm.generate("a", {"max_tokens": 2}, use_tqdm=False)
    with pytest.raises(ValueError, match="prompts must be a string, a prompt dict or a list of them, got NoneType"):
        llm.generate(None, GREEDY, use_tqdm=False)
    assert not llm.llm_engine.has_unfinished_requests()
    # Any iterable of prompts / params still goes (a tuple, a generator, a pandas Series, ...).
    outs = llm.generate((p for p in ("a", "b")), (sp for sp in (GREEDY, GREEDY)), use_tqdm=False)
    assert [o.prompt for o in outs] == ["a", "b"]


# ---- constructor errors ---------------------------------------------------------------------------------------------

def test_unknown_kwarg_is_named(model_dir):
    with pytest.raises((TypeError, ValueError), match="definitely_not_an_arg"):
        LLM(model=str(model_dir[0]), definitely_not_an_arg=3)


def test_max_model_len_human_readable_as_vllm(model_dir):
    # vLLM: k/m/g are decimal (32k = 32000), K/M/G binary (32K = 32768); '2k' used to be 2048 here.
    from pagedllm.config import parse_human_readable_int
    from pagedllm.entrypoints.cli import make_parser
    assert [parse_human_readable_int(v) for v in ("2048", "32k", "32K", "25.6k", "1M", 300)] == \
        [2048, 32000, 32768, 25600, 2 ** 20, 300]
    with pytest.raises(ValueError, match="did you mean 1.5k"):
        parse_human_readable_int("1.5K")
    assert make_parser().parse_args(["serve", "--max-model-len", "1k"]).max_model_len == 1000
    args = make_parser().parse_args(["serve", "--max-num-batched-tokens", "8k", "--kv-cache-memory-bytes", "1G"])
    assert (args.max_num_batched_tokens, args.kv_cache_memory_bytes) == (8000, 2 ** 30)
    with pytest.raises(SystemExit):
        make_parser().parse_args(["serve", "--max-model-len", "lots"])
    llm = LLM(model=str(model_dir[0]), max_model_len="0.3k")
    assert llm.llm_engine.model_config.max_model_len == 300
    with pytest.raises(ValueError, match="max_model_len must be positive, or -1 / 'auto'"):
        LLM(model=str(model_dir[0]), max_model_len=-2)

def test_pipeline_parallel_size_validated(model_dir):
    # pipeline_parallel_size=2 runs (tests/unit/test_pipeline_parallel.py); 0 is an error naming the field.
    with pytest.raises(ValueError, match="pipeline_parallel_size must be >= 1"):
        LLM(model=str(model_dir[0]), pipeline_parallel_size=0)


# ---- chat --------------------------------------------------------------------------------------------------------------

CONV_A = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi!"}]
CONV_B = [{"role": "user", "content": "What is 2+2?"}]


def test_chat_single_and_list(llm, tokenizer, hf):
    rendered = tokenizer.apply_chat_template(CONV_A, tokenize=False, add_generation_prompt=True)
    assert rendered.endswith("<|im_start|>assistant\n")
    ids = tokenizer.encode(rendered, add_special_tokens=False)
    single = llm.chat(CONV_A, GREEDY, use_tqdm=False)
    assert len(single) == 1
    assert single[0].prompt_token_ids == ids
    assert single[0].prompt == rendered
    assert list(single[0].outputs[0].token_ids) == hf_greedy(hf, ids, 5)

    both = llm.chat([CONV_B, CONV_A], GREEDY, use_tqdm=False)
    assert len(both) == 2
    assert both[0].prompt == tokenizer.apply_chat_template(CONV_B, tokenize=False, add_generation_prompt=True)
    assert both[1].prompt_token_ids == ids
    assert both[1].outputs[0].token_ids == single[0].outputs[0].token_ids


def test_chat_template_override_and_flags(llm, tokenizer):
    template = "{% for m in messages %}[{{ m['role'] }}]: {{ m['content'] }}\n{% endfor %}" \
               "{% if add_generation_prompt %}[assistant]:{% endif %}"
    out = llm.chat(CONV_B, GREEDY, use_tqdm=False, chat_template=template)[0]
    assert out.prompt == "[user]: What is 2+2?\n[assistant]:"
    assert out.prompt_token_ids == tokenizer.encode("[user]: What is 2+2?\n[assistant]:")
    no_gen = llm.chat(CONV_B, GREEDY, use_tqdm=False, chat_template=template, add_generation_prompt=False)[0]
    assert no_gen.prompt == "[user]: What is 2+2?\n"
    with pytest.raises(ValueError, match="continue_final_message"):
        llm.chat(CONV_B, GREEDY, use_tqdm=False, continue_final_message=True, add_generation_prompt=True)



def test_chat_openai_content_parts(llm):
    # OpenAI-style content (a list of parts), as vLLM's tutorials send it: rendered as the plain string would be.
    text = CONV_B[0]["content"]
    parts = [{"role": "user", "content": [{"type": "text", "text": text}]}]
    plain = llm.chat(CONV_B, GREEDY, use_tqdm=False)[0]
    out = llm.chat(parts, GREEDY, use_tqdm=False)[0]
    assert out.prompt_token_ids == plain.prompt_token_ids
    assert out.outputs[0].token_ids == plain.outputs[0].token_ids
    split = [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]
    assert "a\nb" in llm.chat(split, GREEDY, use_tqdm=False, chat_template_content_format="string")[0].prompt
    template = "{% for m in messages %}{% for p in m['content'] %}<{{ p['text'] }}>{% endfor %}{% endfor %}"
    out = llm.chat(CONV_B, GREEDY, use_tqdm=False, chat_template=template, chat_template_content_format="openai")
    assert out[0].prompt == f"<{text}>"
    image = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x/y.png"}}]}]
    # Refused before the URL is fetched (no network here).
    with pytest.raises(ValueError, match=r"^At most 0 image\(s\) may be provided in one prompt\."):
        llm.chat(image, GREEDY, use_tqdm=False)
    with pytest.raises(ValueError, match="chat_template_content_format must be one of"):
        llm.chat(CONV_B, GREEDY, use_tqdm=False, chat_template_content_format="bogus")


def test_chat_tool_call_arguments_reach_the_template_as_a_dict(llm):
    # OpenAI's assistant tool calls carry arguments as a JSON string; templates `| tojson` them as a dict (vLLM parses).
    template = ("{% for m in messages %}{% for c in m.get('tool_calls') or [] %}{{ c.function.name }}"
                "{{ c.function.arguments | tojson }}{% endfor %}{% endfor %}")
    call = {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": '{"city": "Paris"}'}}
    conversation = [{"role": "user", "content": "Weather?"},
                    {"role": "assistant", "content": "", "tool_calls": [call]},
                    {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}]
    out = llm.chat(conversation, GREEDY, use_tqdm=False, chat_template=template)[0]
    assert out.prompt == 'weather{"city": "Paris"}'
    assert call["function"]["arguments"] == '{"city": "Paris"}'     # the caller's message is left as it was


def test_chat_assistant_content_none_is_empty_content(llm):
    """OpenAI's tool-call turn has "content": None; vLLM hands the template "" ("string" format) or [] ("openai"),
    so the model's own template renders it (as the server did). Before, LLM.chat passed None on and SmolLM2's
    template failed: 'dict object' has no attribute 'content'."""
    call = {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": '{"city": "Paris"}'}}
    conversation = [{"role": "user", "content": "Weather?"},
                    {"role": "assistant", "content": None, "tool_calls": [call]},
                    {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}]
    out = llm.chat(conversation, GREEDY, use_tqdm=False)[0]
    assert "<|im_start|>assistant\n<|im_end|>\n<|im_start|>tool\nsunny<|im_end|>" in out.prompt
    shown = "{% for m in messages %}{{ m.content | tojson }};{% endfor %}"
    assert llm.chat(conversation, GREEDY, use_tqdm=False, chat_template=shown)[0].prompt == '"Weather?";"";"sunny";'
    parts = "{% for m in messages %}{{ m.content is string }}{{ m.content | length }};{% endfor %}"
    listed = llm.chat(conversation, GREEDY, use_tqdm=False, chat_template=parts, chat_template_content_format="openai")
    assert listed[0].prompt == "False1;False0;False1;"

# ---- beam search -----------------------------------------------------------------------------------------------------

def test_beam_search(llm, hf, tokenizer):
    prompt_ids = tokenizer.encode("The weather today is")
    n = len(prompt_ids)
    outs = llm.beam_search([{"prompt_token_ids": prompt_ids}, "A completely different prompt"],
                           BeamSearchParams(beam_width=2, max_tokens=5))
    assert len(outs) == 2 and all(isinstance(o, BeamSearchOutput) for o in outs)
    # vLLM's import paths of these types (from vllm.beam_search / vllm.logprobs import ...) name the same classes.
    from pagedllm.beam_search import BeamSearchOutput as at_vllms_path, BeamSearchSequence
    from pagedllm.logprobs import Logprob as logprob_at_vllms_path
    assert at_vllms_path is BeamSearchOutput and isinstance(outs[0].sequences[0], BeamSearchSequence)
    assert all(isinstance(lp, logprob_at_vllms_path) for lp in outs[0].sequences[0].logprobs[0].values())
    seqs = outs[0].sequences
    assert len(seqs) == 2
    assert seqs[0].tokens != seqs[1].tokens
    scores = []
    for seq in seqs:
        assert seq.tokens[:n] == prompt_ids and len(seq.tokens) == n + 5
        lp = hf_logprobs(hf, seq.tokens)
        expected = sum(float(lp[n - 1 + j, seq.tokens[n + j]]) for j in range(5))
        assert seq.cum_logprob == pytest.approx(expected, abs=1e-3)
        assert seq.text == tokenizer.decode(seq.tokens)
        scores.append(seq.cum_logprob / len(seq.tokens))
    assert scores[0] >= scores[1]
    assert len(outs[1].sequences) == 2 and outs[1].sequences[0].text.startswith("A completely different prompt")

    greedy = llm.beam_search([{"prompt_token_ids": prompt_ids}], BeamSearchParams(beam_width=1, max_tokens=5))
    assert len(greedy[0].sequences) == 1
    assert greedy[0].sequences[0].tokens == prompt_ids + hf_greedy(hf, prompt_ids, 5)
    # One step of width 2: the two most likely next tokens, best first.
    one = llm.beam_search([{"prompt_token_ids": prompt_ids}], BeamSearchParams(beam_width=2, max_tokens=1))
    top2 = hf_logprobs(hf, prompt_ids)[-1].topk(2).indices.tolist()
    assert [s.tokens[-1] for s in one[0].sequences] == top2


def test_beam_search_use_tqdm_and_lora_request_are_not_ignored(llm, capsys):
    prompt = {"prompt_token_ids": [1, 2, 3]}
    quiet = llm.beam_search([prompt], BeamSearchParams(beam_width=2, max_tokens=3))
    assert "Beam search" not in capsys.readouterr().err
    shown = llm.beam_search([prompt], BeamSearchParams(beam_width=2, max_tokens=3), use_tqdm=True)
    assert "Beam search" in capsys.readouterr().err
    assert [s.tokens for s in shown[0].sequences] == [s.tokens for s in quiet[0].sequences]
    # The adapter reaches every step (test_lora.py test_beam_search_with_an_adapter); without enable_lora, vLLM's
    # error.
    with pytest.raises(ValueError, match="but LoRA is not enabled!"):
        llm.beam_search([prompt], BeamSearchParams(beam_width=2, max_tokens=3), lora_request=object())


def test_beam_search_eos_candidates_complete_without_taking_a_beam(tmp_path):
    """vLLM's rule: every EOS candidate goes to the finished list and the best ``beam_width`` *other* candidates
    stay live. A scripted model (logits depend only on the last token) makes EOS the 2nd best first token."""
    import transformers
    V, EOS, T, A, B, D, E, F, G = 1000, 2, 10, 20, 30, 40, 50, 60, 70
    table = {T: {A: 12.0, EOS: 11.9, B: 11.0}, A: {D: 20.0}, B: {E: 20.0}, D: {F: 20.0}, E: {G: 20.0}}
    cfg = transformers.LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=4,
                                   num_key_value_heads=2, vocab_size=V, max_position_embeddings=128,
                                   tie_word_embeddings=False, eos_token_id=EOS)
    torch.manual_seed(0)
    hf = transformers.LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for layer in hf.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        hf.model.embed_tokens.weight.zero_()
        hf.lm_head.weight.zero_()
        for i, (src, row) in enumerate(table.items()):
            hf.model.embed_tokens.weight[src, i] = 1.0
            for dst, logit in row.items():
                hf.lm_head.weight[dst, i] = logit / 8.0    # the final RMSNorm scales a unit vector by sqrt(64)
    hf.save_pretrained(tmp_path)
    llm = LLM(model=str(tmp_path), skip_tokenizer_init=True, dtype="float32")
    prompt = [5, T]
    lp = {src: hf_logprobs(hf, [5, src])[-1] for src in table}

    def score(tokens, cum):   # cum_logprob / length, a trailing EOS not counted
        return float(cum) / (len(tokens) - (tokens[-1] == EOS))

    s_a, s_eos, s_b = (score(prompt + [t], lp[T][t]) for t in (A, EOS, B))
    assert s_a > s_eos > s_b      # by score, EOS is the 2nd candidate of step 1

    one = llm.beam_search([{"prompt_token_ids": prompt}], BeamSearchParams(beam_width=2, max_tokens=1))[0]
    assert [s.tokens for s in one.sequences] == [prompt + [A], prompt + [EOS]]
    assert [(s.finish_reason, s.stop_reason) for s in one.sequences] == [("length", None), ("stop", EOS)]

    # Three steps: B stayed live beside A, and B-E-G beats the early EOS beam.
    three = llm.beam_search([{"prompt_token_ids": prompt}], BeamSearchParams(beam_width=2, max_tokens=3))[0]
    assert [s.tokens for s in three.sequences] == [prompt + [A, D, F], prompt + [B, E, G]]
    for s, path in zip(three.sequences, ([T, A, D, F], [T, B, E, G])):
        assert s.cum_logprob == pytest.approx(sum(float(lp[a][b]) for a, b in zip(path, path[1:])), abs=1e-4)
        assert s.finish_reason == "length"
    assert score(three.sequences[1].tokens, three.sequences[1].cum_logprob) > s_eos

    width3 = llm.beam_search([{"prompt_token_ids": prompt}], BeamSearchParams(beam_width=3, max_tokens=1))[0]
    assert [s.tokens for s in width3.sequences] == [prompt + [A], prompt + [EOS], prompt + [B]]

    # ignore_eos: EOS is an ordinary token and its beam goes on.
    no_stop = llm.beam_search([{"prompt_token_ids": prompt}],
                              BeamSearchParams(beam_width=2, max_tokens=2, ignore_eos=True))[0]
    assert [s.tokens[:3] for s in no_stop.sequences] == [prompt + [A], prompt + [EOS]]
    assert all(len(s.tokens) == 4 and s.finish_reason == "length" for s in no_stop.sequences)


def test_generate_and_chat_tokenization_kwargs(tmp_path):
    """vLLM's LLM.generate / LLM.chat(tokenization_kwargs=...): add_special_tokens, truncation + max_length (keeps the
    last max_length tokens, as truncate_prompt_tokens), max_length alone a limit. On a word tokenizer that wraps a
    text in [CLS]=2 ... [SEP]=3 (w1..w5 are ids 5..9)."""
    save_tiny_llama(tmp_path, 104)
    save_word_tokenizer(tmp_path, "bert")
    llm = LLM(model=str(tmp_path), dtype="float32", max_model_len=64)
    one = SamplingParams(max_tokens=1, temperature=0.0)

    def ids(prompt, **kwargs):
        return llm.generate(prompt, one, use_tqdm=False, **kwargs)[0].prompt_token_ids
    text = "w1 w2 w3 w4 w5"
    assert ids(text) == [2, 5, 6, 7, 8, 9, 3]
    assert ids(text, tokenization_kwargs={"add_special_tokens": False}) == [5, 6, 7, 8, 9]
    assert ids(text, tokenization_kwargs={"truncation": True, "max_length": 3}) == [8, 9, 3]
    assert ids({"prompt_token_ids": [5, 6, 7, 8]}, tokenization_kwargs={"truncation": True, "max_length": 2}) == [7, 8]
    with pytest.raises(ValueError, match="more than tokenization_kwargs max_length=3"):
        ids(text, tokenization_kwargs={"max_length": 3})
    with pytest.raises(ValueError, match=r"tokenization_kwargs \['padding'\] are not supported"):
        ids(text, tokenization_kwargs={"padding": True})
    template = "{% for m in messages %}{{ m.content }} {% endfor %}"
    chat = [{"role": "user", "content": "w1 w2"}]

    def chat_ids(**kwargs):
        return llm.chat(chat, one, use_tqdm=False, chat_template=template, **kwargs)[0].prompt_token_ids
    assert chat_ids() == [5, 6]              # a chat prompt has no special tokens added, unless asked
    assert chat_ids(tokenization_kwargs={"add_special_tokens": True}) == [2, 5, 6, 3]
    assert chat_ids(tokenization_kwargs={"truncation": True, "max_length": 1}) == [6]


def test_beam_search_batches_prompts_and_keeps_special_tokens_in_text(llm, tokenizer, monkeypatch):
    """As vLLM's LLM.beam_search: each step is one generate() over every live beam of every prompt (at most
    concurrency_limit prompts at a time), and a sequence's text is tokenizer.decode(tokens), special tokens kept."""
    prompts = [{"prompt_token_ids": [1] + tokenizer.encode("The weather today is")}, "A completely different prompt",
               "Third"]
    params = BeamSearchParams(beam_width=2, max_tokens=3)
    calls = []
    generate = llm.generate
    monkeypatch.setattr(llm, "generate", lambda *a, **k: calls.append(len(a[0])) or generate(*a, **k))
    together = llm.beam_search(prompts, params)
    assert calls == [3, 6, 6]                       # one step: one call, every prompt's beams
    calls.clear()
    in_pairs = llm.beam_search(prompts, params, concurrency_limit=2)
    assert calls == [2, 4, 4, 1, 2, 2]
    assert [[s.tokens for s in o.sequences] for o in in_pairs] == [[s.tokens for s in o.sequences] for o in together]
    first = together[0].sequences[0]
    assert first.text == tokenizer.decode(first.tokens) and first.text.startswith("<|im_start|>The weather")
    with pytest.raises(ValueError, match="concurrency_limit must be a positive int, got 0"):
        llm.beam_search(prompts, params, concurrency_limit=0)


def test_flat_logprobs(llm):
    """vLLM's SamplingParams(flat_logprobs=True) (a TypeError before): logprobs and prompt_logprobs come as a
    FlatLogprobs, flat columns that read as the same list of {token_id: Logprob} (a prompt's first position: {})."""
    from pagedllm.logprobs import FlatLogprobs
    params = dict(temperature=0.0, max_tokens=4, logprobs=2, prompt_logprobs=1)
    plain = llm.generate("Hello my name is", SamplingParams(**params), use_tqdm=False)[0]
    flat = llm.generate("Hello my name is", SamplingParams(**params, flat_logprobs=True), use_tqdm=False)[0]
    sample, prompt = flat.outputs[0].logprobs, flat.prompt_logprobs
    assert isinstance(sample, FlatLogprobs) and isinstance(prompt, FlatLogprobs)
    assert list(sample) == plain.outputs[0].logprobs and len(sample) == 4
    assert list(prompt) == [{}] + plain.prompt_logprobs[1:]
    assert sample.start_indices == [0, 2, 4, 6] and sample.end_indices == [2, 4, 6, 8]
    assert sample.token_ids[0::2] == list(flat.outputs[0].token_ids)        # the sampled token first (greedy)
    assert list(sample[1:3]) == plain.outputs[0].logprobs[1:3] and sample[-1] == plain.outputs[0].logprobs[-1]
    with pytest.raises(TypeError, match="Cannot set logprobs in FlatLogprobs"):
        sample[0] = {}


def test_repetition_detection_ends_a_repeating_output(llm):
    """vLLM's SamplingParams(repetition_detection=...) (a TypeError before): the request ends once its output ends
    with min_count copies of one pattern (finish_reason "repetition", stop_reason "repetition_detected"), at the
    first token where that holds; the random model's greedy tail here repeats one token."""
    from pagedllm.sampling_params import RepetitionDetectionParams
    params = dict(temperature=0.0, max_tokens=60, ignore_eos=True)
    full = list(llm.generate("Hello my name is", SamplingParams(**params), use_tqdm=False)[0].outputs[0].token_ids)
    first = next(k for k in range(4, len(full) + 1) if len(set(full[k - 4:k])) == 1)
    out = llm.generate("Hello my name is", SamplingParams(
        **params, repetition_detection=RepetitionDetectionParams(max_pattern_size=3, min_count=4)),
        use_tqdm=False)[0].outputs[0]
    assert list(out.token_ids) == full[:first]
    assert (out.finish_reason, out.stop_reason) == ("repetition", "repetition_detected")
    assert RepetitionDetectionParams(2, 2, 2).found_in([5, 1, 2, 1, 2]) and \
        not RepetitionDetectionParams(2, 2, 2).found_in([1, 1, 1])        # a pattern of 1 is not looked for
    with pytest.raises(ValueError, match="min_count must be >= 2 to detect repetitive patterns"):
        SamplingParams(repetition_detection={"max_pattern_size": 2, "min_count": 1})
