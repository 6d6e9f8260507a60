"""Mixture-of-experts decoders against HF transformers fp32 on tiny random models: the greedy, chunked-prefill,
prefix-cache, logprob and preemption tests of test_models_vs_hf.py, run here on GLM-4.5 (Glm4MoeForCausalLM),
dots.llm1, ERNIE 4.5 MoE, Hunyuan MoE, OLMoE, Granite MoE, GraniteMoeShared and PhiMoE; GLM-4.5's and ERNIE 4.5's
skipped multi-token-prediction layers; tensor and pipeline parallel; PhiMoE's router alone; GLM-4.5-Air-FP8's
checkpoint form; refused configs."""
from __future__ import annotations

import pytest
import torch
import transformers

import test_models_vs_hf as vs_hf
from pagedllm import LLM
from test_deepseek import DeepseekTiny, assert_same_tokens_and_logprobs

_MOE = dict(vs_hf._LLAMA_LIKE, num_experts_per_tok=2)

# name -> (HF config class, kwargs, seed), as test_models_vs_hf.ARCHS (seeds pass its near-tie check).
MOE_ARCHS = {
    # GLM-4.5's shape: a dense first layer, then DeepSeek-V3's routing (sigmoid + e_score_correction_bias drawn
    # below, 2 groups of 4 experts scored by their two best, 1 chosen, top-k renormalized, routed_scaling_factor),
    # one shared expert, Q/K/V biases (drawn) without an o_proj bias, per-head Q/K norms, half of each head rotated.
    "glm4_moe": (transformers.Glm4MoeConfig, dict(
        _MOE, head_dim=32, n_routed_experts=8, moe_intermediate_size=32, n_shared_experts=1, first_k_dense_replace=1,
        n_group=2, topk_group=1, norm_topk_prob=True, routed_scaling_factor=2.5, attention_bias=True,
        use_qk_norm=True, partial_rotary_factor=0.5), 0),
    # dots.llm1: GLM-4.5's MoE (4 groups of 2 experts, 2 chosen; not renormalized) with Qwen3's attention (per-head
    # Q/K norms, here with Q/K/V/O biases), a full-attention first layer and a windowed (8 tokens) second one.
    "dots1": (transformers.Dots1Config, dict(
        _MOE, head_dim=32, n_routed_experts=8, moe_intermediate_size=32, n_shared_experts=2, first_k_dense_replace=1,
        n_group=4, topk_group=2, norm_topk_prob=False, routed_scaling_factor=1.5, attention_bias=True,
        sliding_window=8, max_window_layers=1), 0),
    # ERNIE 4.5 MoE: interleaved rotary, a dense first layer (moe_layer_start_index), fp32 softmax router choosing by
    # probability + correction bias (drawn), 2 shared experts, tied embeddings.
    "ernie4_5_moe": (transformers.Ernie4_5_MoeConfig, dict(
        _MOE, head_dim=32, moe_num_experts=8, moe_k=2, moe_intermediate_size=32, moe_num_shared_experts=2,
        moe_layer_start_index=1), 0),
    # Hunyuan MoE: Q/K norms after the rotary, NTK-alpha rotary ("dynamic" with a fixed alpha), an fp32 router
    # (top-2 of 8, renormalized) and the shared MLP in every layer.
    "hunyuan_v1_moe": (transformers.HunYuanMoEV1Config, dict(
        _MOE, head_dim=16, num_experts=8, moe_topk=2, intermediate_size=32,
        rope_parameters={"rope_type": "dynamic", "rope_theta": 10000.0, "alpha": 50.0, "factor": 1.0}), 0),
    # OLMoE: softmax over all 8 experts then the top 2, not renormalized (as released); RMSNorms over the whole Q and
    # K projections.
    "olmoe": (transformers.OlmoeConfig, dict(_MOE, num_experts=8, intermediate_size=32, norm_topk_prob=False), 0),
    # Granite MoE: the top-2 logits softmaxed among themselves, Granite's multipliers (embeddings, residual branches,
    # attention scale, logits), the experts stacked in the checkpoint; and with the ungated shared MLP.
    "granitemoe": (transformers.GraniteMoeConfig, dict(
        _MOE, num_local_experts=8, intermediate_size=32, embedding_multiplier=3.0, residual_multiplier=0.5,
        attention_multiplier=0.2, logits_scaling=2.0), 0),
    "granitemoeshared": (transformers.GraniteMoeSharedConfig, dict(
        _MOE, num_local_experts=8, intermediate_size=32, shared_intermediate_size=48, embedding_multiplier=3.0,
        residual_multiplier=0.5, attention_multiplier=0.2, logits_scaling=2.0), 0),
    # PhiMoE: sparsemixer's top-2 (a wide jitter_eps, 0.5, so several experts share each softmax; Phi-3.5-MoE's
    # 0.01 leaves one), LayerNorms with biases, Q/K/V/O and LM head biases (drawn); and LongRoPE's short factors
    # with cos / sin scaled by short_mscale (max_model_len capped at the original 128 positions).
    "phimoe": (transformers.PhimoeConfig, dict(_MOE, num_local_experts=8, intermediate_size=32, router_jitter_noise=0.5,
                                               attention_bias=True, lm_head_bias=True), 0),
    "phimoe-longrope": (transformers.PhimoeConfig, dict(
        _MOE, num_local_experts=8, intermediate_size=32, router_jitter_noise=0.5, rope_parameters={
            "rope_type": "longrope", "rope_theta": 10000.0, "original_max_position_embeddings": 128,
            "short_factor": [1.0, 1.5, 2.0, 3.0, 1.0, 1.2, 1.1, 1.3], "long_factor": [4.0] * 8, "short_mscale": 1.3,
            "long_mscale": 1.6}), 0),
}


