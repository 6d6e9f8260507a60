"""The engine on a CUDA GPU against HF transformers on the same GPU (skipped without CUDA).

* fp32, torch attention backend: greedy tokens identical to HF fp32.
* bf16, Triton kernels + CUDA graphs: every token we pick is HF fp32's argmax on our own sequence, unless HF's
  logits make it a near-tie (a bf16 rounding may legitimately flip such a choice; the paths may then diverge).
"""
import os

import pytest
import torch

if not torch.cuda.is_available():
    pytest.skip("needs CUDA", allow_module_level=True)
pytest.importorskip("triton")

from transformers import (ArceeConfig, AutoModelForCausalLM, Cohere2Config, CohereConfig,  # noqa: E402
                          Ernie4_5Config, Exaone4Config, Gemma2Config, Gemma3TextConfig, GemmaConfig, Glm4Config,
                          GraniteConfig, LlamaConfig, Phi3Config, Qwen2Config, SmolLM3Config)

from pagedllm import LLM, SamplingParams  # noqa: E402

NEW_TOKENS = 24
PROMPT_LENS = [3, 17, 40, 70, 130]
# A logit within this fraction of the top logit's size is a near-tie: bf16 keeps ~3 significant digits, and its
# rounding through every layer may flip such a choice.
NEAR_TIE = 0.02


def _config(arch: str):
    common = dict(hidden_size=256, intermediate_size=512, num_hidden_layers=3, num_attention_heads=8,
                  num_key_value_heads=2, head_dim=64, vocab_size=2048, max_position_embeddings=1024,
                  tie_word_embeddings=False)
    if arch == "gemma":      # GELU-tanh gating (no fused SiLU epilogue), 1 + w norms, scaled tied embeddings
        return GemmaConfig(**dict(common, tie_word_embeddings=True))
    if arch == "gemma2":     # soft-capped attention (the Triton kernels' SOFTCAP) and logits, sandwich norms, and
        # every other layer windowed (WINDOW; 32 tokens, so the prompts pass it)
        return Gemma2Config(**dict(common, tie_word_embeddings=True), query_pre_attn_scalar=48,
                            attn_logit_softcapping=5.0, final_logit_softcapping=8.0, sliding_window=32)
    if arch == "gemma3":     # Q/K norms; local (windowed, theta 10k) and global (theta 1M) layers: two rotary tables
        cfg = Gemma3TextConfig(**dict(common, tie_word_embeddings=True), query_pre_attn_scalar=48, sliding_window=32,
                               layer_types=["sliding_attention", "full_attention", "sliding_attention"])
        cfg.architectures = ["Gemma3ForCausalLM"]
        return cfg
    if arch == "granite":    # the multipliers of Granite 3
        return GraniteConfig(**common, embedding_multiplier=3.0, residual_multiplier=0.5, attention_multiplier=0.1,
                             logits_scaling=2.0)
    if arch == "phi3":       # fused checkpoint tensors; half of each head rotated (the Triton rotary's partial path)
        return Phi3Config(**common, partial_rotary_factor=0.5, pad_token_id=0, eos_token_id=2, bos_token_id=1)
    token_ids = dict(pad_token_id=0, eos_token_id=2, bos_token_id=1)      # the defaults lie past this vocabulary
    if arch == "smollm3":    # a NoPE layer between rotary ones: no rotary passed, so no rotation and no fused decode
        return SmolLM3Config(**common, **token_ids, no_rope_layers=[1, 0, 1])
    if arch == "glm4":       # half of each head rotated in interleaved pairs (Q/K rows reordered at load), sandwich
        return Glm4Config(**common, **token_ids)     # norms, a fused gate_up_proj tensor
    if arch == "cohere":     # bias-free LayerNorms, parallel residual, per-head Q/K LayerNorms, interleaved rotary
        return CohereConfig(**common, **token_ids, use_qk_norm=True, logit_scale=0.5)
    if arch == "cohere2":    # windowed layers (32 tokens) that alone rotate, a full-attention layer without positions
        return Cohere2Config(**common, **token_ids, logit_scale=0.5, sliding_window=32,
                             layer_types=["sliding_attention", "full_attention", "sliding_attention"])
    if arch == "exaone4":    # norms after each branch only, per-head Q/K norms, windowed rotary layers, global NoPE
        return Exaone4Config(**common, **token_ids, sliding_window=32,
                             layer_types=["sliding_attention", "full_attention", "sliding_attention"])
    if arch == "ernie4_5":   # interleaved rotary over the whole head (reordered at load), tied embeddings
        return Ernie4_5Config(**dict(common, tie_word_embeddings=True), **token_ids)
    if arch == "arcee":      # an MLP without gate, relu(up(x))^2: no gate_up layer, no SiLU epilogue
        return ArceeConfig(**common, **token_ids)
    return LlamaConfig(**common) if arch == "llama" else Qwen2Config(**common)


