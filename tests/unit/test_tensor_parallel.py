"""Tensor parallel on the CPU (gloo, distributed_executor_backend="mp"): TP=2 gives the same greedy tokens as TP=1
on tiny random fp32 Llama (GQA, KV heads split), Llama with one KV head (replicated on both ranks), Qwen2 (QKV bias,
tied embeddings), Qwen3, OPT and ChatGLM (fused multi-query QKV and gate/up), with chunked prefill, and the same
embeddings on tiny BERT and XLM-RoBERTa encoders; a killed worker ends the engine with the rank named; deleting the
LLM ends the workers."""
from __future__ import annotations

import gc
import os
import signal
import socket
import time

import pytest
import torch

from pagedllm import LLM, SamplingParams
from pagedllm.config import EngineArgs
from pagedllm.engine.core import create_engine_config
from tests.unit.tiny_models import (ENCODER_PROMPTS, save_tiny_chatglm, save_tiny_classifier, save_tiny_encoder,
                                    save_tiny_llama)

VOCAB = 1024
PROMPTS = [[11, 12, 13, 14, 15],
           [101, 57, 300, 42, 42, 9, 871, 5, 5, 5, 77, 640, 13, 250, 999, 3, 18, 400, 21, 8, 66, 700, 31],
           [(7 * i + 3) % VOCAB for i in range(40)]]
GREEDY = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)


def _save_tiny(path, arch: str) -> None:
    """Llama with 2 KV heads (one per rank), Llama with 1 (replicated on both ranks), Qwen2 (QKV bias, tied
    embeddings), Qwen3 (per-head Q/K norms), Gemma (GELU gating, 1 + w norms, scaled embeddings), Granite (its
    multipliers), Phi-3 (fused q/k/v and gate/up tensors cut per rank, partial rotary), GLM-4-0414 and Cohere."""
    import transformers
    if arch == "llama":
        save_tiny_llama(path, VOCAB)
        return
    if arch == "chatglm":   # 2 multi-query KV groups for 4 heads: one group per rank
        save_tiny_chatglm(path, VOCAB)
        return
    if arch == "gpt2":    # OPT's decoder from a GPT-2 checkpoint: fused Conv1D c_attn cut per rank, GELU-tanh
        torch.manual_seed(1)
        transformers.GPT2LMHeadModel(transformers.GPT2Config(
            n_embd=64, n_layer=2, n_head=4, vocab_size=VOCAB, n_positions=512,
            initializer_range=0.2)).eval().save_pretrained(path)
        return
    if arch == "opt":     # biased q/k/v/out, ReLU fc1/fc2, learned positions (replicated), tied head
        torch.manual_seed(1)
        transformers.OPTForCausalLM(transformers.OPTConfig(
            hidden_size=64, ffn_dim=128, num_hidden_layers=2, num_attention_heads=4, vocab_size=VOCAB,
            max_position_embeddings=512, init_std=0.2)).eval().save_pretrained(path)
        return
    cfg_cls, model_cls, extra = {
        "llama_mqa": (transformers.LlamaConfig, transformers.LlamaForCausalLM, {}),
        "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM, {}),
        "qwen3": (transformers.Qwen3Config, transformers.Qwen3ForCausalLM, {}),
        "gemma": (transformers.GemmaConfig, transformers.GemmaForCausalLM, {"head_dim": 16}),   # tied, GELU
        "gemma2": (transformers.Gemma2Config, transformers.Gemma2ForCausalLM,                  # sandwich norms,
                   {"head_dim": 16, "attn_logit_softcapping": 3.0, "final_logit_softcapping": 4.0}),  # soft caps
        "phi3": (transformers.Phi3Config, transformers.Phi3ForCausalLM,                     # fused q/k/v, gate/up
                 {"partial_rotary_factor": 0.5, "pad_token_id": 0, "eos_token_id": 2}),
        "gemma3": (transformers.Gemma3TextConfig, transformers.Gemma3ForCausalLM,              # Q/K norms,
                   {"head_dim": 16, "sliding_window": 8,                                      # a local and
                    "layer_types": ["sliding_attention", "full_attention"]}),                # a global layer
        "qwen3_moe": (transformers.Qwen3MoeConfig, transformers.Qwen3MoeForCausalLM,            # each rank its
                      {"num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 32,  # slice of every
                       "norm_topk_prob": True}),                                             # expert
        "qwen2_moe": (transformers.Qwen2MoeConfig, transformers.Qwen2MoeForCausalLM,            # + shared expert
                      {"num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 32,
                       "shared_expert_intermediate_size": 48}),
        "granite": (transformers.GraniteConfig, transformers.GraniteForCausalLM,
                    {"embedding_multiplier": 3.0, "residual_multiplier": 0.5, "attention_multiplier": 0.2,
                     "logits_scaling": 2.0}),
        # GLM-4-0414: its fused gate_up_proj tensor cut per rank; interleaved partial rotary (Q/K rows reordered)
        "glm4": (transformers.Glm4Config, transformers.Glm4ForCausalLM, {"head_dim": 16, "pad_token_id": 0}),
        # Command-R+: per-head Q/K LayerNorm weights, each rank its heads' rows; parallel residual
        "cohere": (transformers.CohereConfig, transformers.CohereForCausalLM, {"use_qk_norm": True})}[arch]
    cfg = cfg_cls(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=1 if arch == "llama_mqa" else 2, vocab_size=VOCAB, max_position_embeddings=512,
                  tie_word_embeddings=arch in ("qwen2", "gemma", "gemma2", "gemma3"), **extra)
    torch.manual_seed(1)
    model = model_cls(cfg).eval()
    if arch == "cohere":       # norms drawn away from 1, so each head's Q/K norm weight differs from the others'
        with torch.no_grad():
            for name, param in model.named_parameters():
                if "norm" in name:
                    param.add_(torch.randn_like(param) * 0.3)
    model.save_pretrained(path)


