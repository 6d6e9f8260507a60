"""Greedy parity with HF transformers on tiny random models of every supported architecture (CPU, fp32).

Each architecture is built from a small config with a fixed seed, saved as safetensors, and loaded by both engines.
pagedllm must produce exactly HF's greedy tokens — plain batched, with chunked prefill, with prefix-cache hits and
under KV-cache preemption. The weights are drawn wider than HF's default init (std 0.02 gives near-uniform logits
and, with tied embeddings, the last token repeated), so the greedy continuations are varied and a wrong position or
mask shows up.

Cost: every architecture runs all six checks (~0.5 s an architecture on one core, HF references included; the
whole file ~21 s for 42 architectures, measured 2026-12-07). The engine-path checks (chunked, prefix, the two
preemptions: ~14 s of it) depend on an architecture only through its attention / positions; should the file need
cutting, every architecture keeps greedy + logprobs + one of them, and the full set stays on architectures covering
each attention / positional kind (sliding window, sinks, NoPE, partial and interleaved rotary, learned positions,
MLA, MoE). Not done: it would save ~7 s of a ~17-minute suite whose multi-process tests (a worker start-up ~1.7 s
each) cost far more.
"""
from __future__ import annotations

import pytest
import torch
import transformers

from pagedllm import LLM, SamplingParams

VOCAB = 1000
NEW_TOKENS = 24
PROMPT_LENS = (3, 17, 40, 70)

_COMMON = dict(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
               max_position_embeddings=512, bos_token_id=1, eos_token_id=2, pad_token_id=0)
_LLAMA_LIKE = dict(_COMMON, intermediate_size=128, num_key_value_heads=2, initializer_range=0.2)

