"""Tensor and pipeline parallel on CUDA GPUs (skipped without CUDA). fp32 tiny random Llama: every multi-rank
engine gives the greedy tokens of one process with eager execution.

On one GPU (NCCL refuses two ranks on one device) these run:
* CUDA graphs vs eager in one process (the reference's own check);
* distributed_executor_backend="mp" at tensor_parallel_size=1: one rank in a worker process on cuda:0, its device
  set before any CUDA work, CUDA graphs captured there (eager and graphs);
* the test-only PAGEDLLM_TEST_SHARE_ONE_GPU=1: TP=2 and PP=2 with both ranks on cuda:0 over gloo (all-reduce and
  all-gather of CUDA tensors, the stage hand-off through host copies), each rank planning its KV cache on the
  shared device; it needs enforce_eager=True.
With 2 GPUs or more (NCCL, rank r on cuda:r): TP=2 and PP=2, eager and with CUDA graphs (decode graphs with the
NCCL all-reduces captured, piecewise graphs for prompt steps; PP's send/recv between the graphs), and TP=2 with the
opt-in one-shot all-reduce over symmetric memory; with 4: TP=2 x
PP=2; with Ray installed: TP=2 as Ray actors, one GPU each.
"""
import gc

import pytest
import torch

if not torch.cuda.is_available():
    pytest.skip("needs CUDA", allow_module_level=True)
pytest.importorskip("triton")

from pagedllm import LLM, SamplingParams  # noqa: E402

NUM_GPUS = torch.cuda.device_count()
needs_2_gpus = pytest.mark.skipif(NUM_GPUS < 2, reason="NCCL needs a GPU per rank: 2 GPUs")
VOCAB = 1024
PROMPTS = [[11, 12, 13, 14, 15],
           [101, 57, 300, 42, 42, 9, 871, 5, 5, 5, 77, 640, 13, 250, 999, 3, 18, 400, 21, 8, 66, 700, 31],
           [(7 * i + 3) % VOCAB for i in range(40)]]
GREEDY = SamplingParams(temperature=0.0, max_tokens=16, ignore_eos=True, detokenize=False)
MODES = pytest.mark.parametrize("enforce_eager", [True, False], ids=["eager", "cuda_graphs"])


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny random fp32 Llama (4 layers: 2 per pipeline stage; 4 query / 2 KV heads: 1 KV head per TP rank)."""
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(1234)
    model = LlamaForCausalLM(LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                                         num_attention_heads=4, num_key_value_heads=2, vocab_size=VOCAB,
                                         max_position_embeddings=512, tie_word_embeddings=False)).eval()
    with torch.no_grad():      # sharper logits: clear greedy margins, so fp32 summation order cannot flip a token
        model.lm_head.weight.mul_(8.0)
    path = tmp_path_factory.mktemp("tiny_llama_tp")
    model.save_pretrained(path)
    return str(path)


def _llm(model_dir: str, **kwargs) -> LLM:
    # 16-token steps: the 23- and 40-token prompts are prefilled in chunks next to decodes (piecewise graphs of 8
    # and 16 tokens; decode graphs of 1..8 requests).
    settings = dict(skip_tokenizer_init=True, dtype="float32", max_model_len=128, max_num_batched_tokens=16,
                    max_num_seqs=8, kv_cache_memory_gb=1.0)
    return LLM(model=model_dir, **{**settings, **kwargs})


def _tokens(llm: LLM) -> list[list[int]]:
    outs = llm.generate([{"prompt_token_ids": p} for p in PROMPTS], GREEDY, use_tqdm=False)
    return [list(o.outputs[0].token_ids) for o in outs]


def _run(model_dir: str, **kwargs) -> tuple[list[list[int]], dict]:
    """Greedy tokens and the executor's start-up facts (``rank_devices``, ``graphs``), the engine shut down."""
    llm = _llm(model_dir, **kwargs)
    try:
        executor = llm.llm_engine.core.executor
        info = executor.startup_info()
        return _tokens(llm), info
    finally:
        llm.llm_engine.core.executor.shutdown()
        del llm
        gc.collect()      # the one-process engines' tensors live in this process: gone before the next one profiles
        torch.cuda.empty_cache()


@pytest.fixture(scope="module")
def expected(model_dir):
    """One process, eager: the reference."""
    tokens, info = _run(model_dir, enforce_eager=True)
    assert info["graphs"].startswith("none")
    return tokens


def test_one_process_graphs_match_eager(model_dir, expected):
    tokens, info = _run(model_dir, enforce_eager=False)
    assert "decode batch sizes" in info["graphs"] and "piecewise" in info["graphs"], info["graphs"]
    assert tokens == expected


