"""DeepSeek-V2 / V3 (model/models/deepseek.py) against HF transformers fp32 on tiny random models: the greedy,
chunked-prefill, prefix-cache, logprob and preemption tests of test_models_vs_hf.py, run here on DeepSeek configs
(multi-head latent attention over the latent KV cache with kv_b_proj absorbed, with and without q_lora_rank,
v_head_dim below the key width, YaRN with its mscale, V2's greedy and group-limited routing, V3's sigmoid +
e_score_correction_bias noaux_tc routing, dense first layers, shared experts); the latent cache's block count; an
FP8 block-quantized V3 checkpoint; tensor parallel; refused configs."""
from __future__ import annotations

import json
from unittest import mock

import pytest
import torch
import transformers

import test_models_vs_hf as vs_hf
from pagedllm import LLM, SamplingParams
from pagedllm.kernels.quant.fp8 import FP8_DTYPE, FP8_MAX

_MLA = dict(vs_hf._COMMON, intermediate_size=128, moe_intermediate_size=32, num_key_value_heads=4,
            n_routed_experts=8, num_experts_per_tok=2, kv_lora_rank=32, qk_nope_head_dim=16, qk_rope_head_dim=8,
            v_head_dim=12, initializer_range=0.2)
# YaRN as DeepSeek ships it (rope_scaling in config.json), scaled down: factor 4 over 128 original positions.
_YARN = dict(rope_type="yarn", rope_theta=10000.0, factor=4.0, original_max_position_embeddings=128, beta_fast=32,
             beta_slow=1)

# name -> (HF config class, kwargs, seed), as test_models_vs_hf.ARCHS (seeds pass its near-tie check).
DEEPSEEK = {
    # V2-Lite's shape: Q straight from q_proj, greedy top-k, one dense layer, two shared experts, YaRN with equal
    # mscale / mscale_all_dim (the softmax scale grows, the rotary table does not).
    "deepseek_v2_lite": (transformers.DeepseekV2Config, dict(
        _MLA, q_lora_rank=None, topk_method="greedy", first_k_dense_replace=1, n_shared_experts=2,
        routed_scaling_factor=1.5, rope_parameters=dict(_YARN, mscale=0.707, mscale_all_dim=0.707)), 0),
    # DeepSeek-V2's: low-rank Q (q_a_proj / q_a_layernorm / q_b_proj), group-limited greedy routing (1 of 2
    # groups), every layer MoE, attention biases (q_a_proj, kv_a_proj_with_mqa: its rope rows reordered, o_proj).
    "deepseek_v2": (transformers.DeepseekV2Config, dict(
        _MLA, q_lora_rank=48, topk_method="group_limited_greedy", n_group=2, topk_group=1, first_k_dense_replace=0,
        n_shared_experts=1, routed_scaling_factor=2.0, attention_bias=True), 0),
    # V3 / R1's: sigmoid scores with a correction bias (drawn below), noaux_tc groups, renormalized top-k, a dense
    # first layer, YaRN with mscale != mscale_all_dim (its attention_factor scales the rotary table too).
    "deepseek_v3": (transformers.DeepseekV3Config, dict(
        _MLA, q_lora_rank=48, n_group=2, topk_group=1, first_k_dense_replace=1, n_shared_experts=1,
        norm_topk_prob=True, routed_scaling_factor=2.5, rope_parameters=dict(_YARN, mscale=1.0,
                                                                             mscale_all_dim=0.8)), 0),
}


class DeepseekTiny(vs_hf.TinyModel):
    """test_models_vs_hf's tiny model, with V3's e_score_correction_bias and the attention biases drawn too (HF
    starts them at 0)."""
    configs = DEEPSEEK       # name -> (HF config class, kwargs, seed)

    def __init__(self, name: str, path: str, **overrides):
        cls, kwargs, seed = self.configs[name]
        with mock.patch.dict(vs_hf.ARCHS, {name: (cls, dict(kwargs, **overrides), seed)}):
            super().__init__(name, path)
        with torch.no_grad():
            for module in self.hf.modules():
                if hasattr(module, "e_score_correction_bias"):
                    module.e_score_correction_bias.normal_(0.0, 0.3)
            for param_name, param in self.hf.named_parameters():
                if param_name.endswith(".bias"):
                    param.normal_(0.0, 0.3)
        self.hf.save_pretrained(path)


@pytest.fixture(scope="module", params=list(DEEPSEEK))
def tiny(request, tmp_path_factory) -> DeepseekTiny:
    return DeepseekTiny(request.param, str(tmp_path_factory.mktemp(request.param)))


test_greedy_matches_hf = vs_hf.test_greedy_matches_hf
test_chunked_prefill_matches_hf = vs_hf.test_chunked_prefill_matches_hf
test_prefix_cache_hits_match_hf = vs_hf.test_prefix_cache_hits_match_hf
test_sample_logprobs_match_hf = vs_hf.test_sample_logprobs_match_hf
test_preemption_matches_hf = vs_hf.test_preemption_matches_hf


