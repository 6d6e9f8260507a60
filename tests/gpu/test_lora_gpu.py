"""LoRA adapters on a CUDA GPU (skipped without CUDA): the adapter math is plain torch matmuls, written and tested on
the CPU (tests/unit/test_lora.py); here the same checks run on the GPU paths.

* CUDA graphs (the default) capture the adapters' deltas: the same tokens as the eager engine's, in one batch of
  mixed adapters (decode and piecewise graphs with padding rows) and after an adapter replaced another in its slot;
  steps without adapters replay the graphs captured without the deltas (cudagraph_specialize_lora, the default), or
  with them over an all-base mask when it is false.

* fp32, torch attention backend: greedy tokens equal HF fp32's with the adapter merged into the weights (W + s B A).
* bf16, the default (Triton) backend: two adapters and the base model in one batch give each request the tokens it
  gets alone with its adapter (same engine, same dtype) up to the first near-tie (another batch shape may round a
  near-tie the other way), and an adapter changes the base model's tokens.
"""
import sys
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():
    pytest.skip("needs CUDA", allow_module_level=True)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
from pagedllm import LLM, SamplingParams  # noqa: E402
from pagedllm.lora.request import LoRARequest  # noqa: E402
from test_lora import PROMPTS, build_model_and_adapters  # noqa: E402

GREEDY = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True)
NEAR_TIE = 0.05     # top-2 logprob gap under which a bf16 rounding may flip the greedy choice


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("lora_gpu")
    return root, build_model_and_adapters(root)[1]


def _llm(root, **kwargs) -> LLM:
    return LLM(str(root / "model"), **{**dict(enable_lora=True, max_lora_rank=8, max_loras=2, skip_tokenizer_init=True,
                                              kv_cache_memory_gb=1.0, max_model_len=128, seed=0), **kwargs})


def _tokens(outputs) -> list[list[int]]:
    return [list(o.outputs[0].token_ids) for o in outputs]


def test_fp32_torch_backend_equals_the_merged_model(setup):
    root, expected = setup
    llm = _llm(root, dtype="float32", attention_backend="torch")
    prompts = [{"prompt_token_ids": p} for p in PROMPTS]
    for name, lora in (("base", None), ("sql", LoRARequest("sql", 1, str(root / "sql"))),
                       ("chat", LoRARequest("chat", 2, str(root / "chat")))):
        assert _tokens(llm.generate(prompts, GREEDY, use_tqdm=False, lora_request=lora)) == expected[name], name
    del llm
    torch.cuda.empty_cache()


def test_bf16_mixed_batch_equals_each_adapter_alone(setup):
    root, _ = setup
    llm = _llm(root, dtype="bfloat16")
    sql, chat = LoRARequest("sql", 1, str(root / "sql")), LoRARequest("chat", 2, str(root / "chat"))
    prompts = [{"prompt_token_ids": p} for p in PROMPTS]
    params = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True, logprobs=2)
    alone = {name: llm.generate(prompts, params, use_tqdm=False, lora_request=lora)
             for name, lora in (("base", None), ("sql", sql), ("chat", chat))}
    assert _tokens(alone["sql"]) != _tokens(alone["base"]) and _tokens(alone["chat"]) != _tokens(alone["base"])
    mixed = llm.generate(prompts * 3, params, use_tqdm=False, lora_request=[sql, sql, None, None, chat, chat])
    reference = alone["sql"] + alone["base"] + alone["chat"]
    compared = 0
    for got, ref in zip(mixed, reference):
        for token, want, top in zip(got.outputs[0].token_ids, ref.outputs[0].token_ids, ref.outputs[0].logprobs):
            assert token == want, (_tokens([got]), _tokens([ref]))
            compared += 1
            gap = sorted((lp.logprob for lp in top.values()), reverse=True)
            if len(gap) > 1 and gap[0] - gap[1] < NEAR_TIE:
                break           # a near-tie: the rest may legitimately diverge
    assert compared >= len(mixed)
    del llm
    torch.cuda.empty_cache()