# name -> (HF config class, kwargs, seed). Seeds are chosen so that HF's greedy top-1/top-2 logit margin stays
# above 2e-4 on every step of every prompt here (fp32 rounding differences are ~1e-6; greedy() checks > 1e-4).
ARCHS = {
    "llama": (transformers.LlamaConfig, dict(_LLAMA_LIKE, rope_theta=10000.0), 2),
    "mistral": (transformers.MistralConfig, dict(_LLAMA_LIKE, num_key_value_heads=1, sliding_window=None), 2),  # MQA
    "qwen2": (transformers.Qwen2Config, dict(_LLAMA_LIKE, tie_word_embeddings=True), 1),
    "qwen3": (transformers.Qwen3Config, dict(_LLAMA_LIKE, head_dim=32), 0),   # head_dim != hidden / heads
    # Gemma: GELU-tanh gating, norms of 1 + w (w drawn non-zero below), embeddings times sqrt(hidden), tied.
    "gemma": (transformers.GemmaConfig, dict(_LLAMA_LIKE, head_dim=32), 0),
    # Gemma 2: sandwich norms, query_pre_attn_scalar, attention and final logits soft-capped (small caps that bite
    # on these wide random weights; the real ones are 50 and 30).
    "gemma2": (transformers.Gemma2Config, dict(_LLAMA_LIKE, head_dim=32, query_pre_attn_scalar=24,
                                               attn_logit_softcapping=3.0, final_logit_softcapping=4.0,
                                               sliding_window=4096), 0),
    # ... and its every-other-layer window, 8 tokens here: windowed and full layers in one step.
    "gemma2-window": (transformers.Gemma2Config, dict(_LLAMA_LIKE, head_dim=32, query_pre_attn_scalar=24,
                                                      attn_logit_softcapping=3.0, final_logit_softcapping=4.0,
                                                      sliding_window=8), 0),
    # Gemma 3 text: per-head 1 + w Q/K norms, a local (windowed, its own rope theta) and a global layer.
    "gemma3": (transformers.Gemma3TextConfig, dict(_LLAMA_LIKE, head_dim=32, query_pre_attn_scalar=24, sliding_window=8,
                                                   layer_types=["sliding_attention", "full_attention"],
                                                   architectures=["Gemma3ForCausalLM"]), 0),
    # Mixtures of experts: 4 experts, 2 a token; Qwen2-MoE with its shared expert and gate, Qwen3-MoE renormalising
    # the top-k weights (and one dense layer, mlp_only_layers), Mixtral.
    "qwen2_moe": (transformers.Qwen2MoeConfig, dict(_LLAMA_LIKE, num_experts=4, num_experts_per_tok=2,
                                                    moe_intermediate_size=32, shared_expert_intermediate_size=48), 0),
    "qwen3_moe": (transformers.Qwen3MoeConfig, dict(_LLAMA_LIKE, num_experts=4, num_experts_per_tok=2,
                                                    moe_intermediate_size=32, norm_topk_prob=True, head_dim=32,
                                                    mlp_only_layers=[1]), 0),
    "mixtral": (transformers.MixtralConfig, dict(_LLAMA_LIKE, num_local_experts=4, num_experts_per_tok=2), 0),
    # OLMo 2: norms after each branch, Q/K norms over the whole projection.
    "olmo2": (transformers.Olmo2Config, dict(_LLAMA_LIKE), 0),
    # OLMo 3: a windowed layer (8 tokens) and a full one, each with its own rope theta.
    "olmo3": (transformers.Olmo3Config, dict(_LLAMA_LIKE, sliding_window=8,
                                             layer_types=["sliding_attention", "full_attention"],
                                             rope_parameters={"sliding_attention": {"rope_type": "default",
                                                                                    "rope_theta": 10000.0},
                                                              "full_attention": {"rope_type": "default",
                                                                                 "rope_theta": 500000.0}}), 0),
    # Granite 3's multipliers (embeddings, residual branches, attention scale, logits), at other values.
    "granite": (transformers.GraniteConfig, dict(_LLAMA_LIKE, embedding_multiplier=3.0, residual_multiplier=0.5,
                                                 attention_multiplier=0.2, logits_scaling=2.0), 0),
    # Phi-3: fused qkv_proj / gate_up_proj tensors in the checkpoint, half the head dims rotated (Phi-4-mini's 0.75).
    "phi3": (transformers.Phi3Config, dict(_LLAMA_LIKE, partial_rotary_factor=0.5), 0),
    # Phi-3.5's LongRoPE: the short factors (max_model_len capped at the original 128 positions; the prompts and
    # 24 new tokens stay within them).
    "phi3-longrope": (transformers.Phi3Config, dict(_LLAMA_LIKE, original_max_position_embeddings=128, rope_parameters={
        "rope_type": "longrope", "rope_theta": 10000.0, "partial_rotary_factor": 1.0,
        "short_factor": [1.0, 1.5, 2.0, 3.0, 1.0, 1.2, 1.1, 1.3], "long_factor": [4.0] * 8}), 0),
    # SmolLM3: a NoPE layer (no_rope_layers 0: attends without rotary positions) after a rotary one.
    "smollm3": (transformers.SmolLM3Config, dict(_LLAMA_LIKE, no_rope_layers=[1, 0]), 0),
    # GLM-4 (glm-4-9b-chat-hf) and GLM-4-0414: a fused gate_up_proj tensor, Q/K/V bias without an o_proj bias, half
    # of each head rotated in interleaved pairs; Glm4's norms on both branch outputs.
    "glm": (transformers.GlmConfig, dict(_LLAMA_LIKE, head_dim=32), 0),
    "glm4": (transformers.Glm4Config, dict(_LLAMA_LIKE, head_dim=32), 0),
    # Cohere (Command-R): bias-free LayerNorms, attention and MLP in parallel on one norm, interleaved rotary, logits
    # times logit_scale; with Command-R+'s per-head Q/K LayerNorms. Cohere 2 (Command-R7B): a windowed layer (8
    # tokens), the only one that rotates, and a full-attention layer without positions.
    "cohere": (transformers.CohereConfig, dict(_LLAMA_LIKE, logit_scale=0.5), 0),
    "cohere-qk-norm": (transformers.CohereConfig, dict(_LLAMA_LIKE, logit_scale=0.5, use_qk_norm=True), 0),
    "cohere2": (transformers.Cohere2Config, dict(_LLAMA_LIKE, logit_scale=0.5, sliding_window=8,
                                                 layer_types=["sliding_attention", "full_attention"]), 0),
    # Seed-OSS: biases on Q/K/V and, on their own switch, on o_proj.
    "seed_oss": (transformers.SeedOssConfig, dict(_LLAMA_LIKE, head_dim=32, attention_bias=True,
                                                  attention_out_bias=True), 0),
    # EXAONE 4: norms after each branch only, per-head Q/K norms, a windowed rotary layer and a global NoPE one.
    "exaone4": (transformers.Exaone4Config, dict(_LLAMA_LIKE, sliding_window=8,
                                                 layer_types=["sliding_attention", "full_attention"]), 0),
    # ERNIE 4.5: interleaved rotary over the whole head. Arcee: an MLP without gate, relu(up(x))^2.
    "ernie4_5": (transformers.Ernie4_5Config, dict(_LLAMA_LIKE, head_dim=32), 0),
    "arcee": (transformers.ArceeConfig, dict(_LLAMA_LIKE), 0),
    # GPT-2: Conv1D weights stored [in, out], q/k/v fused in c_attn, learned positions from row 0, GELU-tanh.
    "gpt2": (transformers.GPT2Config, dict(_COMMON, initializer_range=0.2, architectures=["GPT2LMHeadModel"]), 0),
    "opt": (transformers.OPTConfig, dict(_COMMON, ffn_dim=128, init_std=0.2), 3),
    # opt-350m's layout: post-LayerNorm, embeddings projected in/out of a narrower word_embed_proj_dim
    "opt-350m-style": (transformers.OPTConfig, dict(_COMMON, ffn_dim=128, init_std=0.2, do_layer_norm_before=False,
                                                    word_embed_proj_dim=32), 1),
    # GPT-NeoX (Pythia): q/k/v fused per head, a quarter of each head rotated, parallel residual with two
    # LayerNorms, GELU MLP, untied embed_out; and the sequential residual with half of each head rotated.
    "gpt_neox": (transformers.GPTNeoXConfig, dict(_COMMON, intermediate_size=128, rotary_pct=0.25,
                                                  initializer_range=0.2), 0),
    "gpt_neox-sequential": (transformers.GPTNeoXConfig, dict(_COMMON, intermediate_size=128, rotary_pct=0.5,
                                                             use_parallel_residual=False, initializer_range=0.2), 0),
    # Phi-2: one LayerNorm feeding attention and MLP in parallel, partial rotary, biases everywhere (the LM head's
    # too), gelu_new; with Q/K LayerNorms.
    "phi": (transformers.PhiConfig, dict(_COMMON, intermediate_size=128, partial_rotary_factor=0.5,
                                         initializer_range=0.2), 0),
    "phi-qk_layernorm": (transformers.PhiConfig, dict(_COMMON, intermediate_size=128, partial_rotary_factor=0.5,
                                                      qk_layernorm=True, initializer_range=0.2), 0),
    # StableLM 2: LayerNorms, a quarter of each head rotated, GQA, gated SiLU MLP; and stablelm-2-12b's q/k/v bias,
    # per-head Q/K LayerNorms and parallel residual.
    "stablelm": (transformers.StableLmConfig, dict(_LLAMA_LIKE), 0),
    "stablelm-12b-style": (transformers.StableLmConfig, dict(_LLAMA_LIKE, use_qkv_bias=True, qk_layernorm=True,
                                                             use_parallel_residual=True), 0),
    # Starcoder2: LayerNorms, biases, GQA, GELU-tanh c_fc / c_proj MLP, tied head, an 8-token sliding window.
    "starcoder2": (transformers.Starcoder2Config, dict(_LLAMA_LIKE, sliding_window=8), 0),
    # GPTBigCode (StarCoder / SantaCoder): learned positions, c_attn fused with one KV head (multi-query), or per head.
    "gpt_bigcode": (transformers.GPTBigCodeConfig, dict(_COMMON, initializer_range=0.2), 0),
    "gpt_bigcode-mha": (transformers.GPTBigCodeConfig, dict(_COMMON, initializer_range=0.2, multi_query=False), 0),
    # Falcon: the new decoder architecture (GQA groups in query_key_value, ln_attn / ln_mlp), falcon-7b's (multi-query,
    # one LayerNorm, parallel attention) and the sequential multi-head layout with biases.
    "falcon": (transformers.FalconConfig, dict(_COMMON, new_decoder_architecture=True, num_kv_heads=2,
                                               initializer_range=0.2), 0),
    "falcon-7b-style": (transformers.FalconConfig, dict(_COMMON, initializer_range=0.2), 0),
    # Falcon2-11B: the new decoder architecture with one LayerNorm for attention and MLP (num_ln_in_parallel_attn=1)
    "falcon2-11b-style": (transformers.FalconConfig, dict(_COMMON, new_decoder_architecture=True, num_kv_heads=2,
                                                          num_ln_in_parallel_attn=1, initializer_range=0.2), 0),
    "falcon-sequential": (transformers.FalconConfig, dict(_COMMON, multi_query=False, parallel_attn=False, bias=True,
                                                          initializer_range=0.2), 0),
}