@pytest.fixture
def attention_forms(monkeypatch) -> list[tuple]:
    """Each MLA attention call of a run that did not attend the whole step absorbed, in order: ``("decodes", rows)``
    (the step's decodes, absorbed over the latent cache) and ``("expanded", new tokens, keys)`` per prompt request of
    the expanded form (causal; keys: the whole sequence, or the new tokens alone when its cached context goes in
    chunks), ``("context", new tokens, keys)`` per chunk of cached context (non-causal)."""
    from pagedllm.attention.backends.torch_backend import TorchAttentionBackend
    events: list[tuple] = []
    varlen, decodes = TorchAttentionBackend.varlen_attention, TorchAttentionBackend.attend_decodes

    def record_varlen(self, q, k, v, cu_q, cu_k, *args, **kwargs):
        events.append(("expanded" if kwargs.get("causal", True) else "context",
                       [b - a for a, b in zip(cu_q.tolist(), cu_q.tolist()[1:])],
                       [b - a for a, b in zip(cu_k.tolist(), cu_k.tolist()[1:])]))
        return varlen(self, q, k, v, cu_q, cu_k, *args, **kwargs)

    def record_decodes(self, q, *args, **kwargs):
        events.append(("decodes", q.shape[0]))
        return decodes(self, q, *args, **kwargs)
    monkeypatch.setattr(TorchAttentionBackend, "varlen_attention", record_varlen)
    monkeypatch.setattr(TorchAttentionBackend, "attend_decodes", record_decodes)
    return events


def _greedy_with_logprobs_match_hf(tiny: DeepseekTiny, llm: LLM, prompts: list[list[int]]):
    """Greedy tokens HF's, and each one's logprob HF fp32's log-softmax (what the prompt's attention output feeds:
    the first token comes from it, the later ones from the cache it wrote)."""
    params = SamplingParams(temperature=0.0, max_tokens=vs_hf.NEW_TOKENS, ignore_eos=True, logprobs=0)
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
    vs_hf._assert_matches_hf(tiny, prompts, outs)
    for prompt, out in zip(prompts, outs):
        tokens = list(out.outputs[0].token_ids)
        with torch.no_grad():
            ref = torch.log_softmax(tiny.hf(torch.tensor([prompt + tokens])).logits[0, len(prompt) - 1:-1], dim=-1)
        got = torch.tensor([lp[t].logprob for t, lp in zip(tokens, out.outputs[0].logprobs)])
        torch.testing.assert_close(got, ref[torch.arange(len(tokens)), tokens], rtol=0, atol=1e-4)
    return outs


def test_expanded_prefill_chunks_prefix_hits_and_mixed_steps_match_hf(tiny, monkeypatch, attention_forms):
    """PAGEDLLM_MLA_PREFILL=expanded-always: every prompt request attends in the expanded form (kv_b_proj applied to
    the latent, keys [k_nope, k_pe] and values per head at qk_head_dim / v_head_dim), its cached context gathered
    from the latent cache and expanded with it. A 16-token budget cuts the prompts into chunks after context and
    mixes them with decodes (absorbed, in the same step); a second run of prompts sharing a 48-token prefix hits
    the prefix cache. Tokens and logprobs HF fp32's."""
    monkeypatch.setenv("PAGEDLLM_MLA_PREFILL", "expanded-always")
    llm = tiny.llm(max_num_batched_tokens=16, block_size=16, enable_prefix_caching=True)
    _greedy_with_logprobs_match_hf(tiny, llm, vs_hf._prompts(vs_hf.PROMPT_LENS))
    expanded = [e for e in attention_forms if e[0] == "expanded"]
    assert any(k > q for _, qs, ks in expanded for q, k in zip(qs, ks)), "no chunk after cached context expanded"
    mixed = [i for i, e in enumerate(attention_forms[:-1]) if e[0] == "decodes" and attention_forms[i + 1][0] ==
             "expanded"]
    assert mixed, "no step of decodes and prompt chunks together"
    common = vs_hf._prompts([48], seed=7)[0]
    prompts = [common + tail for tail in vs_hf._prompts([5, 30], seed=8)]
    _greedy_with_logprobs_match_hf(tiny, llm, prompts[:1])
    del attention_forms[:]
    second = _greedy_with_logprobs_match_hf(tiny, llm, prompts[1:])
    assert second[0].num_cached_tokens == 48
    # The hit's 30 new tokens attend over the 48 cached ones, expanded (the 16-token budget: two chunks).
    assert ("expanded", [16], [64]) in attention_forms and ("expanded", [14], [78]) in attention_forms