@pytest.fixture(scope="module", params=["llama", "qwen2", "gemma", "gemma2", "gemma3", "granite", "phi3", "smollm3",
                                        "glm4", "cohere", "cohere2", "exaone4", "ernie4_5", "arcee"])
def model_dir(request, tmp_path_factory):
    torch.manual_seed(1234)
    cfg = _config(request.param)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    # Sharper logits than the tiny default init, so greedy paths have clear margins.
    with torch.no_grad():
        model.lm_head.weight.mul_(8.0)
    path = tmp_path_factory.mktemp(request.param)
    model.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def prompts():
    g = torch.Generator().manual_seed(0)
    return [torch.randint(5, 2000, (n,), generator=g).tolist() for n in PROMPT_LENS]


@pytest.fixture(scope="module")
def hf_model(model_dir):
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).cuda().eval()
    yield model
    del model
    torch.cuda.empty_cache()


@pytest.fixture(scope="module")
def hf_greedy(hf_model, prompts):
    """HF fp32 greedy tokens."""
    out = []
    for p in prompts:
        ids = torch.tensor([p], device="cuda")
        seq = hf_model.generate(ids, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False,
                                eos_token_id=None, pad_token_id=0)
        out.append(seq[0, len(p):].tolist())
    return out


def _generate(model_dir, prompts, **kwargs):
    llm = LLM(model=model_dir, skip_tokenizer_init=True, max_model_len=1024, kv_cache_memory_gb=1.0,
              **kwargs)
    sp = SamplingParams(temperature=0.0, max_tokens=NEW_TOKENS, ignore_eos=True, detokenize=False)
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts], sp, use_tqdm=False)
    del llm
    torch.cuda.empty_cache()
    return [o.outputs[0].token_ids for o in outs]


def assert_greedy_under_hf(hf_model, prompts, outputs, near_tie: float = NEAR_TIE):
    """Every token we chose must be HF fp32's argmax at that point of *our* sequence, unless HF's own logits put
    our token within a near-tie of its top one. Teacher-forcing HF on our path checks every step, even after a
    legitimate bf16 flip has made the two greedy paths diverge. ``near_tie``: a wider bound for a path that rounds
    more than bf16 does (FP8 activations)."""
    checked = 0
    for p, ours in zip(prompts, outputs):
        seq = torch.tensor([p + list(ours)], device="cuda")
        with torch.no_grad():
            logits = hf_model(seq).logits[0, len(p) - 1:-1].float()      # logits that chose each of our tokens
        top = logits.max(dim=-1).values
        chosen = logits.gather(1, torch.tensor(list(ours), device="cuda")[:, None])[:, 0]
        gap = (top - chosen) / top.abs().clamp_min(1.0)
        worst = int(gap.argmax())
        assert float(gap.max()) <= near_tie, (
            f"token {worst} ({ours[worst]}) is {float(gap[worst]):.3f} (relative) below HF's argmax "
            f"{int(logits[worst].argmax())}")
        checked += len(ours)
    assert checked == NEW_TOKENS * len(prompts)


def test_fp32_torch_backend_matches_hf(model_dir, prompts, hf_greedy):
    got = _generate(model_dir, prompts, dtype="float32", attention_backend="torch", enforce_eager=True)
    assert got == hf_greedy


@pytest.mark.parametrize("enforce_eager", [True, False], ids=["eager", "cuda_graphs"])
def test_bf16_triton_greedy_agrees_with_hf(model_dir, prompts, hf_model, enforce_eager):
    got = _generate(model_dir, prompts, dtype="bfloat16", attention_backend="triton", enforce_eager=enforce_eager)
    assert_greedy_under_hf(hf_model, prompts, got)