def _tokens(llm: LLM) -> list[list[int]]:
    outs = llm.generate([{"prompt_token_ids": p} for p in PROMPTS], GREEDY, use_tqdm=False)
    return [list(o.outputs[0].token_ids) for o in outs]


def _llm(path, tp: int) -> LLM:
    # max_num_batched_tokens=16: the 23- and 40-token prompts are prefilled in chunks, mixed with decodes.
    return LLM(model=str(path), skip_tokenizer_init=True, dtype="float32", tensor_parallel_size=tp,
               max_num_batched_tokens=16, max_model_len=128, kv_cache_memory_gb=0.01)


@pytest.mark.parametrize("arch", ["llama", "llama_mqa", "qwen2", "qwen3", "gemma", "gemma2", "gemma3", "granite",
                                  "phi3", "qwen2_moe", "qwen3_moe", "opt", "gpt2", "chatglm", "glm4", "cohere"])
def test_tp2_greedy_tokens_match_tp1(tmp_path, arch):
    _save_tiny(tmp_path, arch)
    single = _llm(tmp_path, 1)
    expected = _tokens(single)
    del single
    llm = _llm(tmp_path, 2)
    assert llm.llm_engine.core.config.executor_backend == "mp"
    assert _tokens(llm) == expected
    procs = llm.llm_engine.core.executor._procs
    assert all(p.is_alive() for p in procs)
    # The ranks met at a store this process serves on a port it holds (not one found free and released).
    with socket.socket() as other, pytest.raises(OSError, match="in use"):
        other.bind(("127.0.0.1", llm.llm_engine.core.executor._store.port))
    del llm
    gc.collect()
    deadline = time.time() + 10
    while any(p.is_alive() for p in procs) and time.time() < deadline:
        time.sleep(0.1)
    assert not any(p.is_alive() for p in procs), "worker processes outlived the LLM"


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_vocabulary_the_ranks_do_not_divide(tmp_path, arch):
    """A vocabulary of odd size at TP=2 (GPT-2's own is 50,257): the last rank's block is padded and the logits cut
    back, as vLLM pads it; it was 'Vocabulary size (1021) must be divisible by tensor parallel size (2)'. Llama with
    its own head, GPT-2 with the head tied to the embedding; greedy tokens and logprobs equal TP=1's."""
    import transformers
    vocab = 1021
    if arch == "llama":
        save_tiny_llama(tmp_path, vocab)
    else:
        torch.manual_seed(1)
        transformers.GPT2LMHeadModel(transformers.GPT2Config(
            n_embd=64, n_layer=2, n_head=4, vocab_size=vocab, n_positions=512,
            initializer_range=0.2)).eval().save_pretrained(tmp_path)
    params = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True, logprobs=3)
    prompts = [{"prompt_token_ids": p[:20]} for p in PROMPTS] + [{"prompt_token_ids": [vocab - 1, vocab - 2, 5]}]

    def run(tp):
        llm = _llm(tmp_path, tp)
        try:
            outs = [o.outputs[0] for o in llm.generate(prompts, params, use_tqdm=False)]
            return [list(o.token_ids) for o in outs], [[sorted(d) for d in o.logprobs] for o in outs], \
                [[max(d.values(), key=lambda lp: lp.logprob).logprob for d in o.logprobs] for o in outs]
        finally:
            llm.llm_engine.core.shutdown()
    tokens, ids, best = run(1)
    tokens2, ids2, best2 = run(2)
    assert tokens2 == tokens and ids2 == ids
    flat = [lp for row in best for lp in row]
    assert [lp for row in best2 for lp in row] == pytest.approx(flat, abs=1e-4)   # no mass on the padded rows


