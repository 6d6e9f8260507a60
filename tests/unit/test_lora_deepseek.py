"""LoRA adapters on DeepSeek-V2 / V2-Lite / V3 (multi-head latent attention) against HF transformers fp32 with the
adapter merged into its weights: every projection of the attention (q_proj or q_a_proj / q_b_proj,
kv_a_proj_with_mqa, kv_b_proj, o_proj), the dense layers' and the shared experts' MLPs. kv_b_proj never multiplies
activations in the absorbed form (decodes, PAGEDLLM_MLA_PREFILL=absorbed): its adapter is added to the absorbed
query and value output per head, and to the expanded latent in the expanded prefill; each form is checked with an
adapter of kv_b_proj alone. Routed experts' adapters are refused by name. peft is not installed here: the adapters
are written in PEFT's format, as tests/unit/test_lora.py's."""
from __future__ import annotations

import pytest
import torch
import transformers

from pagedllm.lora.request import LoRARequest
from test_lora import GREEDY, PROMPTS, VOCAB, _tokens, make_llm, merged_tokens, save_adapter
from test_lora_families import _save_model, parallel_adapter_tokens

_MLA = dict(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=256,
            bos_token_id=1, eos_token_id=2, pad_token_id=0, intermediate_size=128, moe_intermediate_size=32,
            num_key_value_heads=4, n_routed_experts=8, num_experts_per_tok=2, kv_lora_rank=32, qk_nope_head_dim=16,
            qk_rope_head_dim=8, v_head_dim=12, initializer_range=0.2)
# tests/models/test_deepseek.py's three shapes (without YaRN): V2-Lite's q_proj, V2's low-rank Q with group-limited
# routing and attention biases, V3's sigmoid routing; each with a dense first layer and shared experts.
CONFIGS = {
    "deepseek_v2_lite": lambda **kw: transformers.DeepseekV2Config(**dict(
        _MLA, q_lora_rank=None, topk_method="greedy", first_k_dense_replace=1, n_shared_experts=2,
        routed_scaling_factor=1.5, **kw)),
    "deepseek_v2": lambda **kw: transformers.DeepseekV2Config(**dict(
        _MLA, q_lora_rank=48, topk_method="group_limited_greedy", n_group=2, topk_group=1, first_k_dense_replace=1,
        n_shared_experts=1, routed_scaling_factor=2.0, attention_bias=True, **kw)),
    "deepseek_v3": lambda **kw: transformers.DeepseekV3Config(**dict(
        _MLA, q_lora_rank=48, n_group=2, topk_group=1, first_k_dense_replace=1, n_shared_experts=1,
        norm_topk_prob=True, routed_scaling_factor=2.5, **kw)),
}
TARGETS = ("q_proj", "q_a_proj", "q_b_proj", "kv_a_proj_with_mqa", "kv_b_proj", "o_proj", "gate_proj", "up_proj",
           "down_proj")


@pytest.mark.parametrize("prefill", ["absorbed", "expanded", "expanded-always"])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_adapter_gives_the_merged_models_tokens(tmp_path, monkeypatch, name, prefill):
    """Two adapters and the base model in one batch, under each PAGEDLLM_MLA_PREFILL (decodes always absorbed): one
    adapting every projection, one kv_b_proj alone (its delta through the absorbed query / value output, or the
    expanded latent). A 16-token budget cuts the 21-token prompt into chunks run beside other requests' decodes:
    "absorbed" attends every step absorbed; "expanded" expands the first chunk but keeps the step of the 5-token
    chunk after 16 cached ones absorbed whole (MLAttention.attend's absorbed branch, other prompts in it too);
    "expanded-always" expands that chunk with its cached context, beside absorbed decodes. Greedy tokens: HF's with
    each adapter merged, and without."""
    monkeypatch.setenv("PAGEDLLM_MLA_PREFILL", prefill)
    hf = _save_model(tmp_path / "model", CONFIGS[name]())
    every, adapters, expected = two_adapters_and_base(tmp_path, hf)
    no_q = {"q_a_proj", "q_b_proj"} if "lite" in name else {"q_proj"}      # V2-Lite: q_proj; else the low-rank pair
    assert {n.rpartition(".")[2] for n in every} == set(TARGETS) - no_q
    assert expected["every"] != expected["base"] and expected["kv_b"] != expected["base"]
    assert_mixed_batch_tokens(make_llm(tmp_path, max_num_batched_tokens=16, max_loras=2), adapters, expected)