def test_fused_rope_decode_gives_the_same_tokens(model_dir, prompts, hf_model, monkeypatch):
    """PAGEDLLM_DECODE_ROPE_FUSED=1 or 2 (rotary + KV store inside the decode kernel) changes no token against 0,
    with CUDA graphs (the decode steps replay the fused kernel) and eagerly; 3 (the new key from registers, equal
    up to rounding) stays HF-greedy."""
    for eager in (False, True):
        monkeypatch.setenv("PAGEDLLM_DECODE_ROPE_FUSED", "0")
        base = _generate(model_dir, prompts, dtype="bfloat16", enforce_eager=eager)
        for fused in ("1", "2"):
            monkeypatch.setenv("PAGEDLLM_DECODE_ROPE_FUSED", fused)
            assert _generate(model_dir, prompts, dtype="bfloat16", enforce_eager=eager) == base, fused
        monkeypatch.setenv("PAGEDLLM_DECODE_ROPE_FUSED", "3")
        assert_greedy_under_hf(hf_model, prompts, _generate(model_dir, prompts, dtype="bfloat16",
                                                            enforce_eager=eager))


def test_gate_up_silu_epilogue_gives_the_same_tokens(model_dir, prompts, monkeypatch):
    """PAGEDLLM_GATE_UP_SILU=1 (SiLU-and-mul in the gate_up skinny GEMM's epilogue, decode steps of up to 16
    requests) changes no token against 0, with CUDA graphs and eagerly; one request alone too (batch-1 steps: the
    FMA path of every tiny shape; larger batches of these shapes stay on cuBLAS)."""
    for eager in (False, True):
        for batch in (prompts[:1], prompts):
            monkeypatch.setenv("PAGEDLLM_GATE_UP_SILU", "0")
            base = _generate(model_dir, batch, dtype="bfloat16", enforce_eager=eager)
            monkeypatch.setenv("PAGEDLLM_GATE_UP_SILU", "1")
            assert _generate(model_dir, batch, dtype="bfloat16", enforce_eager=eager) == base


def test_bf16_chunked_prefill_and_prefix_cache(model_dir, prompts, hf_model):
    """Chunked prefill and prefix-cache hits (extend kernel over a cached prefix) stay HF-greedy too."""
    chunked = _generate(model_dir, prompts, dtype="bfloat16", max_num_batched_tokens=32)
    assert_greedy_under_hf(hf_model, prompts, chunked)
    shared = [prompts[-1][:96] + p for p in prompts]     # a common 96-token prefix -> cache hits
    llm = LLM(model=model_dir, skip_tokenizer_init=True, max_model_len=1024, kv_cache_memory_gb=1.0,
              dtype="bfloat16")
    sp = SamplingParams(temperature=0.0, max_tokens=NEW_TOKENS, ignore_eos=True, detokenize=False)
    llm.generate([{"prompt_token_ids": p} for p in shared], sp, use_tqdm=False)
    second = llm.generate([{"prompt_token_ids": p} for p in shared], sp, use_tqdm=False)
    assert all(o.num_cached_tokens >= 96 for o in second)
    assert_greedy_under_hf(hf_model, shared, [o.outputs[0].token_ids for o in second])


@pytest.mark.parametrize("shared", ["0", "1"])
def test_bf16_piecewise_graphs_carry_prompt_steps(model_dir, prompts, hf_model, shared, monkeypatch):
    """Steps with prompt tokens (here chunks of at most 64, next to running decodes) replay the piecewise graphs,
    attention in between; tokens stay HF-greedy and equal those of the eager engine where the two agree on
    every logit ordering. ``shared``: PAGEDLLM_PIECEWISE_SHARED_BUFFERS (every size's graphs reuse the pool blocks of
    the others' queries and attention outputs; steps of several sizes alternate here)."""
    monkeypatch.setenv("PAGEDLLM_PIECEWISE_SHARED_BUFFERS", shared)
    llm = LLM(model=model_dir, skip_tokenizer_init=True, max_model_len=1024, kv_cache_memory_gb=1.0,
              dtype="bfloat16", max_num_batched_tokens=64)
    runner = llm.llm_engine.runner.piecewise_runner
    assert runner is not None and runner.sizes[-1] == 64
    sizes = []
    run = runner.run
    runner.run = lambda batch, *stage: (sizes.append(batch.num_tokens), run(batch, *stage))[1]
    sp = SamplingParams(temperature=0.0, max_tokens=NEW_TOKENS, ignore_eos=True, detokenize=False)
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts], sp, use_tqdm=False)
    got = [o.outputs[0].token_ids for o in outs]
    del llm
    torch.cuda.empty_cache()
    # 260 prompt tokens in chunks of <= 64: at least five piecewise steps, some with decodes beside the chunk.
    assert len(sizes) >= 5 and max(sizes) <= 64
    assert_greedy_under_hf(hf_model, prompts, got)