def test_max_parallel_loading_workers_loads_the_ranks_in_waves(tmp_path):
    """vLLM's max_parallel_loading_workers=1 over two ranks: rank 1 builds (loads its weights) only after rank 0 has
    finished, and the tokens are TP=2's. Without it both build at once (one wave)."""
    _save_tiny(tmp_path, "llama")
    expected = _tokens(_llm(tmp_path, 1))

    def windows(llm):
        return llm.collective_rpc(lambda runner: (runner.load_window, runner.load_wave))
    llm = LLM(model=str(tmp_path), skip_tokenizer_init=True, dtype="float32", tensor_parallel_size=2,
              max_num_batched_tokens=16, max_model_len=128, kv_cache_memory_gb=0.01, max_parallel_loading_workers=1)
    (w0, wave0), (w1, wave1) = windows(llm)
    assert (tuple(wave0), tuple(wave1)) == ((0, 2), (1, 2))
    assert w1[0] >= w0[1]              # rank 1 began after rank 0 ended
    assert _tokens(llm) == expected
    llm.llm_engine.core.shutdown()
    llm = _llm(tmp_path, 2)
    assert [tuple(wave) for _, wave in windows(llm)] == [(0, 1), (0, 1)]
    llm.llm_engine.core.shutdown()
    with pytest.raises(ValueError, match="max_parallel_loading_workers must be a positive integer"):
        LLM(model=str(tmp_path), skip_tokenizer_init=True, max_parallel_loading_workers=0)


def _embeddings(path, tp: int) -> torch.Tensor:
    llm = LLM(model=str(path), skip_tokenizer_init=True, dtype="float32", tensor_parallel_size=tp)
    try:
        assert llm.llm_engine.config.runner_type == "pooling"
        outs = llm.embed([{"prompt_token_ids": p} for p in ENCODER_PROMPTS], use_tqdm=False)
        return torch.tensor([o.outputs.embedding for o in outs])
    finally:
        llm.llm_engine.core.shutdown()


