"""LoRA adapters on the families whose checkpoints are not Llama's in names or row order, against HF transformers fp32
with the adapter merged into its weights: the interleaved-rotary Llama decoders (GLM, GLM-4, Cohere, Cohere 2, ERNIE
4.5: the Q / K rows of lora_B reordered as the checkpoint's), the LayerNorm decoders (Phi-2, StableLM, Starcoder2,
GPT-NeoX, Falcon, GPTBigCode: their own module names, fused QKV adapters cut per head / group as the weights), OPT and
GPT-2 (Conv1D), the mixtures of experts' attention and shared experts (ERNIE 4.5 MoE, Hunyuan, OLMoE, PhiMoE, Granite
MoE, GLM-4.5, dots.llm1), and the language model of LLaVA and Qwen2.5-VL (an adapter's vision-side modules ignored with
a warning, as vLLM); tensor and pipeline parallel. peft is not installed here: the adapters are written in PEFT's format
(adapter_config.json, base_model.model.<HF module>.lora_A/B.weight), as tests/unit/test_lora.py's."""
from __future__ import annotations

import logging
import re

import pytest
import torch
import transformers

from pagedllm.lora.request import LoRARequest
from test_lora import ALL_TARGETS, GREEDY, PROMPTS, VOCAB, _tokens, make_llm, merged, merged_tokens, save_adapter

_COMMON = dict(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
               max_position_embeddings=256, initializer_range=0.2, bos_token_id=1, eos_token_id=2, pad_token_id=0)
_LLAMA_LIKE = dict(_COMMON, intermediate_size=128, num_key_value_heads=2)
_MOE = dict(_LLAMA_LIKE, num_experts_per_tok=2)
_NEOX_NAMES = ("query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h")