class MoeTiny(DeepseekTiny):
    """test_models_vs_hf's tiny model with the router's correction bias and every bias drawn (HF starts them at 0,
    which would hide one not loaded), of this file's configs."""
    configs = MOE_ARCHS


@pytest.fixture(scope="module", params=list(MOE_ARCHS))
def tiny(request, tmp_path_factory) -> MoeTiny:
    return MoeTiny(request.param, str(tmp_path_factory.mktemp(request.param)))


test_greedy_matches_hf = vs_hf.test_greedy_matches_hf
test_chunked_prefill_matches_hf = vs_hf.test_chunked_prefill_matches_hf
test_prefix_cache_hits_match_hf = vs_hf.test_prefix_cache_hits_match_hf
test_sample_logprobs_match_hf = vs_hf.test_sample_logprobs_match_hf
test_preemption_matches_hf = vs_hf.test_preemption_matches_hf


@pytest.mark.parametrize("name", ["glm4_moe", "ernie4_5_moe"])
def test_mtp_layers_are_skipped(tmp_path, name):
    """The multi-token-prediction tensors of a checkpoint (GLM-4.5: a whole layer after the decoder,
    ``model.layers.{N}``, here N = 2, with its own norms and projection; ERNIE 4.5: ``model.mtp_*``) are skipped at
    load, the tokens HF's (which does not run them either)."""
    from safetensors.torch import load_file, save_file
    tiny = MoeTiny(name, str(tmp_path))
    path = tmp_path / "model.safetensors"
    tensors = load_file(str(path))
    mtp_prefix = "model.layers.2." if name == "glm4_moe" else "model.mtp_block.0."
    mtp = {name.replace("model.layers.1.", mtp_prefix): t.clone() for name, t in tensors.items()
           if name.startswith("model.layers.1.")}
    mtp.update({"model.layers.2.eh_proj.weight": torch.randn(64, 128), "model.layers.2.enorm.weight": torch.ones(64),
                "model.layers.2.shared_head.norm.weight": torch.ones(64)} if name == "glm4_moe" else
               {"model.mtp_linear_proj.0.weight": torch.randn(64, 128), "model.mtp_emb_norm.0.weight": torch.ones(64),
                "model.mtp_hidden_norm.0.weight": torch.ones(64)})
    save_file({**tensors, **mtp}, str(path), metadata={"format": "pt"})
    prompts = vs_hf._prompts(vs_hf.PROMPT_LENS[:2])
    vs_hf._assert_matches_hf(tiny, prompts, vs_hf._generate(tiny.llm(), prompts))