@pytest.mark.parametrize("arch", ["bert", "xlm_roberta"])
def test_tp2_embeddings_match_tp1(tmp_path, arch):
    # Heads, the MLP and the word embedding split over the ranks; the position and token-type tables replicated
    # (XLM-R's single token-type row could not be split).
    save_tiny_encoder(tmp_path, arch)
    expected = _embeddings(tmp_path, 1)
    got = _embeddings(tmp_path, 2)
    assert got.shape == (len(ENCODER_PROMPTS), 64)
    assert torch.allclose(got, expected, atol=1e-5, rtol=0), (got - expected).abs().max()


def test_tp2_cross_encoder_scores_match_tp1(tmp_path):
    # A BERT cross-encoder: the encoder split over the ranks, its head replicated, the pair's token types sent with
    # the step to every rank.
    save_tiny_classifier(tmp_path, "bert", 1)
    scores = []
    for tp in (1, 2):
        llm = LLM(model=str(tmp_path), dtype="float32", tensor_parallel_size=tp)
        try:
            scores.append([s.outputs.score for s in llm.score("w1 w2 w3", ["w4 w5", "w1 w2", "w9 w8 w7 w6"],
                                                              use_tqdm=False)])
        finally:
            llm.llm_engine.core.shutdown()
    assert scores[1] == pytest.approx(scores[0], abs=1e-5) and len(set(scores[0])) == 3


def test_killed_worker_is_named_within_seconds(tmp_path):
    save_tiny_llama(tmp_path, VOCAB)
    llm = _llm(tmp_path, 2)
    procs = llm.llm_engine.core.executor._procs
    os.kill(procs[1].pid, signal.SIGKILL)
    procs[1].join(5)
    t0 = time.time()
    with pytest.raises(RuntimeError, match="rank 1 .*died"):
        llm.generate([{"prompt_token_ids": PROMPTS[1]}], GREEDY, use_tqdm=False)
    assert time.time() - t0 < 10
    deadline = time.time() + 10
    while procs[0].is_alive() and time.time() < deadline:
        time.sleep(0.1)
    assert not procs[0].is_alive(), "rank 0 was left running after rank 1 died"


def test_kv_cache_too_small_at_start_up_is_a_value_error_and_ends_the_workers(tmp_path):
    """A KV cache that cannot hold one max_model_len sequence, found by the ranks after they started: the same
    ValueError as with one rank in this process (it was WorkerDied, a RuntimeError carrying the rank's traceback in
    its message), and no worker process is left behind."""
    import multiprocessing
    save_tiny_llama(tmp_path, VOCAB)
    small = dict(model=str(tmp_path), skip_tokenizer_init=True, dtype="float32", max_model_len=512,
                 kv_cache_memory_gb=1e-6)
    with pytest.raises(ValueError, match=r"max seq len \(512\)") as one:
        LLM(**small)
    with pytest.raises(ValueError, match=r"max seq len \(512\).* \(worker rank [01]\)$") as two:
        LLM(**small, tensor_parallel_size=2)
    assert str(two.value).startswith(str(one.value)[:80]) and "Traceback" not in str(two.value)
    deadline = time.time() + 10
    while time.time() < deadline and any(p.name.startswith("pagedllm-worker")
                                         for p in multiprocessing.active_children()):
        time.sleep(0.1)
    assert not [p.name for p in multiprocessing.active_children() if p.name.startswith("pagedllm-worker")]