def _graph_vs_eager(root, max_loras: int, requests, specialize: bool = True) -> tuple[list, dict]:
    """fp32, default (Triton) backend: the graphed engine's tokens equal the eager engine's, and its logprobs agree
    (the same kernels; only the GEMMs' padded row counts differ). Returns the graphed outputs and its decode graphs'
    replay counts by "with the LoRA deltas"."""
    params = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True, logprobs=1)
    got = {}
    for eager in (True, False):
        graphs = {} if eager else {"compilation_config": {"cudagraph_specialize_lora": specialize}}
        llm = _llm(root, dtype="float32", max_loras=max_loras, enforce_eager=eager, **graphs)
        outs = [llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False, lora_request=lora)
                for prompts, lora in requests]
        runner = llm.llm_engine.runner
        assert (runner.graph_runner is None) == eager and (runner.piecewise_runner is None) == eager
        if not eager:
            replays = dict(runner.graph_runner.replays)
        got[eager] = [[(list(o.outputs[0].token_ids), [lp[t].logprob for t, lp in zip(o.outputs[0].token_ids,
                                                                                      o.outputs[0].logprobs)])
                       for o in out] for out in outs]
        del llm
        torch.cuda.empty_cache()
    for eager_out, graph_out in zip(got[True], got[False]):
        assert [t for t, _ in graph_out] == [t for t, _ in eager_out]
        for (_, a), (_, b) in zip(graph_out, eager_out):
            assert max(abs(x - y) for x, y in zip(a, b)) < 1e-3
    return got[False], replays


def test_cuda_graphs_mixed_batch_equals_eager(setup):
    root, _ = setup
    sql, chat = LoRARequest("sql", 1, str(root / "sql")), LoRARequest("chat", 2, str(root / "chat"))
    # 6 requests: a 6-row decode step replays the 8-row graph (2 padding rows); the prompts' step the piecewise ones.
    # The base model alone first: its steps replay the graphs captured without the deltas.
    mixed = (PROMPTS * 3, [sql, sql, None, None, chat, chat])
    (base, out), replays = _graph_vs_eager(root, 2, [(PROMPTS, None), mixed])
    tokens = [t for t, _ in out]
    assert tokens[0] != tokens[2] != tokens[4]      # the adapters change the tokens
    assert [t for t, _ in base] == tokens[2:4]      # the base requests of the mixed batch: the base model's tokens
    assert replays[True] >= 5 and replays[False] >= 5       # 6 tokens each: 5 decode steps per generate


def test_cuda_graphs_follow_an_adapter_loaded_into_a_used_slot(setup):
    """max_loras=1: each adapter is written into the one slot after the graphs were captured. One graph variant
    (cudagraph_specialize_lora false): the base model's steps run the deltas over an all-base mask."""
    root, _ = setup
    sql, chat = LoRARequest("sql", 1, str(root / "sql")), LoRARequest("chat", 2, str(root / "chat"))
    out, replays = _graph_vs_eager(root, 1, [(PROMPTS, None), (PROMPTS, sql), (PROMPTS, chat), (PROMPTS, sql)],
                                   specialize=False)
    assert list(replays) == [True] and replays[True] > 0
    tokens = [[t for t, _ in o] for o in out]
    assert tokens[1] == tokens[3] != tokens[0] and tokens[2] != tokens[1]


@pytest.mark.parametrize("prefill", ["expanded", "absorbed"])
def test_deepseek_adapters_under_cuda_graphs_equal_the_merged_model(tmp_path, monkeypatch, prefill):
    """DeepSeek V3's MLA with adapters (helper-85's, session 37; CPU-tested in tests/unit/test_lora_deepseek.py) on
    the GPU paths: kv_b_proj's per-head deltas on the absorbed query and value output inside the decode CUDA graphs
    (captured over the static adapter mask), the expanded prefill's latent delta between the piecewise graphs, the
    Triton backend, fp32: HF fp32's tokens with each adapter merged, two adapters and the base model in one batch."""
    from test_lora_deepseek import CONFIGS, assert_mixed_batch_tokens, two_adapters_and_base
    from test_lora_families import _save_model
    monkeypatch.setenv("PAGEDLLM_MLA_PREFILL", prefill)
    hf = _save_model(tmp_path / "model", CONFIGS["deepseek_v3"]())
    _, adapters, expected = two_adapters_and_base(tmp_path, hf)
    llm = _llm(tmp_path, dtype="float32", max_num_batched_tokens=16)
    runner = llm.llm_engine.runner
    assert runner.graph_runner is not None and runner.piecewise_runner is not None
    assert_mixed_batch_tokens(llm, adapters, expected)
