"""Mixture-of-experts GGUF checkpoints (llama.cpp's qwen3moe and qwen2moe): the experts' 3-D tensors split into HF's
per-expert weights, the router and Qwen2-MoE's shared expert mapped, the experts' width and top-k renormalisation
read from the GGUF metadata (transformers' conversion leaves them out). Written here with ``gguf.GGUFWriter`` from
a tiny random HF model (Q8_0 experts, F32 elsewhere); greedy tokens must equal HF's on the dequantized weights."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers

gguf = pytest.importorskip("gguf")
from gguf import GGMLQuantizationType as T  # noqa: E402

from pagedllm import LLM, SamplingParams  # noqa: E402

COMMON = dict(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
              max_position_embeddings=256, initializer_range=0.2, rms_norm_eps=1e-6, rope_theta=10000.0)
GREEDY = SamplingParams(temperature=0.0, max_tokens=10, ignore_eos=True)
PROMPTS = [[1, 11, 12, 13], [1, 40, 41, 42, 43, 44, 45, 46, 90, 91, 92, 3, 5]]


def _q8(weight: torch.Tensor) -> tuple[np.ndarray, torch.Tensor]:
    """Q8_0 blocks of ``weight`` (rows along the last dim) and their dequantized values."""
    data = weight.float().numpy()
    blocks = gguf.quants.quantize(data, T.Q8_0)
    return blocks, torch.from_numpy(np.array(gguf.quants.dequantize(blocks, T.Q8_0), dtype=np.float32)).reshape(
        weight.shape)


def _write(path: str, hf, arch: str) -> None:
    """``hf``'s weights as llama.cpp writes them (experts stacked per projection, Q8_0); ``hf`` is given the
    dequantized experts, so it is the reference."""
    cfg = hf.config
    w = gguf.GGUFWriter(path, arch)
    w.add_context_length(256)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_key_length(getattr(cfg, "head_dim", cfg.hidden_size // cfg.num_attention_heads))
    w.add_value_length(getattr(cfg, "head_dim", cfg.hidden_size // cfg.num_attention_heads))
    w.add_rope_freq_base(cfg.rope_theta if hasattr(cfg, "rope_theta") else 10000.0)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_vocab_size(cfg.vocab_size)
    w.add_expert_count(cfg.num_experts)
    w.add_expert_used_count(cfg.num_experts_per_tok)
    w.add_expert_feed_forward_length(cfg.moe_intermediate_size)
    if arch == "qwen2moe":
        w.add_expert_shared_feed_forward_length(cfg.shared_expert_intermediate_size)
    state = {k: v.detach() for k, v in hf.state_dict().items()}

    def f32(name: str, tensor: torch.Tensor) -> None:
        w.add_tensor(name, tensor.float().numpy())

    f32("token_embd.weight", state["model.embed_tokens.weight"])
    f32("output_norm.weight", state["model.norm.weight"])
    f32("output.weight", state["lm_head.weight"])
    names = {"q_proj": "attn_q", "k_proj": "attn_k", "v_proj": "attn_v", "o_proj": "attn_output"}
    with torch.no_grad():
        for i in range(cfg.num_hidden_layers):
            p = f"model.layers.{i}."
            for ours, theirs in names.items():
                f32(f"blk.{i}.{theirs}.weight", state[f"{p}self_attn.{ours}.weight"])
                if f"{p}self_attn.{ours}.bias" in state:
                    f32(f"blk.{i}.{theirs}.bias", state[f"{p}self_attn.{ours}.bias"])
            for norm, theirs in (("q_norm", "attn_q_norm"), ("k_norm", "attn_k_norm")):
                if f"{p}self_attn.{norm}.weight" in state:
                    f32(f"blk.{i}.{theirs}.weight", state[f"{p}self_attn.{norm}.weight"])
            f32(f"blk.{i}.attn_norm.weight", state[f"{p}input_layernorm.weight"])
            f32(f"blk.{i}.ffn_norm.weight", state[f"{p}post_attention_layernorm.weight"])
            f32(f"blk.{i}.ffn_gate_inp.weight", state[f"{p}mlp.gate.weight"])
            experts = hf.model.layers[i].mlp.experts
            for proj, theirs in (("gate_proj", "ffn_gate_exps"), ("up_proj", "ffn_up_exps"),
                                 ("down_proj", "ffn_down_exps")):
                stacked = _stacked(experts, proj, cfg.num_experts)
                blocks, dense = _q8(stacked)
                w.add_tensor(f"blk.{i}.{theirs}.weight", blocks, raw_shape=blocks.shape, raw_dtype=T.Q8_0)
                _set_stacked(experts, proj, dense)
            if arch == "qwen2moe":
                for proj, theirs in (("gate_proj", "ffn_gate_shexp"), ("up_proj", "ffn_up_shexp"),
                                     ("down_proj", "ffn_down_shexp")):
                    f32(f"blk.{i}.{theirs}.weight", state[f"{p}mlp.shared_expert.{proj}.weight"])
                f32(f"blk.{i}.ffn_gate_inp_shexp.weight", state[f"{p}mlp.shared_expert_gate.weight"])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def _stacked(experts, proj: str, n: int) -> torch.Tensor:
    """[experts, out, in] of one projection, whichever layout this transformers keeps its experts in."""
    if hasattr(experts, "gate_up_proj"):           # fused 3-D parameters (transformers 5)
        gate_up, down = experts.gate_up_proj.detach(), experts.down_proj.detach()
        half = gate_up.shape[1] // 2
        return {"gate_proj": gate_up[:, :half], "up_proj": gate_up[:, half:], "down_proj": down}[proj].clone()
    return torch.stack([getattr(experts[e], proj).weight.detach() for e in range(n)])


def _set_stacked(experts, proj: str, value: torch.Tensor) -> None:
    if hasattr(experts, "gate_up_proj"):
        half = experts.gate_up_proj.shape[1] // 2
        target = {"gate_proj": experts.gate_up_proj[:, :half], "up_proj": experts.gate_up_proj[:, half:],
                  "down_proj": experts.down_proj}[proj]
        target.copy_(value)
        return
    for e in range(value.shape[0]):
        getattr(experts[e], proj).weight.copy_(value[e])


@pytest.mark.parametrize("arch", ["qwen3moe", "qwen2moe"])
def test_moe_gguf_matches_hf_on_the_dequantized_weights(tmp_path, arch, monkeypatch):
    monkeypatch.setenv("PAGEDLLM_CACHE_DIR", str(tmp_path / "cache"))
    cfg = (transformers.Qwen3MoeConfig(**COMMON, head_dim=16, norm_topk_prob=True) if arch == "qwen3moe" else
           transformers.Qwen2MoeConfig(**COMMON, shared_expert_intermediate_size=48, norm_topk_prob=False))
    torch.manual_seed(0)
    hf = transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").eval()
    path = str(tmp_path / f"tiny-{arch}.gguf")
    _write(path, hf, arch)
    with torch.no_grad():
        expected = [hf.generate(torch.tensor([p]), do_sample=False, max_new_tokens=10, pad_token_id=0)[0, len(p):]
                    .tolist() for p in PROMPTS]
    llm = LLM(path, skip_tokenizer_init=True, dtype="float32", max_model_len=128, kv_cache_memory_gb=0.01)
    got = [list(o.outputs[0].token_ids) for o in
           llm.generate([{"prompt_token_ids": p} for p in PROMPTS], GREEDY, use_tqdm=False)]
    assert got == expected
    assert len(set(got[0] + got[1])) > 3                    # not one token repeated
    hf_config = llm.llm_engine.core.config.hf_config
    assert (hf_config.moe_intermediate_size, hf_config.norm_topk_prob) == (32, arch == "qwen3moe")
    # A second engine reads the dequantized cache: the same tokens.
    again = LLM(path, skip_tokenizer_init=True, dtype="float32", max_model_len=128, kv_cache_memory_gb=0.01)
    assert [list(o.outputs[0].token_ids) for o in
            again.generate([{"prompt_token_ids": p} for p in PROMPTS], GREEDY, use_tqdm=False)] == expected