def test_failed_or_interrupted_start_ends_the_workers_at_once(tmp_path, monkeypatch):
    """A start that fails in the engine core after the ranks are up, or is interrupted (Ctrl-C) while they load:
    the workers end at once, while the exception is still held. They lived as long as its traceback did (it keeps
    the half-built core and its executor; a notebook keeps the last one in sys.last_traceback), with their memory."""
    import multiprocessing

    import pagedllm.engine.core as core_mod
    from pagedllm.worker.executor import MultiprocExecutor
    save_tiny_llama(tmp_path, VOCAB)

    def workers_gone() -> bool:
        deadline = time.time() + 10
        while time.time() < deadline:
            if not any(p.name.startswith("pagedllm-worker") for p in multiprocessing.active_children()):
                return True
            time.sleep(0.1)
        return False

    def refuse(*args, **kwargs):
        raise ValueError("scheduler refused")
    monkeypatch.setattr(core_mod, "Scheduler", refuse)      # fails after the KV cache is allocated on the ranks
    with pytest.raises(ValueError, match="scheduler refused") as failed:
        _llm(tmp_path, 2)
    assert workers_gone() and failed.tb is not None
    monkeypatch.undo()

    def interrupted(self):
        raise KeyboardInterrupt
    monkeypatch.setattr(MultiprocExecutor, "_collect_start", interrupted)     # Ctrl-C while waiting for the ranks
    with pytest.raises(KeyboardInterrupt) as stopped:
        _llm(tmp_path, 2)
    assert workers_gone() and stopped.tb is not None


def _config_error(tmp_path, **kw) -> str:
    with pytest.raises(ValueError) as info:
        create_engine_config(EngineArgs(model=str(tmp_path), skip_tokenizer_init=True, **kw))
    return str(info.value)


def test_indivisible_heads_and_unsupported_backends(tmp_path):
    save_tiny_llama(tmp_path, VOCAB)    # 4 heads, 2 KV heads
    assert "Total number of attention heads (4) must be divisible by tensor parallel size (3)" in \
        _config_error(tmp_path, tensor_parallel_size=3)
    assert "is not supported yet" in _config_error(tmp_path, tensor_parallel_size=2,
                                                     distributed_executor_backend="external_launcher")
    assert "needs tensor_parallel_size=1" in _config_error(tmp_path, tensor_parallel_size=2,
                                                           distributed_executor_backend="uni")


def test_vllm_multi_node_and_data_parallel_arguments_say_what_to_use(tmp_path, capsys):
    """vLLM's multi-node launch (--nnodes / --node-rank / --master-addr / --master-port) and its data-parallel
    arguments: still refused, now with what pagedllm offers instead (Ray across machines; one engine per replica
    behind a load balancer), once for the arguments that share it; before, only 'not supported yet'."""
    from pagedllm.entrypoints.cli import make_parser
    with pytest.raises(SystemExit):
        make_parser().parse_args(["serve", "m", "--nnodes", "2", "--node-rank", "0", "--master-addr", "10.0.0.1"])
    err = capsys.readouterr().err
    assert ("--nnodes, --node-rank, --master-addr: tensor / pipeline parallel ranks on several machines run on a Ray "
            "cluster here: distributed_executor_backend='ray' (--distributed-executor-backend ray)") in err
    assert err.count("run on a Ray cluster") == 1
    save_tiny_llama(tmp_path, VOCAB)
    with pytest.raises(TypeError, match="data_parallel_rank: data parallel is not supported: run one engine"):
        LLM(model=str(tmp_path), skip_tokenizer_init=True, data_parallel_rank=0)
    assert "as vLLM's external load balancing does" in _config_error(tmp_path, data_parallel_size=2)