def test_expanded_prefill_default_rules_and_absorbed_switch(tmp_path, monkeypatch, attention_forms):
    """PAGEDLLM_MLA_PREFILL's default (expanded): a prompt without cached context attends expanded, and so does a
    prefix-cache hit whose new tokens are many against its cached context (30 after 48: 30 x 48 + 465 pairs at 44
    multiply-adds saved each, against 48 context tokens at 896 to expand), and a second chunk (72 new after 128).
    A hit with 5 new tokens after 48 stays absorbed (5 x 48 + 15 pairs: expanding would cost more). =absorbed:
    every step absorbed (session 35's form). HF's tokens each time; a value outside the three refused by name."""
    tiny = DeepseekTiny("deepseek_v2_lite", str(tmp_path))
    common = vs_hf._prompts([48], seed=7)[0]
    short, other_short, long_tail = vs_hf._prompts([5, 5, 30], seed=8)
    runs = [(common + short, [([53], [53])]), (common + long_tail, [([30], [78])]), (common + other_short, []),
            (vs_hf._prompts([200], seed=9)[0], [([128], [128]), ([72], [200])])]
    llm = tiny.llm(max_num_batched_tokens=128, block_size=16, enable_prefix_caching=True, max_model_len=256)
    for prompt, steps in runs:
        del attention_forms[:]
        vs_hf._assert_matches_hf(tiny, [prompt], vs_hf._generate(llm, [prompt]))
        assert attention_forms == [("expanded", *step) for step in steps for _ in range(2)], len(prompt)  # 2 layers
    monkeypatch.setenv("PAGEDLLM_MLA_PREFILL", "absorbed")
    del attention_forms[:]
    prompt = vs_hf._prompts([40], seed=5)[0]
    vs_hf._assert_matches_hf(tiny, [prompt], vs_hf._generate(tiny.llm(), [prompt]))
    assert attention_forms == []
    monkeypatch.setenv("PAGEDLLM_MLA_PREFILL", "latent")
    with pytest.raises(ValueError, match="PAGEDLLM_MLA_PREFILL must be one of expanded, absorbed, expanded-always; "
                                         "got 'latent'"):
        tiny.llm()


def test_warm_up_forms_run_the_absorbed_and_chunked_context_prefills(tmp_path, monkeypatch, attention_forms):
    """DeepseekV2ForCausalLM.warmup_forms, which the GPU warm-up runs a prompt under (model_runner): a prompt under
    the first attends absorbed (its Triton variants then build at start-up, not in the first request whose cached
    context keeps it absorbed); under the second, in the chunked-context form (causal with the LSE, then
    non-causal: the variants a step over the key bound launches); outside them, expanded again; none with
    PAGEDLLM_MLA_PREFILL=absorbed."""
    tiny = DeepseekTiny("deepseek_v2_lite", str(tmp_path))
    runner = tiny.llm().llm_engine.core.runner
    forms = runner.model.warmup_forms()
    assert len(forms) == 2
    del attention_forms[:]
    with forms[0]:
        runner._dummy_forward(lens=[20])
    assert attention_forms == []
    with forms[1]:
        runner._dummy_forward(lens=[20])
    assert attention_forms == [("expanded", [20], [20]), ("context", [20], [20])] * 2          # 2 layers
    del attention_forms[:]
    runner._dummy_forward(lens=[20])
    assert attention_forms == [("expanded", [20], [20])] * 2
    monkeypatch.setenv("PAGEDLLM_MLA_PREFILL", "absorbed")
    assert tiny.llm().llm_engine.core.runner.model.warmup_forms() == []


def test_prefill_plan_chunks_the_context_over_the_key_bound():
    """The GPU's bound (MLAttention._prefill_plan passes max_num_batched_tokens there: what the start-up's memory
    profile expanded): a step whose prompt sequences hold more tokens expands its new tokens' keys on their own and
    its cached context in chunks of at most that many keys (the last one shorter); under the bound, or without one
    (the CPU), the plan gathers every token of each prompt request's sequence from its cache slots in one pass
    (decodes before it left out)."""
    from types import SimpleNamespace

    import numpy as np

    from pagedllm.attention.backends.base import CommonAttentionMetadata
    from pagedllm.model.models.deepseek import _PrefillPlan
    # a decode, then a chunk of 72 new tokens after 128 cached ones
    starts, lens = np.array([0, 1, 73], dtype=np.int32), np.array([40, 200], dtype=np.int32)
    tables = np.array([[5, 6, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], list(range(20, 33))], dtype=np.int32)
    common = CommonAttentionMetadata(
        query_start_loc=torch.from_numpy(starts), seq_lens=torch.from_numpy(lens),
        block_tables=torch.from_numpy(tables),
        slot_mapping=torch.zeros(73, dtype=torch.long), max_query_len=72, max_seq_len=200, num_decodes=1,
        query_start_loc_cpu=starts, seq_lens_cpu=lens, block_tables_cpu=tables)
    layer = SimpleNamespace(prefill_mode="expanded", pair_saving=44, context_token_cost=896)
    plan = _PrefillPlan.make(common, 16, 50, layer)
    assert plan.new_keys.cu_k_cpu == [0, 72] and torch.equal(plan.new_keys.slots, torch.arange(448, 520))
    assert [c.cu_k_cpu for c in plan.context_chunks] == [[0, 50], [0, 50], [0, 28]]
    assert torch.equal(torch.cat([c.slots for c in plan.context_chunks]), torch.arange(320, 448))
    for cap in (None, 200):
        plan = _PrefillPlan.make(common, 16, cap, layer)
        assert (plan.num_decodes, plan.cu_q_cpu, plan.cu_k_cpu, plan.max_q, plan.max_k) == (1, [0, 72], [0, 200], 72,
                                                                                           200)
        assert torch.equal(plan.slots, torch.arange(20 * 16, 20 * 16 + 200)) and plan.context_chunks is None