@pytest.mark.parametrize("mode", ["PIECEWISE", "FULL_DECODE_ONLY", "O0"])
def test_bf16_cudagraph_modes_pick_the_graphs_and_keep_greedy(model_dir, prompts, hf_model, mode):
    """vLLM's compilation_config cudagraph_mode (and -O0): PIECEWISE captures no decode graphs, so pure-decode steps
    replay the piecewise graphs (the attention eager in between, decode kernels on decode-only metadata);
    FULL_DECODE_ONLY captures no piecewise graphs (prompt steps eager); O0 captures none. Tokens stay HF-greedy."""
    if not os.path.basename(model_dir).startswith("qwen2"):
        pytest.skip("graph kinds: one architecture is enough")
    kw = dict(optimization_level=0) if mode == "O0" else dict(compilation_config={"cudagraph_mode": mode})
    llm = LLM(model=model_dir, skip_tokenizer_init=True, max_model_len=1024, kv_cache_memory_gb=1.0,
              dtype="bfloat16", max_num_batched_tokens=64, **kw)
    runner = llm.llm_engine.runner
    assert (runner.graph_runner is not None) == (mode == "FULL_DECODE_ONLY")
    assert (runner.piecewise_runner is not None) == (mode == "PIECEWISE")
    decode_steps = []
    if mode == "PIECEWISE":
        run = runner.piecewise_runner.run
        runner.piecewise_runner.run = lambda batch, *stage: (decode_steps.append(batch.num_tokens),
                                                             run(batch, *stage))[1]
    sp = SamplingParams(temperature=0.0, max_tokens=NEW_TOKENS, ignore_eos=True, detokenize=False)
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts], sp, use_tqdm=False)
    got = [o.outputs[0].token_ids for o in outs]
    del llm, runner
    torch.cuda.empty_cache()
    if mode == "PIECEWISE":
        # Every step ran through the piecewise graphs: the prompt chunks (~5) and the decode-only steps after them.
        assert len(decode_steps) >= NEW_TOKENS
    assert_greedy_under_hf(hf_model, prompts, got)


def test_max_model_len_auto_on_the_profiled_budget(model_dir, prompts, hf_model):
    """max_model_len='auto' (5e77226) with the GPU's profiled budget: the model's 1,024 tokens fit, so it keeps
    them; with a KV cache of 20 blocks it is cut to 320 tokens, a longer prompt is refused, and tokens stay
    HF-greedy in both."""
    if not os.path.basename(model_dir).startswith("qwen2"):
        pytest.skip("one architecture is enough")
    sp = SamplingParams(temperature=0.0, max_tokens=NEW_TOKENS, ignore_eos=True, detokenize=False)
    block_bytes = 3 * 2 * 2 * 64 * 2 * 16        # layers x (K, V) x KV heads x head_dim x bf16 x block tokens
    for kw, expected in ((dict(gpu_memory_utilization=0.5), 1024), (dict(kv_cache_memory_bytes=20 * block_bytes), 320)):
        llm = LLM(model=model_dir, skip_tokenizer_init=True, max_model_len="auto", dtype="bfloat16", **kw)
        assert llm.llm_engine.model_config.max_model_len == expected
        if expected == 320:
            with pytest.raises(ValueError, match="maximum context length is 320 tokens"):
                llm.generate({"prompt_token_ids": [5] * 321}, sp, use_tqdm=False)
        got = [o.outputs[0].token_ids for o in llm.generate([{"prompt_token_ids": p} for p in prompts], sp,
                                                               use_tqdm=False)]
        del llm
        torch.cuda.empty_cache()
        assert_greedy_under_hf(hf_model, prompts, got)


def test_a_borrowed_view_reads_the_tensor_and_does_not_keep_its_memory():
    """cuda_graphs._borrowed (the shared piecewise buffers): same address, shape, strides and values as the tensor
    it views, and the tensor's memory goes back to the allocator while the view lives."""
    from pagedllm.worker.cuda_graphs import _borrowed
    base = torch.randn(1024, 8, 64, device="cuda", dtype=torch.bfloat16)
    t = base[:, 2:6]                                   # not contiguous
    view = _borrowed(t)
    assert (view.data_ptr(), view.shape, view.stride(), view.dtype) == (t.data_ptr(), t.shape, t.stride(), t.dtype)
    assert torch.equal(view, t)
    held = torch.cuda.memory_allocated()
    del base, t
    assert torch.cuda.memory_allocated() <= held - 1024 * 8 * 64 * 2
    del view