class TinyModel:
    """A saved random HF model and its greedy references (computed once per prompt)."""

    def __init__(self, name: str, path: str):
        cls, kwargs, seed = ARCHS[name]
        config = cls(**kwargs)
        if "architectures" not in kwargs:
            config.architectures = [cls.__name__.replace("Config", "ForCausalLM")]   # e.g. OPTForCausalLM
        torch.manual_seed(seed)
        self.hf = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager",
                                                                dtype=torch.float32).eval()
        with torch.no_grad():       # HF starts norm weights at 1 (Gemma's at 0): draw them, so they are checked
            for name, param in self.hf.named_parameters():
                if "norm" in name or ".ln_" in name:      # GPT-2's, GPTBigCode's and Falcon's are ln_*
                    param.add_(torch.randn_like(param) * 0.3)
        self.hf.save_pretrained(path)
        self.hf.generation_config.eos_token_id = None   # HF's generate would stop at EOS; both sides ignore it
        self.path = path
        self._refs: dict[tuple[int, ...], list[int]] = {}

    @torch.no_grad()
    def greedy(self, prompt: list[int]) -> list[int]:
        key = tuple(prompt)
        if key not in self._refs:
            ids = torch.tensor([prompt])
            out = self.hf.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                   max_new_tokens=NEW_TOKENS, pad_token_id=0, output_logits=True,
                                   return_dict_in_generate=True)
            assert out.sequences.shape[1] == len(prompt) + NEW_TOKENS
            # A near-tie between the two best logits would make the comparison depend on rounding: change the seed.
            top2 = torch.cat(out.logits).topk(2, dim=-1).values
            assert (top2[:, 0] - top2[:, 1]).min() > 1e-4, "near-tie in HF's greedy choice; pick another seed"
            self._refs[key] = out.sequences[0, len(prompt):].tolist()
        return self._refs[key]

    def llm(self, **kwargs) -> LLM:
        return LLM(self.path, skip_tokenizer_init=True, dtype="float32", seed=0, **kwargs)