def test_context_expanded_in_bounded_chunks_matches_hf(tiny, monkeypatch, attention_forms):
    """The expanded prefill over more keys than its bound (the GPU's max_num_batched_tokens; set to 8 here, the CPU
    has none): each prompt request's new tokens attend to themselves (causal) and to its cached context expanded 8
    keys at a time (non-causal), merged by log-sum-exp. Chunked prefill with a 16-token budget (prompts of 40 and
    70 tokens: their second chunk, 16 new after 16 cached, goes so), then prefix-cache hits under a 64-token budget
    (30 new tokens after 48 cached: 6 context chunks). Tokens and logprobs HF fp32's."""
    from pagedllm.model.models.deepseek import MLAttention
    monkeypatch.setattr(MLAttention, "context_chunk_keys", 8)
    llm = tiny.llm(max_num_batched_tokens=16, block_size=16, enable_prefix_caching=True)
    _greedy_with_logprobs_match_hf(tiny, llm, vs_hf._prompts([40, 70]))
    contexts = [e for e in attention_forms if e[0] == "context"]
    assert contexts and all(sum(ks) <= 8 for _, _, ks in contexts), attention_forms
    common = vs_hf._prompts([48], seed=7)[0]
    prompts = [common + tail for tail in vs_hf._prompts([5, 30], seed=8)]
    llm = tiny.llm(max_num_batched_tokens=64, block_size=16, enable_prefix_caching=True)
    _greedy_with_logprobs_match_hf(tiny, llm, prompts[:1])
    del attention_forms[:]
    second = _greedy_with_logprobs_match_hf(tiny, llm, prompts[1:])
    assert second[0].num_cached_tokens == 48
    assert attention_forms[:7] == [("expanded", [30], [30])] + [("context", [30], [8])] * 6   # the first layer


def test_piecewise_graph_split_runs_mla_attention_between_the_pieces(tmp_path, monkeypatch, attention_forms):
    """The piecewise CUDA graphs' contract, on the CPU: under ``ForwardBatch.attn_breaker`` an MLA layer stores the
    step's latent, hands the breaker itself and its rotated query, and reads its output from the first v_head_dim
    of each head of the breaker's [T, heads, qk_head_dim] tensor; the breaker runs ``layer.attend(q, batch, out)``
    later (here at once, as a replay would between two graphs), deciding there which requests are decodes.
    Chunked prefill with decodes (expanded-always: the 16-token budget would keep chunks after context absorbed):
    HF's tokens, the prompt chunks expanded."""
    from pagedllm.worker.model_runner import ModelRunner
    monkeypatch.setenv("PAGEDLLM_MLA_PREFILL", "expanded-always")
    tiny = DeepseekTiny("deepseek_v3", str(tmp_path))
    make_batch = ModelRunner._make_batch

    class EagerBreaker:
        def __init__(self, batch):
            self.batch = batch

        def attention(self, layer, q):
            out = torch.full_like(q, float("nan"))          # the rows past v_head_dim are never read
            layer.attend(q, self.batch, out=out)
            return out

    def with_breaker(self, *args, **kwargs):
        batch = make_batch(self, *args, **kwargs)
        batch.attn_breaker = EagerBreaker(batch)
        return batch
    monkeypatch.setattr(ModelRunner, "_make_batch", with_breaker)
    prompts = vs_hf._prompts(vs_hf.PROMPT_LENS[:3])
    llm = tiny.llm(max_num_batched_tokens=16)
    vs_hf._assert_matches_hf(tiny, prompts, vs_hf._generate(llm, prompts))
    assert {e[0] for e in attention_forms} == {"decodes", "expanded"}