def test_cuda_world_size_rules(monkeypatch):
    """On CUDA (faked here: only the configuration is built) every rank needs a GPU of its own; the Ray backend's
    ranks may sit on other machines (its executor checks the cluster's GPUs); the test-only
    PAGEDLLM_TEST_SHARE_ONE_GPU puts every rank on cuda:0 over gloo and so needs enforce_eager."""
    import importlib.util

    import transformers

    import pagedllm.config as cfg_mod
    from pagedllm.config import EngineConfig, ResolvedModel
    monkeypatch.setattr(cfg_mod, "_pick_device", lambda name: torch.device("cuda"))
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    hf = transformers.LlamaConfig(max_position_embeddings=4096)

    def build(**kw) -> EngineConfig:
        return EngineConfig.build(EngineArgs(model="m", **kw), ResolvedModel("m", hf, None))

    with pytest.raises(ValueError, match=r"World size \(2 = tensor_parallel_size 2 x pipeline_parallel_size 1\) is "
                                         r"larger than the number of available GPUs \(1\)"):
        build(tensor_parallel_size=2)
    if importlib.util.find_spec("ray") is not None:
        assert build(tensor_parallel_size=2, distributed_executor_backend="ray").world_size == 2
    monkeypatch.setenv("PAGEDLLM_TEST_SHARE_ONE_GPU", "1")
    with pytest.raises(ValueError, match=r"PAGEDLLM_TEST_SHARE_ONE_GPU=1 .* needs enforce_eager=True"):
        build(tensor_parallel_size=2)
    shared = build(tensor_parallel_size=2, pipeline_parallel_size=2, enforce_eager=True)
    assert (shared.world_size, shared.executor_backend) == (4, "mp")


def test_custom_all_reduce_is_refused_on_cpu_ranks_unless_disabled(tmp_path, monkeypatch):
    """PAGEDLLM_CUSTOM_ALL_REDUCE_KIB (the opt-in one-shot all-reduce over CUDA symmetric memory) on gloo CPU ranks:
    the engine does not start and says why; disable_custom_all_reduce=True (vLLM's flag) wins over it."""
    save_tiny_llama(tmp_path, VOCAB)
    single = _llm(tmp_path, 1)
    expected = _tokens(single)
    del single
    monkeypatch.setenv("PAGEDLLM_CUSTOM_ALL_REDUCE_KIB", "64")
    with pytest.raises(ValueError, match="PAGEDLLM_CUSTOM_ALL_REDUCE_KIB needs tensor-parallel ranks on their own "
                                         "CUDA devices"):
        _llm(tmp_path, 2)
    llm = LLM(model=str(tmp_path), skip_tokenizer_init=True, dtype="float32", tensor_parallel_size=2,
              max_num_batched_tokens=16, max_model_len=128, kv_cache_memory_gb=0.01, disable_custom_all_reduce=True)
    try:
        assert _tokens(llm) == expected
    finally:
        llm.llm_engine.core.shutdown()


def test_script_without_a_main_guard_is_told_to_add_one(tmp_path):
    """The workers are spawned and re-run the script's module-level code: an engine created there failed in every
    worker while it started (Python's bootstrapping error on stderr, the script's earlier work run again in each
    worker) and the caller got only "Worker rank 1 (pid ...) died (exit code 1)". Now: a ValueError before any
    worker starts, naming the line and the fix; the same call under the guard is not flagged."""
    import subprocess
    import sys
    save_tiny_llama(tmp_path, VOCAB)
    script = tmp_path / "unguarded.py"
    script.write_text("from pagedllm import LLM\n"
                      f"llm = LLM(model={str(tmp_path)!r}, skip_tokenizer_init=True, tensor_parallel_size=2,\n"
                      "          max_model_len=64, kv_cache_memory_gb=0.01)\n")
    run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 1
    last = run.stderr.strip().splitlines()[-1]
    assert last == (f"ValueError: {script}, line 2: tensor_parallel_size x pipeline_parallel_size = 2 starts a "
                    "worker process per rank with spawn, which re-runs the script's module-level code in each "
                    "worker; put the code that creates the engine under `if __name__ == \"__main__\":`.")
    guarded = tmp_path / "guarded.py"
    guarded.write_text("from pagedllm.worker.executor import unguarded_main_line\n"
                       "print('outside', unguarded_main_line())\n"
                       "if __name__ == '__main__':\n"
                       "    print('inside', unguarded_main_line())\n")
    run = subprocess.run([sys.executable, str(guarded)], capture_output=True, text=True, timeout=60)
    assert run.stdout.splitlines() == [f"outside ('{guarded}', 2)", "inside None"]