def two_adapters_and_base(tmp_path, hf) -> tuple[dict, dict, dict]:
    """This file's adapters of ``hf`` (saved under ``tmp_path``): "every" (rank 8, every target), "kv_b" (rank 4,
    kv_b_proj alone) and "base" (none). Returns the "every" adapter's tensors, the LoRARequests (None for the base)
    and HF's greedy tokens of PROMPTS with each adapter merged."""
    every = save_adapter(tmp_path / "every", hf, rank=8, alpha=16, seed=3, targets=TARGETS)
    kv_b = save_adapter(tmp_path / "kv_b", hf, rank=4, alpha=8, seed=4, targets=("kv_b_proj",))
    expected = {"every": merged_tokens(hf, every, 16 / 8, PROMPTS, 6),
                "kv_b": merged_tokens(hf, kv_b, 8 / 4, PROMPTS, 6),
                "base": merged_tokens(hf, {}, 0, PROMPTS, 6)}
    adapters = {"every": LoRARequest("every", 1, str(tmp_path / "every")),
                "kv_b": LoRARequest("kv_b", 2, str(tmp_path / "kv_b")), "base": None}
    return every, adapters, expected


def assert_mixed_batch_tokens(llm, adapters: dict, expected: dict) -> None:
    """All three in one batch (each adapter's requests, then the base model's): each request gets its tokens."""
    got = llm.generate([{"prompt_token_ids": p} for _ in adapters for p in PROMPTS], GREEDY, use_tqdm=False,
                       lora_request=[a for a in adapters.values() for _ in PROMPTS])
    assert _tokens(got) == [t for k in adapters for t in expected[k]]


def _write_adapter(path, tensors: dict[str, tuple[int, int]]) -> None:
    """A PEFT adapter of rank 4 with zero weights for ``tensors`` (module name -> (in, out))."""
    from safetensors.torch import save_file
    path.mkdir()
    save_file({f"base_model.model.{name}.lora_{ab}.weight": torch.zeros(*shape)
               for name, (n_in, n_out) in tensors.items() for ab, shape in (("A", (4, n_in)), ("B", (n_out, 4)))},
              str(path / "adapter_model.safetensors"))
    (path / "adapter_config.json").write_text('{"r": 4, "lora_alpha": 4}')


def test_routed_expert_and_router_adapters_are_refused_by_name(tmp_path):
    """An adapter of a routed expert (the per-expert names of DeepSeek's own checkpoints) is refused as the other MoE
    models' experts are; one of the router (``mlp.gate``) is vLLM's error listing the modules DeepSeek adapts. The
    engine goes on."""
    hf = _save_model(tmp_path / "model", CONFIGS["deepseek_v3"]())
    llm = make_llm(tmp_path)
    prompt = [{"prompt_token_ids": PROMPTS[1]}]
    _write_adapter(tmp_path / "expert", {"model.layers.1.mlp.experts.3.gate_proj": (64, 32)})
    with pytest.raises(ValueError, match=r"model\.layers\.1\.mlp\.experts\.3\.gate_proj is an expert of a "
                                         r"mixture-of-experts layer"):
        llm.generate(prompt, GREEDY, use_tqdm=False, lora_request=LoRARequest("expert", 1, str(tmp_path / "expert")))
    _write_adapter(tmp_path / "router", {"model.layers.1.mlp.gate": (64, 8)})
    with pytest.raises(ValueError, match=r"expected target modules in \['q_proj', 'q_a_proj', 'q_b_proj', "
                                         r"'kv_a_proj_with_mqa', 'kv_b_proj', 'o_proj', 'gate_proj', 'up_proj', "
                                         r"'down_proj'\] but received \['gate'\]"):
        llm.generate(prompt, GREEDY, use_tqdm=False, lora_request=LoRARequest("router", 2, str(tmp_path / "router")))
    assert _tokens(llm.generate(prompt, GREEDY, use_tqdm=False)) == merged_tokens(hf, {}, 0, PROMPTS[1:], 6)


@pytest.mark.parametrize("name, parallel", [("deepseek_v2", dict(tensor_parallel_size=2)),
                                            ("deepseek_v2_lite", dict(pipeline_parallel_size=2))])
def test_tensor_and_pipeline_parallel(tmp_path, monkeypatch, name, parallel):
    """Each tensor-parallel rank its heads' rows of q_b_proj's and kv_b_proj's lora_B (kv_b_proj's per-head
    deltas on the rank's heads) and its columns of o_proj's lora_A; each pipeline stage its layers' part of the
    adapter. Expanded prefill in chunks beside absorbed decodes: HF's tokens with the adapter merged."""
    monkeypatch.setenv("PAGEDLLM_MLA_PREFILL", "expanded-always")
    got, expected = parallel_adapter_tokens(tmp_path, _save_model(tmp_path / "model", CONFIGS[name]()), TARGETS,
                                            parallel, max_num_batched_tokens=16)
    assert got == expected