def test_v3_without_interleaved_rope_latent_cache_blocks_and_startup_log(tmp_path, caplog):
    """rope_interleave=False: V3 rotates NeoX halves and the rope rows load as they are. The KV cache holds the
    compressed latent once (one KV head of kv_lora_rank + qk_rope_head_dim = 40 values, the key, read as the value
    too, as vLLM's MLA cache), so the same KV cache memory gives twice the blocks of a cache that also stored a
    value row, and 4.8x those of the expanded cache (4 heads x 24-dim keys and values); the start-up log says so."""
    tiny = DeepseekTiny("deepseek_v3", str(tmp_path), rope_interleave=False)
    prompts = vs_hf._prompts(vs_hf.PROMPT_LENS[:2])
    kv_bytes = 4 << 20
    with caplog.at_level("INFO", logger="pagedllm"):
        llm = tiny.llm(kv_cache_memory_bytes=kv_bytes)
    vs_hf._assert_matches_hf(tiny, prompts, vs_hf._generate(llm, prompts))
    cfg = tiny.hf.config
    per_token_and_layer = {"latent": cfg.kv_lora_rank + cfg.qk_rope_head_dim,
                           "latent as key and value": 2 * (cfg.kv_lora_rank + cfg.qk_rope_head_dim),
                           "expanded": 2 * cfg.num_attention_heads * (cfg.qk_nope_head_dim + cfg.qk_rope_head_dim)}
    assert per_token_and_layer == {"latent": 40, "latent as key and value": 80, "expanded": 192}
    blocks = {kind: kv_bytes // (values * 16 * cfg.num_hidden_layers * 4)       # block_size 16, fp32
              for kind, values in per_token_and_layer.items()}
    assert blocks == {"latent": 819, "latent as key and value": 409, "expanded": 170}
    assert llm.llm_engine.vllm_config.cache_config.num_gpu_blocks == blocks["latent"]
    assert ("the MLA latent cache: 40 values per token and layer (one KV head of kv_lora_rank 32 + rope 8 = 40, "
            "stored once as key and value), 4.8x fewer than the 192 of 4 heads' expanded keys and values"
            ) in caplog.text
    assert f"KV cache     {blocks['latent']} blocks x 16 tokens" in caplog.text
    # The K and V of each layer are one allocation: the cache's bytes are the blocks' once (not twice).
    runner = llm.llm_engine.runner
    assert runner.startup_info()["kv_cache_gib"] * 2**30 == blocks["latent"] * 40 * 16 * 2 * 4
    assert runner.kv_caches[0][0].data_ptr() == runner.kv_caches[0][1].data_ptr()


def test_latent_cache_stored_once_swaps_hits_prefixes_and_sleeps(tmp_path):
    """The K-only latent cache through every whole-block write: swap preemption (8 blocks for requests needing 15:
    blocks go to CPU memory and back, K alone, so the swap space holds twice the blocks too) with prefix caching
    (a prompt run again hits its cached blocks), then sleep (the KV cache's memory, counted once, given
    back) and wake-up (allocated again, K only). Greedy tokens HF's throughout."""
    tiny = DeepseekTiny("deepseek_v2_lite", str(tmp_path))
    swap_bytes = 1 << 20
    llm = tiny.llm(block_size=16, num_gpu_blocks_override=8, max_model_len=128, enable_prefix_caching=True,
                   swap_space=swap_bytes / (1 << 30), preemption_mode="swap", enable_sleep_mode=True)
    cfg = tiny.hf.config
    block_bytes = (cfg.kv_lora_rank + cfg.qk_rope_head_dim) * 16 * cfg.num_hidden_layers * 4     # fp32, K only
    assert llm.llm_engine.kv_cache.swap_pool.num_blocks == swap_bytes // block_bytes == 204
    prompts = vs_hf._prompts(vs_hf.PROMPT_LENS)
    vs_hf._assert_matches_hf(tiny, prompts, vs_hf._generate(llm, prompts))
    scheduler = llm.llm_engine.scheduler
    assert scheduler.num_swap_outs > 0 and scheduler.num_swap_ins == scheduler.num_swap_outs
    for _ in range(2):       # the 40-token prompt again, alone: its second run hits its two full cached blocks
        again = vs_hf._generate(llm, prompts[2:3])
        vs_hf._assert_matches_hf(tiny, prompts[2:3], again)
    assert again[0].num_cached_tokens == 32
    runner = llm.llm_engine.runner       # what sleep mode frees and logs: the KV cache's bytes counted once
    assert runner._device_bytes_in_use() - runner.weights_bytes == 8 * block_bytes
    llm.sleep(level=1)
    assert runner._device_bytes_in_use() == runner.weights_bytes
    llm.wake_up()
    vs_hf._assert_matches_hf(tiny, prompts[:2], vs_hf._generate(llm, prompts[:2]))