def test_bf16_cudagraph_capture_sizes_are_the_graphs_captured(model_dir, prompts, hf_model):
    """vLLM's cudagraph_capture_sizes: exactly those decode batch sizes (within max_num_seqs) and prompt-step token
    counts get graphs; 5 requests decode through the 8-row graph (padded), prompt steps of up to 64 tokens through
    the piecewise ones, larger steps eagerly; tokens stay HF-greedy."""
    llm = LLM(model=model_dir, skip_tokenizer_init=True, max_model_len=1024, kv_cache_memory_gb=1.0,
              dtype="bfloat16", max_num_batched_tokens=256, cudagraph_capture_sizes=[1, 2, 8, 64])
    engine_runner = llm.llm_engine.runner
    assert engine_runner.graph_runner.captured_sizes() == [1, 2, 8, 64]
    assert engine_runner.piecewise_runner.sizes == [1, 2, 8, 64]
    sp = SamplingParams(temperature=0.0, max_tokens=NEW_TOKENS, ignore_eos=True, detokenize=False)
    got = [o.outputs[0].token_ids for o in llm.generate([{"prompt_token_ids": p} for p in prompts], sp,
                                                           use_tqdm=False)]
    del llm
    torch.cuda.empty_cache()
    assert_greedy_under_hf(hf_model, prompts, got)


def test_bf16_weight_update_through_a_worker_extension_reaches_the_cuda_graphs(model_dir, prompts, tmp_path):
    """vLLM's RLHF flow on the GPU: collective_rpc('update_weight') loads new values by checkpoint name into the
    parameters the captured CUDA graphs read (in place: no recapture), and the next tokens are those of HF with the
    updated weights (near-ties aside). tests/unit/rlhf_worker_extension.py's class, importable from tests/unit."""
    import sys
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1] / "unit"))
    llm = LLM(model=model_dir, skip_tokenizer_init=True, max_model_len=1024, kv_cache_memory_gb=1.0,
              dtype="bfloat16", attention_backend="triton", worker_extension_cls="rlhf_worker_extension.WeightSync")
    sp = SamplingParams(temperature=0.0, max_tokens=NEW_TOKENS, ignore_eos=True, detokenize=False)
    before = [o.outputs[0].token_ids for o in llm.generate([{"prompt_token_ids": p} for p in prompts], sp,
                                                            use_tqdm=False)]
    updated_hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    torch.manual_seed(7)
    state = updated_hf.state_dict()
    head = "model.embed_tokens.weight" if updated_hf.config.tie_word_embeddings else "lm_head.weight"
    attn = next(n for n in ("model.layers.0.self_attn.k_proj.weight", "model.layers.0.self_attn.qkv_proj.weight")
                if n in state)                                            # Phi-3's checkpoint fuses q, k and v
    for name in ("model.layers.1.mlp.down_proj.weight", attn, head):
        new = state[name] + torch.randn_like(state[name]) * state[name].std() * 2
        with torch.no_grad():
            state[name].copy_(new)
        assert llm.collective_rpc("update_weight", args=(name, new)) == [None]
    llm.reset_prefix_cache()
    after = [o.outputs[0].token_ids for o in llm.generate([{"prompt_token_ids": p} for p in prompts], sp,
                                                           use_tqdm=False)]
    del llm
    torch.cuda.empty_cache()
    # The tied-embedding Gemma fixtures (the embedding x 8, scaled by sqrt(hidden) again on the way in) repeat their
    # last prompt token whatever the update, as HF does (checked on the CPU in session 22): there the HF check
    # below is what tells.
    assert after != before or updated_hf.config.tie_word_embeddings
    assert_greedy_under_hf(updated_hf.cuda(), prompts, after)


def test_bf16_raw_logits_mode_returns_the_models_logits(model_dir, prompts, hf_model):
    """logprobs_mode='raw_logits' on the GPU path: the values are HF's logits (to bf16's precision)."""
    llm = LLM(model=model_dir, skip_tokenizer_init=True, max_model_len=1024, kv_cache_memory_gb=1.0,
              dtype="bfloat16", attention_backend="triton", logprobs_mode="raw_logits")
    sp = SamplingParams(temperature=0.0, max_tokens=4, ignore_eos=True, detokenize=False, logprobs=3)
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts[:2]], sp, use_tqdm=False)
    del llm
    torch.cuda.empty_cache()
    for p, out in zip(prompts, outs):
        comp = out.outputs[0]
        seq = torch.tensor([p + list(comp.token_ids)], device="cuda")
        with torch.no_grad():
            logits = hf_model(seq).logits[0, len(p) - 1:-1].float()
        for j, entry in enumerate(comp.logprobs):
            scale = float(logits[j].abs().max())
            for tid, lp in entry.items():
                assert abs(lp.logprob - float(logits[j, tid])) <= 0.03 * scale, (j, tid)