@pytest.fixture(scope="module", params=list(ARCHS))
def tiny(request, tmp_path_factory) -> TinyModel:
    return TinyModel(request.param, str(tmp_path_factory.mktemp(request.param)))


def _prompts(lengths, seed: int = 1) -> list[list[int]]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(3, VOCAB, (n,), generator=gen).tolist() for n in lengths]


def _generate(llm: LLM, prompts: list[list[int]]):
    params = SamplingParams(temperature=0.0, max_tokens=NEW_TOKENS, ignore_eos=True)
    return llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)


def _assert_matches_hf(tiny: TinyModel, prompts, outputs) -> None:
    for prompt, out in zip(prompts, outputs):
        assert out.prompt_token_ids == prompt
        assert out.outputs[0].token_ids == tiny.greedy(prompt), f"prompt of {len(prompt)} tokens"
        assert out.outputs[0].finish_reason == "length"


def test_greedy_matches_hf(tiny):
    prompts = _prompts(PROMPT_LENS)
    _assert_matches_hf(tiny, prompts, _generate(tiny.llm(), prompts))


def test_chunked_prefill_matches_hf(tiny):
    # A 16-token budget splits every prompt over 17 tokens into chunks, and mixes chunks with decodes.
    llm = tiny.llm(max_num_batched_tokens=16)
    prompts = _prompts(PROMPT_LENS)
    _assert_matches_hf(tiny, prompts, _generate(llm, prompts))