def test_fp8_latent_cache_stored_once(tmp_path, monkeypatch):
    """kv_cache_dtype="fp8": the latent row stored once as e4m3 (K and V are both written with scale 1.0, so the V
    write stores K's bytes again), in a quarter of an fp32 block's bytes: twice the blocks of a cache that keeps a
    value row of its own (kv_cache_value_is_key off), with that cache's tokens and logprobs exactly (the prompts'
    expanded prefill reads the e4m3 latent back; the decodes attend over it absorbed)."""
    from pagedllm.model.models.deepseek import DeepseekV2ForCausalLM
    tiny = DeepseekTiny("deepseek_v3", str(tmp_path))
    kv_bytes = 1 << 20
    params = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True, logprobs=0)
    prompts = [{"prompt_token_ids": p} for p in vs_hf._prompts(vs_hf.PROMPT_LENS)]
    runs = {}
    for stored_once in (False, True):
        monkeypatch.setattr(DeepseekV2ForCausalLM, "kv_cache_value_is_key", stored_once)
        llm = tiny.llm(kv_cache_memory_bytes=kv_bytes, kv_cache_dtype="fp8")
        assert llm.llm_engine.runner.kv_caches[0].dtype == torch.float8_e4m3fn
        outs = llm.generate(prompts, params, use_tqdm=False)
        runs[stored_once] = (llm.llm_engine.vllm_config.cache_config.num_gpu_blocks,
                             [(o.outputs[0].token_ids, [lp[t].logprob for t, lp in zip(o.outputs[0].token_ids,
                                                                                       o.outputs[0].logprobs)])
                              for o in outs])
    cfg = tiny.hf.config
    assert runs[True][0] == kv_bytes // ((cfg.kv_lora_rank + cfg.qk_rope_head_dim) * 16 * cfg.num_hidden_layers) \
        == 2 * runs[False][0] + 1 == 819
    assert runs[True][1] == runs[False][1]