@pytest.mark.parametrize("arch, quantization", [("qwen3_moe", None), ("mixtral", None), ("qwen3_moe", "fp8"),
                                                ("qwen3_moe", "awq"), ("qwen3_moe", "nf4"), ("mixtral", "int8")])
def test_fp32_moe_tokens_equal_hf(arch, quantization, prompts, tmp_path):
    """Mixtures of experts on the GPU: the fused Triton experts (routing on the device) captured in the decode and
    piecewise CUDA graphs, in fp32, give HF fp32's greedy tokens exactly (fp32 keeps the router's choices HF's; in
    bf16 a tiny random router's near-ties pick other experts, which no near-tie rule for the logits can tell from a
    bug). 32 experts of which a batch of 1 uses 2 (most blocks of the grouped launch idle). FP8 (per-tensor), AWQ
    (int4, group 128) and bitsandbytes (NF4: dequantized by each forward inside the graphs; int8: no graphs, as
    LLM.int8() finds its outliers on the host) experts, the attention dense: HF with the experts' dequantized
    weights. Checked on an H100 in session 22 (benchmarks/gpu_session22/moe_fp32_check.py): 48 of 48 tokens each
    (dense, FP8, AWQ)."""
    if quantization in ("nf4", "int8"):
        pytest.importorskip("bitsandbytes")
    import sys

    from safetensors.torch import load_file
    from transformers import MixtralConfig, Qwen3MoeConfig
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1] / "models"))
    from test_moe import _rewrite, experts_only_checkpoint
    common = dict(hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=8,
                  num_key_value_heads=2, vocab_size=2048, max_position_embeddings=1024, tie_word_embeddings=False)
    cfg = (Qwen3MoeConfig(**common, head_dim=64, num_experts=32, num_experts_per_tok=2, moe_intermediate_size=128,
                          norm_topk_prob=True) if arch == "qwen3_moe"
           else MixtralConfig(**common, num_local_experts=8, num_experts_per_tok=2))
    torch.manual_seed(1234)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    with torch.no_grad():
        model.lm_head.weight.mul_(8.0)
    model.save_pretrained(tmp_path / "dense")
    path = reference = tmp_path / "dense"
    if quantization is not None:
        qconfig, quant, dense = experts_only_checkpoint(load_file(next(path.glob("*.safetensors"))), quantization)
        reference = _rewrite(path, tmp_path / "reference", dense)
        path = _rewrite(path, tmp_path / "quantized", quant, qconfig)
    llm = LLM(model=str(path), skip_tokenizer_init=True, max_model_len=1024, kv_cache_memory_gb=1.0,
              dtype="float32", attention_backend="triton", max_num_batched_tokens=128)
    runner = llm.llm_engine.runner
    if quantization == "int8":       # LLM.int8() finds its outlier columns on the host: no graph can hold it
        assert runner.graph_runner is None and "8-bit" in runner.graphs_off_reason
    else:
        assert runner.graph_runner is not None and 1 in runner.graph_runner.captured_sizes()
        assert runner.piecewise_runner is not None
    sp = SamplingParams(temperature=0.0, max_tokens=NEW_TOKENS, ignore_eos=True, detokenize=False)
    got = [list(o.outputs[0].token_ids) for o in llm.generate([{"prompt_token_ids": p} for p in prompts], sp,
                                                                 use_tqdm=False)]
    alone = list(llm.generate([{"prompt_token_ids": prompts[0]}], sp, use_tqdm=False)[0].outputs[0].token_ids)
    del llm
    torch.cuda.empty_cache()
    hf = AutoModelForCausalLM.from_pretrained(reference, dtype=torch.float32).cuda().eval()
    want = [hf.generate(torch.tensor([p], device="cuda"), max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS,
                        do_sample=False, eos_token_id=None, pad_token_id=0)[0, len(p):].tolist() for p in prompts]
    assert got == want and alone == want[0]