# name -> (HF config, the modules an adapter targets: PEFT's names for the HF model)
FAMILIES = {
    # GLM: half of each head rotated in interleaved pairs, the MLP's gate and up in one gate_up_proj.
    "glm": (lambda: transformers.GlmConfig(**_LLAMA_LIKE, head_dim=32),
            ("q_proj", "k_proj", "v_proj", "o_proj", "gate_up_proj", "down_proj")),
    "glm4": (lambda: transformers.Glm4Config(**_LLAMA_LIKE, head_dim=32),
             ("q_proj", "k_proj", "v_proj", "o_proj", "gate_up_proj", "down_proj")),
    # Cohere with Command-R+'s per-head Q / K norms (reordered too); Cohere 2's rotated windowed layer.
    "cohere": (lambda: transformers.CohereConfig(**_LLAMA_LIKE, logit_scale=0.5, use_qk_norm=True), ALL_TARGETS),
    "cohere2": (lambda: transformers.Cohere2Config(**_LLAMA_LIKE, logit_scale=0.5, sliding_window=8,
                                                   layer_types=["sliding_attention", "full_attention"]),
                ALL_TARGETS),
    "ernie4_5": (lambda: transformers.Ernie4_5Config(**_LLAMA_LIKE, head_dim=32), ALL_TARGETS),
    "phi": (lambda: transformers.PhiConfig(**_COMMON, intermediate_size=128, partial_rotary_factor=0.5),
            ("q_proj", "k_proj", "v_proj", "dense", "fc1", "fc2")),
    "stablelm": (lambda: transformers.StableLmConfig(**_LLAMA_LIKE), ALL_TARGETS),
    "starcoder2": (lambda: transformers.Starcoder2Config(**_LLAMA_LIKE, sliding_window=8),
                   ("q_proj", "k_proj", "v_proj", "o_proj", "c_fc", "c_proj")),
    # GPT-NeoX: query_key_value's rows [heads, 3, head_dim]; Falcon's [KV groups, queries + 2, head_dim] and
    # falcon-7b's multi-query [all q | k | v]; GPTBigCode's c_attn multi-query too.
    "gpt_neox": (lambda: transformers.GPTNeoXConfig(**_COMMON, intermediate_size=128, rotary_pct=0.25), _NEOX_NAMES),
    "falcon": (lambda: transformers.FalconConfig(**_COMMON, new_decoder_architecture=True, num_kv_heads=2),
               _NEOX_NAMES),
    "falcon-7b-style": (lambda: transformers.FalconConfig(**_COMMON), _NEOX_NAMES),
    "gpt_bigcode": (lambda: transformers.GPTBigCodeConfig(**_COMMON), ("c_attn", "c_proj", "c_fc")),
    # OPT: q/k/v_proj, out_proj, fc1 / fc2; GPT-2's Conv1D c_attn (q | k | v), c_proj, c_fc.
    "opt": (lambda: transformers.OPTConfig(**_COMMON, ffn_dim=128, init_std=0.2),
            ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")),
    "gpt2": (lambda: transformers.GPT2Config(**_COMMON, architectures=["GPT2LMHeadModel"]),
             ("c_attn", "c_proj", "c_fc")),
    # Mixture-of-experts models: the attention's projections and the shared experts' (the experts take none yet).
    # ERNIE 4.5 MoE: interleaved rotary, a dense first layer, 2 shared experts; Hunyuan: the shared MLP (shared_mlp)
    # in every layer, Q / K norms after the rotary; Granite MoE's shared MLP: [gate; up] in input_linear.
    "ernie4_5_moe": (lambda: transformers.Ernie4_5_MoeConfig(
        **_MOE, head_dim=32, moe_num_experts=8, moe_k=2, moe_intermediate_size=32, moe_num_shared_experts=2,
        moe_layer_start_index=1), ALL_TARGETS),
    "hunyuan_v1_moe": (lambda: transformers.HunYuanMoEV1Config(
        **dict(_MOE, intermediate_size=32), head_dim=16, num_experts=8, moe_topk=2), ALL_TARGETS),
    "olmoe": (lambda: transformers.OlmoeConfig(**dict(_MOE, intermediate_size=32), num_experts=8,
                                               norm_topk_prob=False), ("q_proj", "k_proj", "v_proj", "o_proj")),
    "phimoe": (lambda: transformers.PhimoeConfig(**dict(_MOE, intermediate_size=32), num_local_experts=8,
                                                 attention_bias=True), ("q_proj", "k_proj", "v_proj", "o_proj")),
    # GLM-4.5 / dots.llm1: a dense first layer, then DeepSeek-V3's MoE block with a shared expert (HF 5.x keeps the
    # routed experts fused, so the adapter holds the attention's, the dense MLP's and the shared expert's modules).
    "glm4_moe": (lambda: transformers.Glm4MoeConfig(
        **_MOE, head_dim=32, n_routed_experts=8, moe_intermediate_size=32, n_shared_experts=1,
        first_k_dense_replace=1, n_group=1, topk_group=1), ALL_TARGETS),
    "dots1": (lambda: transformers.Dots1Config(
        **_MOE, head_dim=32, n_routed_experts=8, moe_intermediate_size=32, n_shared_experts=1,
        first_k_dense_replace=1, n_group=1, topk_group=1), ALL_TARGETS),
    "granitemoeshared": (lambda: transformers.GraniteMoeSharedConfig(
        **dict(_MOE, intermediate_size=32), num_local_experts=8, shared_intermediate_size=48,
        embedding_multiplier=3.0, residual_multiplier=0.5, attention_multiplier=0.2, logits_scaling=2.0),
        ("q_proj", "k_proj", "v_proj", "o_proj", "input_linear", "output_linear")),
}


def _save_model(path, config) -> torch.nn.Module:
    if not getattr(config, "architectures", None):
        config.architectures = [type(config).__name__.replace("Config", "ForCausalLM")]
    torch.manual_seed(0)
    hf = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager").eval()
    hf.save_pretrained(path)
    hf.generation_config.eos_token_id = None    # HF's min_new_tokens would forbid EOS, which ignore_eos samples
    return hf


@pytest.mark.parametrize("family", list(FAMILIES))
def test_adapter_gives_the_merged_models_tokens(tmp_path, family):
    """Every projection the family's checkpoint has adapted at once: pagedllm's greedy tokens with the adapter are
    HF's with it merged, and the base model's without it (one batch, the adapter and the base model mixed)."""
    config, targets = FAMILIES[family]
    hf = _save_model(tmp_path / "model", config())
    adapter = save_adapter(tmp_path / "lora", hf, rank=8, alpha=16, seed=3, targets=targets)
    assert {name.rpartition(".")[2] for name in adapter} == set(targets)
    expected, base = merged_tokens(hf, adapter, 16 / 8, PROMPTS, 6), merged_tokens(hf, {}, 0, PROMPTS, 6)
    assert expected != base                                       # the adapter changes the tokens
    llm = make_llm(tmp_path)
    lora = LoRARequest("lora", 1, str(tmp_path / "lora"))
    got = llm.generate([{"prompt_token_ids": p} for p in PROMPTS * 2], GREEDY, use_tqdm=False,
                       lora_request=[lora, lora, None, None])
    assert _tokens(got) == expected + base


def test_adapters_of_other_modules_are_refused_by_name(tmp_path):
    """An adapter of a module the model does not adapt (GPT-NeoX's LM head, or Llama's names on GPT-NeoX) is
    vLLM's error listing the family's module names; the engine goes on."""
    hf = _save_model(tmp_path / "model", FAMILIES["gpt_neox"][0]())
    save_adapter(tmp_path / "head", hf, rank=4, alpha=4, targets=("query_key_value", "lm_head"))
    llm = make_llm(tmp_path)
    prompt = [{"prompt_token_ids": PROMPTS[1]}]
    expected = r"expected target modules in \['query_key_value', 'dense', 'dense_h_to_4h', 'dense_4h_to_h'\] but " \
               r"received \['lm_head'\]"
    with pytest.raises(ValueError, match=expected):
        llm.generate(prompt, GREEDY, use_tqdm=False, lora_request=LoRARequest("head", 1, str(tmp_path / "head")))
    llama_names = {"base_model.model.gpt_neox.layers.0.attention.q_proj.lora_A.weight": torch.zeros(4, 64),
                   "base_model.model.gpt_neox.layers.0.attention.q_proj.lora_B.weight": torch.zeros(64, 4)}
    from safetensors.torch import save_file
    (tmp_path / "llama").mkdir()
    save_file(llama_names, str(tmp_path / "llama" / "adapter_model.safetensors"))
    (tmp_path / "llama" / "adapter_config.json").write_text('{"r": 4, "lora_alpha": 4}')
    with pytest.raises(ValueError, match=r"but received \['q_proj'\]"):
        llm.generate(prompt, GREEDY, use_tqdm=False, lora_request=LoRARequest("llama", 2, str(tmp_path / "llama")))
    assert _tokens(llm.generate(prompt, GREEDY, use_tqdm=False)) == merged_tokens(hf, {}, 0, PROMPTS[1:], 6)


def _vision_language_case(kind: str, tmp_path):
    """(HF model, its processor, the model's folder, a prompt with one image, the image) of the tiny LLaVA / Qwen2.5-VL
    of tests/models."""
    from tests.models.test_llava import images
    if kind == "llava":
        from tests.models.test_llava import ONE, save_tiny_llava
        hf, processor = save_tiny_llava(tmp_path / "model")
    else:
        from tests.models.test_qwen2_vl import ONE, save_tiny_qwen_vl
        hf, processor = save_tiny_qwen_vl(tmp_path / "model", "qwen2_5_vl")
    hf.generation_config.eos_token_id = None
    return hf, processor, ONE, images(1)[0]


@pytest.mark.parametrize("kind, tower", [("llava", "vision_tower"), ("qwen2_5_vl", "visual")])
def test_vision_language_models_adapt_their_language_model(tmp_path, kind, tower, caplog):
    """LLaVA's and Qwen2.5-VL's language model takes the adapter (a prompt with an image: HF's tokens with the adapter
    merged); an adapter that also adapts the vision side (CLIP's q/k/v_proj, Qwen2.5-VL's vision MLP) runs its
    language-model part, the tower's modules ignored with a warning naming them, as vLLM does."""
    hf, processor, prompt, image = _vision_language_case(kind, tmp_path)
    adapter = save_adapter(tmp_path / "lora", hf, rank=8, alpha=16, seed=3, skip=tower)
    assert adapter and not any(tower in name for name in adapter)
    inputs = processor(text=prompt, images=[image], return_tensors="pt")
    ids = inputs["input_ids"][0].tolist()

    def hf_greedy():
        return hf.generate(**inputs, max_new_tokens=6, do_sample=False)[0, len(ids):].tolist()
    with merged(hf, adapter, 16 / 8):
        expected = hf_greedy()
    assert expected != hf_greedy()
    llm = make_llm(tmp_path, skip_tokenizer_init=False, max_model_len=256, num_gpu_blocks_override=None,
                   kv_cache_memory_gb=0.01)
    request = {"prompt": prompt, "multi_modal_data": {"image": [image]}}
    out = llm.generate(request, GREEDY, use_tqdm=False, lora_request=LoRARequest("lora", 1, str(tmp_path / "lora")))
    assert out[0].prompt_token_ids == ids and _tokens(out) == [expected]
    # An adapter that also adapts the vision side: its language-model part runs, the tower's modules are ignored
    # with a warning naming them (vLLM's behaviour), so the tokens are HF's with only that part merged.
    whole = save_adapter(tmp_path / "all", hf, rank=8, alpha=16, seed=4)
    language_part = {name: ab for name, ab in whole.items() if tower not in name}
    assert len(language_part) < len(whole)
    with merged(hf, language_part, 16 / 8):
        expected = hf_greedy()
    with caplog.at_level(logging.WARNING, logger="pagedllm.lora.manager"):
        out = llm.generate(request, GREEDY, use_tqdm=False, lora_request=LoRARequest("all", 2, str(tmp_path / "all")))
    assert _tokens(out) == [expected]
    assert re.search(rf"LoRA adapter 'all': LoRA applies to the language model only; \d+ of its modules will be "
                     rf"ignored: model\.{tower}\.", caplog.text), caplog.text


@pytest.mark.parametrize("family, parallel", [("glm", dict(tensor_parallel_size=2)),
                                              ("falcon-7b-style", dict(tensor_parallel_size=2)),
                                              ("phi", dict(pipeline_parallel_size=2)),
                                              ("gpt2", dict(pipeline_parallel_size=2))])
def test_tensor_and_pipeline_parallel(tmp_path, family, parallel):
    """Each rank's cut of the reordered / split adapter: GLM's Q / K rows and fused gate_up_proj, falcon-7b's
    multi-query query_key_value (its one KV head replicated on both ranks); each pipeline stage its layers' part of
    an adapter named in the checkpoint's names (Phi-2's dense, GPT-2's transformer.h.N.c_attn): one process's
    tokens."""
    config, targets = FAMILIES[family]
    got, expected = parallel_adapter_tokens(tmp_path, _save_model(tmp_path / "model", config()), targets, parallel)
    assert got == expected


def parallel_adapter_tokens(tmp_path, hf, targets, parallel: dict, **settings) -> tuple[list, list]:
    """(pagedllm's greedy tokens with a random adapter of ``hf``'s ``targets`` under ``parallel`` (tensor / pipeline
    parallel sizes; ``settings``: the engine's others), HF's with the adapter merged)."""
    adapter = save_adapter(tmp_path / "lora", hf, rank=8, alpha=16, seed=3, targets=targets)
    expected = merged_tokens(hf, adapter, 16 / 8, PROMPTS, 6)
    llm = make_llm(tmp_path, **parallel, kv_cache_memory_gb=0.01, num_gpu_blocks_override=None, **settings)
    try:
        got = llm.generate([{"prompt_token_ids": p} for p in PROMPTS], GREEDY, use_tqdm=False,
                           lora_request=LoRARequest("lora", 1, str(tmp_path / "lora")))
        return _tokens(got), expected
    finally:
        llm.llm_engine.core.executor.shutdown()


def test_granite_moe_expert_adapter_is_refused_by_name(tmp_path):
    """Granite MoE's experts are stacked in one input_linear / output_linear per layer: an adapter of them is refused
    as the other MoE models' experts are (the shared MLP's input_linear of the same name is adapted above)."""
    from safetensors.torch import save_file
    _save_model(tmp_path / "model", FAMILIES["granitemoeshared"][0]())
    prefix = "base_model.model.model.layers.0.block_sparse_moe.input_linear"
    (tmp_path / "lora").mkdir()
    save_file({f"{prefix}.lora_A.weight": torch.zeros(4, 64), f"{prefix}.lora_B.weight": torch.zeros(64, 4)},
              str(tmp_path / "lora" / "adapter_model.safetensors"))
    (tmp_path / "lora" / "adapter_config.json").write_text('{"r": 4, "lora_alpha": 4}')
    with pytest.raises(ValueError, match=r"model\.layers\.0\.block_sparse_moe\.input_linear is an expert of a "
                                         r"mixture-of-experts layer"):
        make_llm(tmp_path).generate([{"prompt_token_ids": PROMPTS[1]}], GREEDY, use_tqdm=False,
                                    lora_request=LoRARequest("lora", 1, str(tmp_path / "lora")))


def _chatglm_with_adapter(root) -> tuple[dict, dict, dict]:
    """A tiny ChatGLM2 checkpoint in ``root/model`` (tests/models/test_chatglm.py's config and THUDM's tensor names)
    and a random PEFT adapter of its query_key_value (biased, multi-query), dense, dense_h_to_4h (gate and up
    stacked) and dense_4h_to_h in ``root/lora``: (config, weights, the weights with the adapter merged)."""
    import json

    from safetensors.torch import save_file

    from tests.models.test_chatglm import CHATGLM2, random_weights
    cfg = dict(CHATGLM2, padded_vocab_size=VOCAB)
    weights = random_weights(cfg, seed=0)
    (root / "model").mkdir()
    (root / "model" / "config.json").write_text(json.dumps(cfg))
    save_file(weights, str(root / "model" / "model.safetensors"))
    torch.manual_seed(3)
    tensors, merged_weights, scaling = {}, dict(weights), 16 / 8
    for name, w in weights.items():
        if w.dim() == 2 and re.search(r"\.(query_key_value|dense|dense_h_to_4h|dense_4h_to_h)\.weight$", name):
            module = name.removesuffix(".weight")
            a, b = torch.randn(8, w.shape[1]) * 0.3, torch.randn(w.shape[0], 8) * 0.3
            tensors |= {f"base_model.model.{module}.lora_A.weight": a, f"base_model.model.{module}.lora_B.weight": b}
            merged_weights[name] = w + scaling * b @ a
    assert len(tensors) == 2 * 4 * cfg["num_layers"]
    (root / "lora").mkdir()
    save_file(tensors, str(root / "lora" / "adapter_model.safetensors"))
    (root / "lora" / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "LORA", "r": 8, "lora_alpha": 16, "bias": "none",
         "target_modules": ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"]}))
    return cfg, weights, merged_weights


@pytest.mark.parametrize("parallel", [{}, dict(tensor_parallel_size=2)], ids=["tp1", "tp2"])
def test_chatglm_adapter_gives_the_merged_models_tokens(tmp_path, parallel):
    """ChatGLM2 (not in HF transformers: tests/models/test_chatglm.py's plain-torch reference, fed the merged
    weights): an adapter of all four projections, its query_key_value lora_B cut into q / k / v and the Q / K rows
    reordered as the checkpoint's (half of each head rotated in interleaved pairs), dense_h_to_4h's into gate / up.
    The adapter and the base model in one batch; under tensor parallel each rank its heads (one of the two KV groups)
    and half of gate and up. Greedy tokens: the reference's with the adapter merged, and without."""
    from tests.models.test_chatglm import reference_greedy
    cfg, weights, merged_weights = _chatglm_with_adapter(tmp_path)
    expected = [reference_greedy(cfg, merged_weights, p)[0][:6] for p in PROMPTS]
    base = [reference_greedy(cfg, weights, p)[0][:6] for p in PROMPTS]
    assert expected != base
    llm = make_llm(tmp_path, **parallel, kv_cache_memory_gb=0.01, num_gpu_blocks_override=None)
    lora = LoRARequest("lora", 1, str(tmp_path / "lora"))
    try:
        got = llm.generate([{"prompt_token_ids": p} for p in PROMPTS * 2], GREEDY, use_tqdm=False,
                           lora_request=[lora, lora, None, None])
        assert _tokens(got) == expected + base
    finally:
        llm.llm_engine.core.executor.shutdown()