def _block_fp8(w: torch.Tensor, block: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(e4m3 weight, weight_scale_inv, dequantized weight)`` of ``w`` in ``block`` x ``block`` tiles (the last
    ones partial, as DeepSeek-V3's 576-row kv_a_proj_with_mqa in 128-row blocks)."""
    n, k = w.shape
    rows, cols = -(-n // block), -(-k // block)
    padded = torch.zeros(rows * block, cols * block)
    padded[:n, :k] = w
    tiles = padded.reshape(rows, block, cols, block)
    scale = tiles.abs().amax(dim=(1, 3)).clamp(min=1e-8) / FP8_MAX
    q = (tiles / scale[:, None, :, None]).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)
    dequant = (q.float() * scale[:, None, :, None]).reshape(padded.shape)[:n, :k]
    return q.reshape(padded.shape)[:n, :k].contiguous(), scale, dequant


def assert_same_tokens_and_logprobs(got, ref) -> None:
    """Two runs' outputs of the same prompts: the same greedy tokens, their logprobs equal to fp32 rounding."""
    for a, b in zip(got, ref):
        assert a.outputs[0].token_ids == b.outputs[0].token_ids
        torch.testing.assert_close(torch.tensor([lp[t].logprob for t, lp in zip(a.outputs[0].token_ids,
                                                                                 a.outputs[0].logprobs)]),
                                   torch.tensor([lp[t].logprob for t, lp in zip(b.outputs[0].token_ids,
                                                                                 b.outputs[0].logprobs)]),
                                   rtol=1e-4, atol=1e-5)


def _quantized_vs_reference(tmp_path, quant: dict, quant_config: dict, reference: dict, check_quantized) -> None:
    """Save the quantized checkpoint and its dequantized reference beside the tiny model in ``tmp_path / "dense"``,
    run both greedy with logprobs, ``check_quantized(llm)`` on the quantized engine; the same tokens and logprobs."""
    from safetensors.torch import save_file
    config = json.loads((tmp_path / "dense" / "config.json").read_text())
    for out, tensors, qc in ((tmp_path / "quant", quant, quant_config), (tmp_path / "ref", reference, None)):
        out.mkdir()
        (out / "config.json").write_text(json.dumps(dict(config, **({"quantization_config": qc} if qc else {}))))
        save_file(tensors, str(out / "model.safetensors"))
    params = SamplingParams(temperature=0.0, max_tokens=8, logprobs=0, ignore_eos=True)
    prompts = [{"prompt_token_ids": p} for p in vs_hf._prompts([5, 17])]
    runs = []
    for path in (tmp_path / "quant", tmp_path / "ref"):
        llm = LLM(str(path), skip_tokenizer_init=True, dtype="float32", kv_cache_memory_gb=0.01, max_model_len=128)
        runs.append(llm.generate(prompts, params, use_tqdm=False))
        if path.name == "quant":
            check_quantized(llm)
    assert_same_tokens_and_logprobs(*runs)


def _fp8_block_v3(tmp_path) -> tuple[dict, dict]:
    """A tiny V3 in ``tmp_path / "dense"``; (its FP8 checkpoint's tensors, 16 x 16 blocks, every projection; the
    dequantized reference's)."""
    from safetensors.torch import load_file
    DeepseekTiny("deepseek_v3", str(tmp_path / "dense"))
    state = load_file(str(tmp_path / "dense" / "model.safetensors"))
    quant, reference = dict(state), dict(state)
    for name, w in state.items():
        if name.endswith("proj.weight") or name.endswith("proj_with_mqa.weight"):
            quant[name], quant[name.replace(".weight", ".weight_scale_inv")], reference[name] = _block_fp8(w, 16)
    return quant, reference


def test_fp8_block_checkpoint_equals_its_dequantized_reference(tmp_path):
    """DeepSeek-V3's published form: every projection (attention, dense and shared MLPs, experts) e4m3 with a
    ``weight_scale_inv`` per 16 x 16 block (128 x 128 in V3), partial blocks included; the router, norms and
    embeddings dense. Greedy tokens and logprobs equal the model with the dequantized weights, and the rope rows
    reordered at load stay within their scale blocks."""
    quant, reference = _fp8_block_v3(tmp_path)

    def check(llm):
        attn = llm.llm_engine.core.runner.model.model.layers[1].self_attn
        assert attn.kv_a_proj_with_mqa.weight.dtype == FP8_DTYPE
        # kv_b_proj stays FP8; its absorbed per-head matrices come from one dequantized fp32 copy.
        assert attn.kv_b_proj.weight.dtype == FP8_DTYPE and attn._kv_b_dequantized.dtype == torch.float32
        assert llm.llm_engine.core.runner.model.model.layers[1].mlp.experts.w13.dtype == FP8_DTYPE
    _quantized_vs_reference(tmp_path, quant, {"quant_method": "fp8", "activation_scheme": "dynamic", "fmt": "e4m3",
                                              "weight_block_size": [16, 16]}, reference, check)


def test_quantized_kv_b_proj_is_dequantized_at_load_not_in_the_first_forward(tmp_path, monkeypatch):
    """On the GPU the engine's first forward is parallel_compile's dry pass: a Triton kernel not built yet does not
    run, its output is whatever its buffer held. Simulated here (a dry pass before the first forward, in which every
    FP8 matmul returns garbage): the absorbed kv_b_proj must not come from that forward (session 36 found it did:
    every token of the FP8 V3 GPU test wrong on an empty Triton cache), so the tokens still equal the dequantized
    reference's."""
    from pagedllm.model.models.deepseek import DeepseekV2ForCausalLM
    from pagedllm.model.quantization.fp8 import Fp8LinearMethod
    quant, reference = _fp8_block_v3(tmp_path)
    dry, forwards = [False], [0]
    apply, forward = Fp8LinearMethod.apply, DeepseekV2ForCausalLM.forward

    def dry_apply(self, layer, x, bias):
        y = apply(self, layer, x, bias)
        return torch.full_like(y, 7.0) if dry[0] else y

    def first_forward_dry(self, *args, **kwargs):
        forwards[0] += 1
        if forwards[0] == 1:       # a dry pass over the same inputs first, its outputs (and KV writes) overwritten
            dry[0] = True
            try:
                forward(self, *args, **kwargs)
            finally:
                dry[0] = False
        return forward(self, *args, **kwargs)
    monkeypatch.setattr(Fp8LinearMethod, "apply", dry_apply)
    monkeypatch.setattr(DeepseekV2ForCausalLM, "forward", first_forward_dry)
    _quantized_vs_reference(tmp_path, quant, {"quant_method": "fp8", "activation_scheme": "dynamic", "fmt": "e4m3",
                                              "weight_block_size": [16, 16]}, reference, lambda llm: None)
    assert forwards[0] > 1


@pytest.mark.parametrize("arch, make", [
    ("deepseek_v2_lite", lambda formats, state: formats._awq_checkpoint(state, 16)),
    ("deepseek_v3", lambda formats, state: formats._gptq_checkpoint(state, 4, 16, sym=False, desc_act=False)),
    ("deepseek_v2", lambda formats, state: formats._ct_checkpoint(state, 8, 16, sym=False))],
    ids=["awq-v2-lite", "gptq-v3", "compressed-tensors-w8a16-v2"])
def test_packed_int_checkpoint_equals_its_dequantized_reference(tmp_path, monkeypatch, arch, make):
    """AWQ / GPTQ / compressed-tensors checkpoints (every projection 4- or 8-bit in groups of 16 with zero points, the
    experts too): greedy tokens and logprobs equal the model with the dequantized weights. Their rope columns are
    packed (AWQ packs the output columns, all three pack the zero points along them), so the interleaved-to-NeoX
    reorder runs on Q and k_pe in the forward instead of at load; kv_b_proj stays packed, its absorbed matrices
    come from the layer applied to the identity. Without the forward's reorder the tokens differ."""
    from safetensors.torch import load_file

    from tests.unit import test_quant_int_formats as int_formats
    DeepseekTiny(arch, str(tmp_path / "dense"))
    state = load_file(str(tmp_path / "dense" / "model.safetensors"))
    monkeypatch.setattr(int_formats, "LINEARS", ("q_proj", "q_a_proj", "q_b_proj", "kv_a_proj_with_mqa", "kv_b_proj",
                                                 "o_proj", "gate_proj", "up_proj", "down_proj"))
    quant_config, quant, reference = make(int_formats, state)
    kv_b = "model.layers.1.self_attn.kv_b_proj."
    assert kv_b + "weight" not in quant and any(name.startswith(kv_b) for name in quant)

    def check(llm):
        attn = llm.llm_engine.core.runner.model.model.layers[1].self_attn
        assert attn.rope_perm is not None and attn.kv_b_proj.quant_method is not None
    _quantized_vs_reference(tmp_path, quant, quant_config, reference, check)


@pytest.mark.parametrize("overrides, match", [
    (dict(norm_topk_prob=True), "norm_topk_prob=True is not supported"),
    (dict(topk_method="noaux_tc"), "topk_method='noaux_tc' is not supported"),
    (dict(topk_method="group_limited_greedy", n_group=3, topk_group=1),
     "n_group=3 must divide n_routed_experts=8"),
])
def test_refused_v2_configs_name_the_field(tmp_path, overrides, match):
    cls, kwargs, _ = DEEPSEEK["deepseek_v2"]
    config = cls(**dict(kwargs, **overrides))
    config.architectures = ["DeepseekV2ForCausalLM"]
    config.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=match):
        LLM(str(tmp_path), skip_tokenizer_init=True, dtype="float32", load_format="dummy", kv_cache_memory_gb=0.01)


def test_tensor_and_pipeline_parallel_match_hf(tmp_path):
    """Two pipeline stages of two tensor-parallel ranks (gloo on the CPU): each rank its heads of q_b_proj /
    kv_b_proj / o_proj and its slice of every MLP and expert; the second stage's first layer still the model's
    layer 2 (a MoE layer, the first one dense); chunked prefill. Greedy tokens HF's."""
    tiny = DeepseekTiny("deepseek_v3", str(tmp_path), num_hidden_layers=4)
    prompts = vs_hf._prompts(vs_hf.PROMPT_LENS[:3])
    on_cpu = {"device": "cpu"} if torch.cuda.is_available() and torch.cuda.device_count() < 4 else {}
    llm = tiny.llm(tensor_parallel_size=2, pipeline_parallel_size=2, max_num_batched_tokens=16, max_model_len=128,
                   **on_cpu)
    try:
        vs_hf._assert_matches_hf(tiny, prompts, vs_hf._generate(llm, prompts))
    finally:
        llm.llm_engine.core.shutdown()


def test_moe_layer_freq_keeps_the_other_layers_dense(tmp_path):
    """DeepSeek's rule (its own code; HF transformers reads only first_k_dense_replace): with moe_layer_freq 2
    only the even layers past the dense ones route to experts."""
    from pagedllm.model.models.deepseek import DeepseekMoE
    cls, kwargs, _ = DEEPSEEK["deepseek_v2"]
    config = cls(**dict(kwargs, num_hidden_layers=4, first_k_dense_replace=1, moe_layer_freq=2))
    config.architectures = ["DeepseekV2ForCausalLM"]
    config.save_pretrained(tmp_path)
    llm = LLM(str(tmp_path), skip_tokenizer_init=True, dtype="float32", load_format="dummy", kv_cache_memory_gb=0.01)
    layers = llm.llm_engine.core.runner.model.model.layers
    assert [isinstance(layer.mlp, DeepseekMoE) for layer in layers] == [False, False, True, False]


@pytest.mark.parametrize("name", ["deepseek_v2_lite", "deepseek_v2", "deepseek_v3"])
def test_router_picks_and_weighs_as_hf(name):
    """The router alone on 512 random tokens, 16 experts in 4 groups (2 chosen for V3 and group-limited V2; top 3):
    each token's experts and their weights (after the routed scaling) equal HF's DeepseekV2/V3TopkRouter's."""
    from pagedllm.model.models.deepseek import DeepseekRouter
    cls, kwargs, _ = DEEPSEEK[name]
    grouped = dict(n_group=4, topk_group=2) if "n_group" in kwargs else {}
    config = cls(**dict(kwargs, n_routed_experts=16, num_experts_per_tok=3, **grouped))
    v3 = name == "deepseek_v3"
    module = transformers.models.deepseek_v3.modeling_deepseek_v3 if v3 else \
        transformers.models.deepseek_v2.modeling_deepseek_v2
    hf = (module.DeepseekV3TopkRouter if v3 else module.DeepseekV2TopkRouter)(config)
    ours = DeepseekRouter(config, v3)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        hf.weight.copy_(torch.randn(16, 64, generator=g))
        ours.weight.copy_(hf.weight)
        if v3:
            hf.e_score_correction_bias.copy_(torch.randn(16, generator=g) * 0.5)
            ours.e_score_correction_bias.copy_(hf.e_score_correction_bias)
        x = torch.randn(512, 64, generator=g)
        _, hf_weights, hf_ids = hf(x)
        weights, ids = ours(x)
    assert torch.equal(ids.sort(dim=-1).values, hf_ids.sort(dim=-1).values)
    torch.testing.assert_close(weights.gather(1, ids.argsort(dim=-1)), hf_weights.gather(1, hf_ids.argsort(dim=-1)),
                               rtol=0, atol=0)