def write_fp8_channel_checkpoints(dense, fp8, reference) -> None:
    """From the checkpoint in folder ``dense``: at ``fp8`` its llm-compressor FP8 form (compressed-tensors
    float-quantized as GLM-4.5-Air-FP8: every ``*proj.weight`` e4m3 with a ``weight_scale`` per output row, dynamic
    per-token activations), at ``reference`` the same weights dequantized, in the checkpoint's dtype."""
    import json

    from safetensors.torch import load_file, save_file

    from pagedllm.kernels.quant.fp8 import per_channel_quantize
    state = load_file(str(dense / "model.safetensors"))
    quant, dequantized = dict(state), dict(state)
    for name, w in state.items():
        if name.endswith("proj.weight"):
            quant[name], quant[name.replace(".weight", ".weight_scale")] = per_channel_quantize(w)
            dequantized[name] = quant[name].float() * quant[name.replace(".weight", ".weight_scale")]
    scheme = {"type": "float", "num_bits": 8, "symmetric": True}
    qc = {"quant_method": "compressed-tensors", "format": "float-quantized", "ignore": ["lm_head"],
          "config_groups": {"group_0": {"targets": ["Linear"], "weights": dict(scheme, strategy="channel",
                                                                               dynamic=False),
                                        "input_activations": dict(scheme, strategy="token", dynamic=True)}}}
    config = json.loads((dense / "config.json").read_text())
    for out, tensors, extra in ((fp8, quant, {"quantization_config": qc}), (reference, dequantized, {})):
        out.mkdir()
        (out / "config.json").write_text(json.dumps(dict(config, **extra)))
        save_file(tensors, str(out / "model.safetensors"))


@pytest.mark.parametrize("tp", [1, 2])
def test_glm4_moe_fp8_channel_checkpoint_equals_its_dequantized_reference(tmp_path, tp):
    """GLM-4.5-Air-FP8's form (llm-compressor, compressed-tensors ``float-quantized``): every projection (attention,
    dense and shared MLPs, each expert) e4m3 with a ``weight_scale`` per output row, dynamic per-token activations;
    the router, norms, embeddings and LM head dense. The experts stay e4m3 (Fp8MoEMethod, a scale per row) and the
    greedy tokens and logprobs equal the model with the dequantized weights (run in one process), whole or over two
    tensor-parallel ranks (each its rows of gate / up and its columns of down, all of down's row scales). The
    reference runs in one process for tp=2 too: a second two-rank engine would add ~3 s of worker start-up to the
    suite and check nothing more."""
    from pagedllm import SamplingParams
    from pagedllm.kernels.quant.fp8 import FP8_DTYPE
    MoeTiny("glm4_moe", str(tmp_path / "dense"))
    write_fp8_channel_checkpoints(tmp_path / "dense", tmp_path / "fp8", tmp_path / "ref")
    params = SamplingParams(temperature=0.0, max_tokens=8, logprobs=0, ignore_eos=True)
    prompts = [{"prompt_token_ids": p} for p in vs_hf._prompts([5, 17])]
    runs = []
    for path, ranks in ((tmp_path / "fp8", tp), (tmp_path / "ref", 1)):
        llm = LLM(str(path), skip_tokenizer_init=True, dtype="float32", kv_cache_memory_gb=0.01, max_model_len=128,
                  tensor_parallel_size=ranks, seed=0)
        try:
            runs.append(llm.generate(prompts, params, use_tqdm=False))
            if path.name == "fp8" and ranks == 1:
                assert llm.llm_engine.core.runner.model.model.layers[1].mlp.experts.w13.dtype == FP8_DTYPE
        finally:
            if ranks > 1:
                llm.llm_engine.core.shutdown()
    assert_same_tokens_and_logprobs(*runs)


@pytest.mark.parametrize("name, tp, pp, layers", [("glm4_moe", 2, 2, 4), ("granitemoeshared", 2, 1, 2),
                                                  ("granitemoe", 1, 2, 2), ("olmoe", 1, 2, 2), ("phimoe", 2, 1, 2),
                                                  ("phimoe", 1, 2, 2), ("ernie4_5_moe", 2, 1, 2),
                                                  ("ernie4_5_moe", 1, 2, 2), ("hunyuan_v1_moe", 2, 1, 2),
                                                  ("hunyuan_v1_moe", 1, 2, 2)])