@MODES
def test_mp_executor_one_rank_on_cuda(model_dir, expected, enforce_eager):
    """The rank path of the multi-process executor on CUDA with one rank: a spawned worker that sets its device
    before any CUDA work and runs (and captures) the model there."""
    tokens, info = _run(model_dir, distributed_executor_backend="mp", enforce_eager=enforce_eager)
    assert info["rank_devices"] == ["cuda:0"]
    assert info["graphs"].startswith("none") == enforce_eager, info["graphs"]
    assert tokens == expected


@pytest.mark.parametrize("tp, pp", [(2, 1), (1, 2)], ids=["tp2", "pp2"])
def test_ranks_sharing_one_gpu_over_gloo(model_dir, expected, monkeypatch, tp, pp):
    """Test-only PAGEDLLM_TEST_SHARE_ONE_GPU: two ranks on cuda:0 over gloo, each planning its KV cache on the
    shared device (the engine takes the smaller block count), the same tokens as one process."""
    monkeypatch.setenv("PAGEDLLM_TEST_SHARE_ONE_GPU", "1")      # read here and by the spawned workers
    tokens, info = _run(model_dir, tensor_parallel_size=tp, pipeline_parallel_size=pp, enforce_eager=True)
    assert info["rank_devices"] == ["cuda:0", "cuda:0"]
    assert tokens == expected


def test_ranks_sharing_one_gpu_need_enforce_eager(model_dir, monkeypatch):
    monkeypatch.setenv("PAGEDLLM_TEST_SHARE_ONE_GPU", "1")
    with pytest.raises(ValueError, match=r"PAGEDLLM_TEST_SHARE_ONE_GPU=1 .* needs enforce_eager=True"):
        _llm(model_dir, tensor_parallel_size=2)


@needs_2_gpus
@MODES
@pytest.mark.parametrize("tp, pp", [(2, 1), (1, 2)], ids=["tp2", "pp2"])
def test_nccl_two_gpus_match_one_process(model_dir, expected, tp, pp, enforce_eager):
    """NCCL, rank r on cuda:r: TP=2 (row-parallel all-reduces, vocab-parallel embedding and LM-head gather) and
    PP=2 (hidden states and residual sent between stages on the GPU), eager and with CUDA graphs."""
    tokens, info = _run(model_dir, tensor_parallel_size=tp, pipeline_parallel_size=pp, enforce_eager=enforce_eager)
    assert info["rank_devices"] == ["cuda:0", "cuda:1"]
    assert info["graphs"].startswith("none") == enforce_eager, info["graphs"]
    assert tokens == expected


@needs_2_gpus
@MODES
def test_one_shot_all_reduce_two_gpus(model_dir, expected, monkeypatch, enforce_eager):
    """PAGEDLLM_CUSTOM_ALL_REDUCE_KIB (opt-in): TP=2's all-reduces of up to 64 KiB (every decode step's, the
    prompt chunks' of 16 tokens x 64 floats) through torch's one-shot kernel over symmetric memory, eager and
    captured in CUDA graphs: the same tokens as one process."""
    monkeypatch.setenv("PAGEDLLM_CUSTOM_ALL_REDUCE_KIB", "64")
    tokens, info = _run(model_dir, tensor_parallel_size=2, enforce_eager=enforce_eager)
    assert info["rank_devices"] == ["cuda:0", "cuda:1"]
    assert tokens == expected


@pytest.mark.skipif(NUM_GPUS < 4, reason="TP=2 x PP=2 needs 4 GPUs")
def test_nccl_tp2_pp2_four_gpus(model_dir, expected):
    tokens, info = _run(model_dir, tensor_parallel_size=2, pipeline_parallel_size=2, enforce_eager=False)
    assert info["rank_devices"] == ["cuda:0", "cuda:1", "cuda:2", "cuda:3"]
    assert tokens == expected


@needs_2_gpus
def test_ray_actors_one_gpu_each(model_dir, expected):
    """Ray gives each rank's actor one GPU and shows it only that one: each runs on its cuda:0, on distinct GPUs."""
    ray = pytest.importorskip("ray")
    started = not ray.is_initialized()
    if started:
        ray.init(num_gpus=2, include_dashboard=False, log_to_driver=False)
    try:
        llm = _llm(model_dir, tensor_parallel_size=2, distributed_executor_backend="ray")
        executor = llm.llm_engine.core.executor
        try:
            assert executor.local_ranks == [0, 1]
            assert len(set(executor.actor_gpu_ids)) == 2, executor.actor_gpu_ids
            assert executor.startup_info()["rank_devices"] == ["cuda:0", "cuda:0"]
            assert _tokens(llm) == expected
        finally:
            executor.shutdown()
    finally:
        if started:
            ray.shutdown()