def test_prefix_cache_hits_match_hf(tiny):
    llm = tiny.llm(block_size=16, enable_prefix_caching=True)
    common = _prompts([48], seed=7)[0]
    tails = _prompts([5, 17, 30], seed=8)
    # common[:32] is exactly two full blocks: its second run is a full hit that must recompute the last token.
    prompts = [common[:32]] + [common + t for t in tails]
    first = _generate(llm, prompts)
    _assert_matches_hf(tiny, prompts, first)
    second = _generate(llm, prompts)
    _assert_matches_hf(tiny, prompts, second)
    assert all(out.num_cached_tokens > 0 for out in second), [o.num_cached_tokens for o in second]
    assert 16 <= second[0].num_cached_tokens < 32       # a full hit still recomputes the last prompt token
    assert all(out.num_cached_tokens >= 32 for out in second[1:])


@torch.no_grad()
def test_sample_logprobs_match_hf(tiny):
    """The logprobs of the greedy tokens (and the top 5) are HF's log-softmax of its logits: what a scale of the
    logits (Granite's logits_scaling) changes while greedy tokens stay the same."""
    (prompt,) = _prompts([17], seed=3)
    params = SamplingParams(temperature=0.0, max_tokens=4, ignore_eos=True, logprobs=5)
    (out,) = tiny.llm().generate([{"prompt_token_ids": prompt}], params, use_tqdm=False)
    ids = prompt + list(out.outputs[0].token_ids)
    ref = torch.log_softmax(tiny.hf(torch.tensor([ids])).logits[0, len(prompt) - 1:-1].float(), dim=-1)
    for row, entry in zip(ref, out.outputs[0].logprobs):
        assert set(row.topk(5).indices.tolist()) <= set(entry)
        for tid, lp in entry.items():
            assert lp.logprob == pytest.approx(float(row[tid]), abs=1e-4)


@pytest.mark.parametrize("prefix_caching", [False, True])
def test_preemption_matches_hf(tiny, prefix_caching):
    # 8 blocks of 16 tokens: the prompts + 24 new tokens need 2 + 3 + 4 + 6 = 15 blocks together, the longest
    # alone 6, so requests must be preempted and recomputed.
    llm = tiny.llm(block_size=16, num_gpu_blocks_override=8, max_model_len=128,
                   enable_prefix_caching=prefix_caching)
    prompts = _prompts(PROMPT_LENS)
    _assert_matches_hf(tiny, prompts, _generate(llm, prompts))
    assert llm.llm_engine.scheduler.num_preemptions > 0


def test_opt_checkpoint_without_model_prefix(tmp_path):
    # The original metaseq->HF conversions (e.g. facebook/opt-125m's own weights) name tensors "decoder.*".
    import shutil

    from safetensors.torch import load_file, save_file

    tiny = TinyModel("opt", str(tmp_path / "hf"))
    old = tmp_path / "old"
    old.mkdir()
    shutil.copy(tmp_path / "hf" / "config.json", old / "config.json")
    tensors = load_file(str(tmp_path / "hf" / "model.safetensors"))
    assert all(name.startswith("model.decoder.") for name in tensors)
    save_file({name.removeprefix("model."): t for name, t in tensors.items()}, str(old / "model.safetensors"))
    tiny.path = str(old)
    prompts = _prompts(PROMPT_LENS[:2])
    _assert_matches_hf(tiny, prompts, _generate(tiny.llm(), prompts))