def test_tensor_and_pipeline_parallel_match_hf(tmp_path, name, tp, pp, layers):
    """Tensor-parallel ranks (gloo on the CPU) each with their heads and their slice of the dense, shared and routed
    experts' intermediate size; pipeline stages each with their layers (GLM-4.5's second stage: the model's layers 2
    and 3, MoE, its first layer dense); chunked prefill. Greedy tokens HF's."""
    tiny = MoeTiny(name, str(tmp_path), num_hidden_layers=layers)
    prompts = vs_hf._prompts(vs_hf.PROMPT_LENS[:3])
    on_cpu = {"device": "cpu"} if torch.cuda.is_available() and torch.cuda.device_count() < tp * pp else {}
    llm = tiny.llm(tensor_parallel_size=tp, pipeline_parallel_size=pp, max_num_batched_tokens=16, max_model_len=128,
                   **on_cpu)
    try:
        vs_hf._assert_matches_hf(tiny, prompts, vs_hf._generate(llm, prompts))
    finally:
        llm.llm_engine.core.shutdown()


@pytest.mark.parametrize("name, overrides, match", [
    ("glm4_moe", dict(n_group=3), "n_group=3 must divide n_routed_experts=8"),
    ("glm4_moe", dict(hidden_act="gelu"), "hidden_act='gelu' is not supported"),
    ("olmoe", dict(clip_qkv=8.0), "clip_qkv=8.0 is not supported"),
    ("hunyuan_v1_moe", dict(use_cla=True), "use_cla=True is not supported"),
    ("hunyuan_v1_moe", dict(moe_topk=[2, 1], num_experts_per_tok=[2, 1]), r"moe_topk=\[2, 1\]: only one value"),
    ("hunyuan_v1_moe", dict(moe_intermediate_size=[16, 16]), r"moe_intermediate_size=\[16, 16\] is not supported"),
])
def test_refused_configs_name_the_field(tmp_path, name, overrides, match):
    cls, kwargs, _ = MOE_ARCHS[name]
    config = cls(**dict(kwargs, **overrides))
    config.architectures = [cls.__name__.replace("Config", "ForCausalLM")]
    config.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=match):
        LLM(str(tmp_path), skip_tokenizer_init=True, dtype="float32", load_format="dummy", kv_cache_memory_gb=0.01)


@pytest.mark.parametrize("jitter_eps", [0.01, 0.5])
def test_sparsemixer_picks_and_weighs_as_hf(jitter_eps):
    """PhiMoE's router alone against HF's ``sparsemixer`` at inference on 512 random tokens of 16 experts (ties
    included: a quarter of the tokens repeat their best logit): the same two experts, bit-equal weights."""
    from transformers.models.phimoe.modeling_phimoe import sparsemixer

    from pagedllm.model.layers.moe import sparsemixer_top2
    logits = torch.randn(512, 16, generator=torch.Generator().manual_seed(0)) * 2
    logits[::4, 3] = logits[::4].max(dim=-1).values
    want_weights, want_ids = sparsemixer(logits, jitter_eps=jitter_eps, training=False)
    weights, ids = sparsemixer_top2(logits, jitter_eps)
    assert torch.equal(ids, want_ids) and torch.equal(weights, want_weights)
    # Phi-3.5-MoE's band (0.01) mixes only near-ties (the repeated best logits), the wide one most tokens.
    assert (weights < 0.99).float().mean() > (0.5 if jitter_eps > 0.1 else 0.0)


def test_hunyuan_per_layer_moe_topk_of_one_value(tmp_path):
    """Hunyuan-A13B's config lists ``moe_topk`` per layer (all 8): a list of one value runs as that top-k."""
    tiny = MoeTiny("hunyuan_v1_moe", str(tmp_path), moe_topk=[2, 2], num_experts_per_tok=[2, 2])
    assert tiny.hf.config.moe_topk == [2, 2]
    prompts = vs_hf._prompts(vs_hf.PROMPT_LENS[:2])
    vs_hf._assert_matches_hf(tiny, prompts, vs_hf._generate(tiny.llm(), prompts))
