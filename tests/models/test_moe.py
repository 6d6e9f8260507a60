"""Mixture-of-experts models beyond the greedy parity of test_models_vs_hf.py: a checkpoint missing an expert is an
error naming it; FP8 experts (online, per-tensor and block-quantized checkpoints), AWQ / GPTQ / compressed-tensors and
bitsandbytes experts equal their dequantized reference; LoRA adapters of the attention and shared expert equal HF
merged, and an adapter of the experts is refused by name."""
from __future__ import annotations

import json

import pytest
import torch
import transformers

from pagedllm import LLM, SamplingParams
from pagedllm.config import num_experts
from pagedllm.kernels.quant.fp8 import FP8_DTYPE, FP8_MAX, MIN_SCALE


def _save(path, wide: bool = False, moe_intermediate_size: int = 32) -> str:
    cfg = transformers.Qwen3MoeConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, head_dim=16, num_experts=4,
                                      num_experts_per_tok=2, moe_intermediate_size=moe_intermediate_size,
                                      max_position_embeddings=256)
    torch.manual_seed(0)
    model = transformers.Qwen3MoeForCausalLM(cfg).eval()
    if wide:      # larger projections than HF's init (std 0.02), so that fp8 rounding changes the logits
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "proj" in name:
                    p.normal_(0.0, 0.15)
    model.save_pretrained(path)
    return str(path)


def test_a_missing_expert_is_named(tmp_path):
    from safetensors.torch import load_file, save_file
    path = _save(tmp_path)
    (shard,) = tmp_path.glob("*.safetensors")
    tensors = load_file(shard)
    del tensors["model.layers.1.mlp.experts.2.up_proj.weight"]
    save_file(tensors, shard, metadata={"format": "pt"})
    with pytest.raises(ValueError, match="missing expert weights for model.layers.1.mlp.experts: expert 2 up"):
        LLM(path, skip_tokenizer_init=True, dtype="float32", kv_cache_memory_gb=0.01)


@pytest.mark.parametrize("arch", ["qwen3_moe", "qwen2_moe"])
def test_lora_on_the_attention_and_shared_expert_equals_hf_merged(tmp_path, arch):
    """An adapter of every projection HF has as a linear layer (the attention's q/k/v/o; Qwen2-MoE's shared expert's
    gate/up/down too): greedy tokens equal HF's with the adapter merged, beside the base model in one batch."""
    import sys
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1] / "unit"))
    from test_lora import GREEDY, PROMPTS, make_llm, merged_tokens, save_adapter

    from pagedllm.lora.request import LoRARequest
    common = dict(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
                  max_position_embeddings=256, initializer_range=0.2)
    cfg = (transformers.Qwen3MoeConfig(**common, head_dim=16) if arch == "qwen3_moe" else
           transformers.Qwen2MoeConfig(**common, shared_expert_intermediate_size=48))
    torch.manual_seed(0)
    hf = transformers.AutoModelForCausalLM.from_config(cfg).eval()
    hf.save_pretrained(tmp_path / "model")
    adapter = save_adapter(tmp_path / "lora", hf, rank=8, alpha=16, seed=3)
    assert any(".shared_expert." in n for n in adapter) == (arch == "qwen2_moe")
    expected = merged_tokens(hf, adapter, 16 / 8, PROMPTS, 6)
    base = merged_tokens(hf, {}, 0, PROMPTS, 6)
    assert expected != base                                    # the adapter changes the tokens
    llm = make_llm(tmp_path)
    got = llm.generate([{"prompt_token_ids": p} for p in PROMPTS] * 2, GREEDY, use_tqdm=False,
                       lora_request=[LoRARequest("lora", 1, str(tmp_path / "lora"))] * 2 + [None] * 2)
    assert [list(o.outputs[0].token_ids) for o in got] == expected + base


def test_lora_of_the_experts_is_refused_by_name(tmp_path):
    pytest.importorskip("bitsandbytes")
    import sys
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1] / "unit"))
    from test_lora import GREEDY, make_llm, save_adapter
    from safetensors.torch import load_file, save_file

    from pagedllm.lora.request import LoRARequest
    path = _save(tmp_path / "model")
    assert num_experts(transformers.AutoConfig.from_pretrained(path)) == 4
    hf = transformers.AutoModelForCausalLM.from_pretrained(path)
    save_adapter(tmp_path / "lora", hf, rank=4, alpha=8, targets=("q_proj",))
    tensors = load_file(tmp_path / "lora" / "adapter_model.safetensors")      # as PEFT names a per-expert target
    tensors["base_model.model.model.layers.1.mlp.experts.2.up_proj.lora_A.weight"] = torch.zeros(4, 64)
    tensors["base_model.model.model.layers.1.mlp.experts.2.up_proj.lora_B.weight"] = torch.zeros(32, 4)
    save_file(tensors, str(tmp_path / "lora" / "adapter_model.safetensors"))
    # bitsandbytes experts are linear layers of the format: they get no adapter slots (only q/k/v/o do)
    llm = make_llm(tmp_path, quantization="bitsandbytes")
    assert sorted({t.rsplit(".", 1)[1] for t in llm.llm_engine.core.runner.lora.targets}) == ["k_proj", "o_proj",
                                                                                           "q_proj", "v_proj"]
    assert len(llm.llm_engine.core.runner.lora.layers) == 2 * 2           # qkv and o of each of the 2 layers
    with pytest.raises(ValueError, match=r"model\.layers\.1\.mlp\.experts\.2\.up_proj is an expert of a "
                                         r"mixture-of-experts layer, and LoRA on the experts is not supported yet"):
        llm.generate([{"prompt_token_ids": [1, 2, 3]}], GREEDY, use_tqdm=False,
                     lora_request=LoRARequest("lora", 1, str(tmp_path / "lora")))


# ---- FP8 experts ----------------------------------------------------------------------------------------------------
PROMPTS = [[5, 17, 99, 3, 42, 8], [100, 2, 64, 64, 7]]


# Two tensor-parallel ranks need two GPUs on a GPU machine; with fewer the tests' TP cases run on the CPU (gloo),
# which is where the scale sharding they check lives.
TP2 = dict(tensor_parallel_size=2, **({"device": "cpu"} if torch.cuda.is_available() and torch.cuda.device_count() < 2
                                      else {}))


def _run(path, **kw):
    llm = LLM(model=path, skip_tokenizer_init=True, dtype="float32", max_model_len=128, kv_cache_memory_gb=0.01,
              **kw)
    sp = SamplingParams(temperature=0.0, max_tokens=8, logprobs=0, ignore_eos=True, detokenize=False)
    outs = llm.generate([{"prompt_token_ids": p} for p in PROMPTS], sp, use_tqdm=False)
    tokens = [list(o.outputs[0].token_ids) for o in outs]
    logprobs = [[lp[t].logprob for t, lp in zip(o.outputs[0].token_ids, o.outputs[0].logprobs)] for o in outs]
    return llm, tokens, logprobs


def _rewrite(path, out, tensors: dict, quantization_config: dict | None = None) -> str:
    from safetensors.torch import save_file
    out.mkdir()
    with open(f"{path}/config.json") as f:
        config = json.load(f)
    if quantization_config is not None:
        config["quantization_config"] = quantization_config
    with open(out / "config.json", "w") as f:
        json.dump(config, f)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(out / "model.safetensors"))
    return str(out)


def _per_row(w: torch.Tensor) -> torch.Tensor:
    scale = (w.abs().amax(dim=1, keepdim=True) / FP8_MAX).clamp(min=MIN_SCALE)
    return (w / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE).float() * scale


def online_fp8_reference(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A MoE checkpoint's tensors with every weight online fp8 quantizes replaced by its dequantized value: each
    expert projection per output row, the attention's fused qkv and o per tensor (as a dense model's). Also the
    reference of tests/gpu/test_engine_gpu.py's fp8 MoE test."""
    reference = dict(state)
    for name, w in state.items():
        if ".experts." in name:
            reference[name] = _per_row(w)
    for names, scale in _attention_fp8_groups(state):
        for n in names:
            reference[n] = (state[n] / scale).to(FP8_DTYPE).float() * scale
    return reference


def _attention_fp8_groups(state: dict[str, torch.Tensor]):
    """Each fused attention projection's checkpoint names (q/k/v, o) and the per-tensor scale online FP8 gives it."""
    layers = sorted({name.split(".self_attn.")[0] for name in state if ".self_attn.o_proj.weight" in name})
    for layer in layers:
        for parts in (("q_proj", "k_proj", "v_proj"), ("o_proj",)):
            names = [f"{layer}.self_attn.{p}.weight" for p in parts]
            yield names, max(state[n].abs().max() for n in names) / FP8_MAX


def online_fp8_attention_checkpoint(state: dict[str, torch.Tensor]) -> tuple[dict, dict[str, torch.Tensor]]:
    """``(quantization_config, tensors)``: what ``quantization="fp8"`` makes of a MoE checkpoint, as an FP8 checkpoint
    whose attention projections are e4m3 with the per-tensor scale online quantization gives the fused qkv and o,
    and whose experts are dense with their per-row dequantized values (skipped by ``ignored_layers``). The
    attention then takes the same FP8 path in both models (on the GPU W8A8, activations quantized per token, which
    no dense reference reproduces), so the two differ only in the experts' form."""
    reference = online_fp8_reference(state)
    tensors = dict(reference)
    for names, scale in _attention_fp8_groups(state):
        for n in names:
            tensors[n] = (state[n] / scale).to(FP8_DTYPE)
            tensors[n.replace(".weight", ".weight_scale")] = scale.reshape(()).clone()
    config = {"quant_method": "fp8", "activation_scheme": "dynamic", "ignored_layers": ["re:.*\\.mlp\\.experts"]}
    return config, tensors


def test_online_fp8_experts_equal_their_per_row_dequantized_reference(tmp_path):
    """quantization="fp8" on a bf16/fp32 MoE checkpoint: every expert projection in e4m3 with one scale per output
    row (the attention projections per tensor, as a dense model's); greedy tokens and logprobs equal those of the
    same model with the experts' weights dequantized and the same FP8 attention (on the CPU: every weight
    dequantized, fp32), and differ from the unquantized model's logprobs."""
    from safetensors.torch import load_file
    path = _save(tmp_path / "dense", wide=True)
    state = load_file(next((tmp_path / "dense").glob("*.safetensors")))
    config, tensors = online_fp8_attention_checkpoint(state)
    _, ref_tokens, ref_logprobs = _run(_rewrite(path, tmp_path / "ref", tensors, config))
    if not torch.cuda.is_available():     # the CPU's FP8 attention is weight-only: the dense model is the same
        _, dense_ref_tokens, dense_ref_logprobs = _run(_rewrite(path, tmp_path / "ref2", online_fp8_reference(state)))
        assert dense_ref_tokens == ref_tokens
        torch.testing.assert_close(torch.tensor(dense_ref_logprobs), torch.tensor(ref_logprobs), rtol=1e-5, atol=1e-6)
    _, dense_tokens, dense_logprobs = _run(path)
    llm, tokens, logprobs = _run(path, quantization="fp8")
    experts = llm.llm_engine.core.runner.model.model.layers[0].mlp.experts
    assert experts.w13.dtype == FP8_DTYPE and experts.w13_scale.shape == (4, 64, 1)
    assert tokens == ref_tokens
    torch.testing.assert_close(torch.tensor(logprobs), torch.tensor(ref_logprobs), rtol=1e-3, atol=1e-5)
    assert not torch.allclose(torch.tensor(logprobs), torch.tensor(dense_logprobs), rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("block,ct", [(None, False), ([16, 16], False), ([16, 16], True)],
                         ids=["tensor", "block", "compressed-tensors-block"])
def test_fp8_moe_checkpoint_equals_its_dequantized_reference(tmp_path, block, ct):
    """An FP8 MoE checkpoint with per-tensor scales (one per expert projection; static input scales, which the
    experts do not use) or 16 x 16 block scales (``weight_scale_inv``, Qwen3-30B-A3B-FP8's form; ``ct``: the same
    as compressed-tensors' block strategy writes it, ``weight_scale``, the router ignored): the experts stay e4m3
    and the output equals the model with the dequantized weights, also over two tensor-parallel ranks."""
    from safetensors.torch import load_file
    path = _save(tmp_path / "dense", wide=True)
    state = load_file(next((tmp_path / "dense").glob("*.safetensors")))
    quant, reference = dict(state), dict(state)
    torch.manual_seed(3)
    for name, w in state.items():
        if not (".experts." in name or ".self_attn." in name) or not name.endswith("proj.weight"):
            continue
        if ".self_attn." in name and block is None:
            continue          # the dense per-tensor path has its own tests (tests/unit/test_quant_fp8.py)
        if block is None:
            scale = w.abs().max() / FP8_MAX * (1 + torch.rand(()))
            q = (w / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)
            quant[name.replace(".weight", ".weight_scale")] = scale.reshape(())
            quant[name.replace(".weight", ".input_scale")] = torch.rand(()) + 0.01
            reference[name] = q.float() * scale
        else:
            bn, bk = block
            tiles = w.reshape(w.shape[0] // bn, bn, w.shape[1] // bk, bk)
            scale = tiles.abs().amax(dim=(1, 3)) / FP8_MAX
            q = (tiles / scale[:, None, :, None]).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE).reshape(w.shape)
            quant[name.replace(".weight", ".weight_scale" if ct else ".weight_scale_inv")] = scale
            reference[name] = (q.float().reshape(tiles.shape) * scale[:, None, :, None]).reshape(w.shape)
        quant[name] = q
    config = {"quant_method": "fp8", "activation_scheme": "static" if block is None else "dynamic"}
    if block is None:
        config["ignored_layers"] = ["re:.*self_attn.*"]
    else:
        config["weight_block_size"] = block
    if ct:
        config = {"quant_method": "compressed-tensors", "format": "float-quantized",
                  "ignore": ["lm_head", "re:.*mlp.gate$"],
                  "config_groups": {"group_0": {"targets": ["Linear"], "weights": {
                      "type": "float", "num_bits": 8, "strategy": "block", "block_structure": block,
                      "dynamic": False, "symmetric": True}, "input_activations": {
                      "type": "float", "num_bits": 8, "strategy": "group", "group_size": 128, "dynamic": True,
                      "symmetric": True}}}}
    qpath = _rewrite(path, tmp_path / "fp8", quant, config)
    _, ref_tokens, ref_logprobs = _run(_rewrite(path, tmp_path / "ref", reference))
    llm, tokens, logprobs = _run(qpath)
    experts = llm.llm_engine.core.runner.model.model.layers[1].mlp.experts
    assert experts.w2.dtype == FP8_DTYPE
    assert experts.w2_scale.shape == ((4, 64, 1) if block is None else (4, 4, 2))
    assert tokens == ref_tokens
    torch.testing.assert_close(torch.tensor(logprobs), torch.tensor(ref_logprobs), rtol=1e-3, atol=1e-5)
    if block is not None and not ct:   # tensor parallel: each rank its rows of the gate/up block scales, down's columns
        del llm
        _, tp_tokens, tp_logprobs = _run(qpath, **TP2)
        assert tp_tokens == ref_tokens
        torch.testing.assert_close(torch.tensor(tp_logprobs), torch.tensor(ref_logprobs), rtol=1e-3, atol=1e-5)


def test_fp8_moe_checkpoint_missing_an_expert_scale_is_an_error(tmp_path):
    from safetensors.torch import load_file
    path = _save(tmp_path / "dense")
    state = load_file(next((tmp_path / "dense").glob("*.safetensors")))
    quant = dict(state)
    for name, w in state.items():
        if ".experts." in name:
            quant[name] = w.to(FP8_DTYPE)
            if name != "model.layers.0.mlp.experts.3.down_proj.weight":
                quant[name.replace(".weight", ".weight_scale")] = torch.ones(())
    qpath = _rewrite(path, tmp_path / "fp8", quant, {"quant_method": "fp8", "activation_scheme": "dynamic",
                                                     "ignored_layers": ["re:.*self_attn.*"]})
    with pytest.raises(ValueError, match="missing weight_scale for an expert's gate, up or down projection"):
        LLM(qpath, skip_tokenizer_init=True, dtype="float32", kv_cache_memory_gb=0.01)


def test_an_expert_weight_update_reaches_the_model_and_fp8_experts_refuse_one(tmp_path):
    """vLLM's RLHF weight update (``load_weights`` with some tensors, by checkpoint name) into stacked experts: the
    next tokens are HF's with the new weight; FP8 experts (converted at load) refuse it by name."""
    from safetensors.torch import load_file
    path = _save(tmp_path / "m", wide=True)
    state = load_file(next((tmp_path / "m").glob("*.safetensors")))
    name = "model.layers.1.mlp.experts.2.down_proj.weight"
    torch.manual_seed(9)
    new = state[name] + torch.randn_like(state[name]) * 0.3
    hf = transformers.AutoModelForCausalLM.from_pretrained(_rewrite(path, tmp_path / "updated", {**state, name: new}),
                                                           dtype=torch.float32).eval()
    llm, before, _ = _run(path)
    loaded = llm.llm_engine.core.runner.model.load_weights([(name, new)])
    assert "model.layers.1.mlp.experts.w2" in loaded
    llm.reset_prefix_cache()
    sp = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True, detokenize=False)
    after = [list(o.outputs[0].token_ids) for o in llm.generate([{"prompt_token_ids": p} for p in PROMPTS], sp,
                                                                  use_tqdm=False)]
    expected = [hf.generate(torch.tensor([p]), max_new_tokens=8, min_new_tokens=8, do_sample=False,
                            pad_token_id=0)[0, len(p):].tolist() for p in PROMPTS]
    assert after == expected and after != before
    fp8, _, _ = _run(path, quantization="fp8")
    with pytest.raises(ValueError, match="is a weight of quantized experts"):
        fp8.llm_engine.core.runner.model.load_weights([(name, new)])


# ---- AWQ / GPTQ experts ---------------------------------------------------------------------------------------------
def experts_only_checkpoint(state: dict[str, torch.Tensor], fmt: str) -> tuple[dict, dict, dict]:
    """``(quantization_config, quantized tensors, dequantized reference tensors)`` of a MoE checkpoint whose experts
    alone are quantized (the attention left dense through the format's skip list): ``fmt`` "awq" (4-bit, group 128),
    "fp8" (per-tensor, one scale per expert projection), or bitsandbytes "nf4" / "int8" (their weights as
    transformers saves them). Also tests/gpu/test_engine_gpu.py's fp32 MoE test."""
    if fmt in ("nf4", "int8"):
        quant, dense = bnb_checkpoint(state, 8 if fmt == "int8" else 4, experts_only=True)
        config = ({"quant_method": "bitsandbytes", "load_in_8bit": True} if fmt == "int8" else
                  {"quant_method": "bitsandbytes", "load_in_4bit": True, "bnb_4bit_quant_type": "nf4",
                   "bnb_4bit_use_double_quant": True})
        return dict(config, llm_int8_skip_modules=["self_attn"]), quant, dense
    if fmt == "awq":
        config, quant, dense = _int_formats()._awq_checkpoint(state, 128)
        for name in [n for n in quant if ".self_attn." in n]:
            del quant[name]
        for name, w in state.items():
            if ".self_attn." in name:
                quant[name] = dense[name] = w
        return dict(config, modules_to_not_convert=["self_attn"]), quant, dense
    quant, dense = dict(state), dict(state)
    for name, w in state.items():
        if ".experts." in name:
            scale = w.abs().max() / FP8_MAX
            quant[name] = (w / scale).to(FP8_DTYPE)
            quant[name.replace(".weight", ".weight_scale")] = scale.reshape(())
            dense[name] = quant[name].float() * scale
    return {"quant_method": "fp8", "activation_scheme": "dynamic", "ignored_layers": ["re:.*self_attn.*"]}, quant, dense


def _int_formats():
    import importlib.util
    import pathlib
    spec = importlib.util.spec_from_file_location(
        "quant_int_formats", pathlib.Path(__file__).parent.parent / "unit" / "test_quant_int_formats.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("fmt, tp", [("awq", 1), ("gptq", 1), ("gptq_desc_act", 1), ("gptq", 2),
                                     ("compressed-tensors", 1)])
def test_int4_moe_checkpoint_equals_its_dequantized_reference(tmp_path, fmt, tp):
    """AWQ (GEMM), GPTQ (4-bit, group 32, or 16 over two ranks; desc_act too) and compressed-tensors W4A16
    checkpoints of a MoE model, packed by the packers of tests/unit/test_quant_int_formats.py (every expert
    projection and the attention's): tokens and logprobs equal those of the model with the dequantized weights; over
    two tensor-parallel ranks too."""
    from safetensors.torch import load_file
    qf = _int_formats()
    path = _save(tmp_path / "dense", wide=True)
    state = load_file(next((tmp_path / "dense").glob("*.safetensors")))
    if fmt == "awq":
        config, quant, dense = qf._awq_checkpoint(state, 32)
    elif fmt == "compressed-tensors":        # llm-compressor's pack-quantized W4A16, asymmetric, group 32
        config, quant, dense = qf._ct_checkpoint(state, 4, 32, False)
    else:
        group = 32 // tp          # a group within each rank's 16 columns of the experts' down projection
        config, quant, dense = qf._gptq_checkpoint(state, 4, group, sym=False, desc_act=fmt == "gptq_desc_act")
    assert sum(".experts." in n and n.endswith(("qweight", "weight_packed")) for n in quant) == 2 * 4 * 3  # all packed
    qpath = _rewrite(path, tmp_path / "q", quant, config)
    _, ref_tokens, ref_logprobs = _run(_rewrite(path, tmp_path / "ref", dense))
    llm, tokens, logprobs = _run(qpath, **(TP2 if tp == 2 else {}))
    if tp == 1:
        experts = llm.llm_engine.core.runner.model.model.layers[0].mlp.experts
        if hasattr(experts, "expert_layers"):      # the CPU: each expert's packed layers, called by the loop
            assert experts.expert_layers[3].down_proj.packed_bits == 4 and not hasattr(experts, "w13")
        else:      # the GPU: stacked at load for the fused kernels, int32 words [E, I / 8, H]
            assert experts.w2_qweight.dtype == torch.int32 and experts.w2_qweight.shape == (4, 32 // 8, 64)
    assert tokens == ref_tokens
    torch.testing.assert_close(torch.tensor(logprobs), torch.tensor(ref_logprobs), rtol=1e-3, atol=1e-5)


# ---- bitsandbytes experts -------------------------------------------------------------------------------------------
def bnb_checkpoint(state: dict, bits: int, experts_only: bool = False) -> tuple[dict, dict]:
    """``(checkpoint tensors, dequantized reference)``: every linear weight but the router's and the LM head's (or
    the experts' alone), as transformers' bitsandbytes layers save them (4-bit: packed NF4 with its state beside
    it; 8-bit: int8 rows and SCB). The reference is also that of in-flight quantization (NF4, blocks of 64)."""
    import bitsandbytes.functional as bnbf
    quant, dense = dict(state), dict(state)
    for name, w in state.items():
        linear = name.endswith(("_proj.weight", ".w1.weight", ".w2.weight", ".w3.weight"))     # Mixtral's w1/w2/w3
        if not linear or (experts_only and ".experts." not in name):
            continue
        if bits == 4:
            packed, qs = bnbf.quantize_4bit(w, blocksize=64, compress_statistics=True, quant_type="nf4")
            quant[name] = packed
            quant.update({f"{name}.{k}": v for k, v in qs.as_dict(packed=True).items()})
            dense[name] = bnbf.dequantize_4bit(packed, qs)
        else:
            cb, scb, _ = bnbf.int8_vectorwise_quant(w.half())
            quant[name], quant[name.replace(".weight", ".SCB")] = cb, scb
            dense[name] = cb.float() * scb[:, None] / 127
    return quant, dense


@pytest.mark.parametrize("source", ["inflight", "nf4", "int8"])
def test_bitsandbytes_moe_equals_its_dequantized_reference(tmp_path, source):
    """quantization="bitsandbytes" on a 32-bit MoE checkpoint (every expert's gate, up and down quantized to NF4 as
    they load, as the attention's), and 4-bit / 8-bit checkpoints as transformers saves them: tokens and logprobs
    equal those of the model with the dequantized weights; the experts are bitsandbytes layers."""
    pytest.importorskip("bitsandbytes")
    from safetensors.torch import load_file
    # experts' rows of 64 weights at least: bitsandbytes 0.50's CPU dequantization mishandles shorter rows
    path = _save(tmp_path / "dense", wide=True, moe_intermediate_size=64)
    state = load_file(next((tmp_path / "dense").glob("*.safetensors")))
    quant, dense = bnb_checkpoint(state, 8 if source == "int8" else 4)
    if source == "inflight":
        llm, tokens, logprobs = _run(path, quantization="bitsandbytes")
    else:
        config = ({"quant_method": "bitsandbytes", "load_in_8bit": True} if source == "int8" else
                  {"quant_method": "bitsandbytes", "load_in_4bit": True, "bnb_4bit_quant_type": "nf4",
                   "bnb_4bit_use_double_quant": True})
        llm, tokens, logprobs = _run(_rewrite(path, tmp_path / "q", quant, config))
    _, ref_tokens, ref_logprobs = _run(_rewrite(path, tmp_path / "ref", dense))
    experts = llm.llm_engine.core.runner.model.model.layers[1].mlp.experts
    assert type(experts.quant_method).__name__ == "BitsAndBytesMoEMethod" and not hasattr(experts, "w13")
    on_gpu = not hasattr(experts, "expert_layers")     # stacked at load for the fused kernels
    if on_gpu:
        assert getattr(experts, "w2_int8" if source == "int8" else "w2_packed").dtype == (
            torch.int8 if source == "int8" else torch.uint8)
    else:
        down = experts.expert_layers[3].down_proj
        assert (down.weight.dtype == torch.int8) if source == "int8" else (down.bnb_packed[0].dtype == torch.uint8)
    assert tokens == ref_tokens
    # int8's error is small enough to need the tighter bound to tell quantized experts from dense ones (on the CPU;
    # on CUDA the attention's int8 layers run LLM.int8(), approximate: tests/unit/test_quant_bnb.py INT8_ON_GPU_TOL)
    tol = dict(rtol=1e-5, atol=1e-6) if source == "int8" else dict(rtol=1e-3, atol=1e-5)
    if source == "int8" and on_gpu:
        tol = dict(rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(torch.tensor(logprobs), torch.tensor(ref_logprobs), **tol)
    if on_gpu:
        return
    # The GPU's form, built here on the CPU: the stacks that every forward dequantizes for the fused kernels give
    # each expert's weights bit for bit as its bitsandbytes layers do.
    expected = [[layer.quant_method.dequantized_weight(layer, torch.float32) for layer in pair]
                for pair in experts.quant_method.layer_pairs(experts)]
    experts.quant_method.stack(experts)
    args = experts.quant_method.kernel_args(experts)
    assert args["w13"].shape == (4, 2 * 64, 64) and args["w2"].shape == (4, 64, 64)
    for e, (gate_up, down) in enumerate(expected):
        assert torch.equal(args["w13"][e], gate_up) and torch.equal(args["w2"][e], down)


@pytest.mark.parametrize("fmt", ["nf4", "int8"])
def test_bitsandbytes_skip_list_names_modules_as_transformers_does(tmp_path, fmt):
    """A checkpoint whose llm_int8_skip_modules names a run of the modules' path (``self_attn``) keeps those layers
    dense and the experts quantized, as transformers saved them (vLLM's component rule); tokens and logprobs equal
    the dequantized reference."""
    pytest.importorskip("bitsandbytes")
    from safetensors.torch import load_file
    path = _save(tmp_path / "dense", wide=True, moe_intermediate_size=64)
    config, quant, dense = experts_only_checkpoint(load_file(next((tmp_path / "dense").glob("*.safetensors"))), fmt)
    llm, tokens, logprobs = _run(_rewrite(path, tmp_path / "q", quant, config))
    _, ref_tokens, ref_logprobs = _run(_rewrite(path, tmp_path / "ref", dense))
    layer = llm.llm_engine.core.runner.model.model.layers[0]
    assert layer.self_attn.qkv_proj.quant_method is None and layer.self_attn.o_proj.quant_method is None
    assert type(layer.mlp.experts.quant_method).__name__ == "BitsAndBytesMoEMethod"
    assert tokens == ref_tokens
    torch.testing.assert_close(torch.tensor(logprobs), torch.tensor(ref_logprobs), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("fmt", ["nf4", "int8", "awq"])
def test_a_missing_expert_scale_or_state_is_named(tmp_path, fmt):
    """An expert's weight without its scales (int8's SCB, NF4's absmax, AWQ's scales) is an error naming it, not
    zeros or random scales."""
    if fmt != "awq":
        pytest.importorskip("bitsandbytes")
    from safetensors.torch import load_file
    path = _save(tmp_path / "dense", wide=True, moe_intermediate_size=64)
    state = load_file(next((tmp_path / "dense").glob("*.safetensors")))
    config, quant, _ = (_int_formats()._awq_checkpoint(state, 32) if fmt == "awq" else
                        experts_only_checkpoint(state, fmt))
    kind = {"nf4": "weight.absmax", "int8": "SCB", "awq": "scales"}[fmt]
    del quant[f"model.layers.1.mlp.experts.2.up_proj.{kind}"]
    with pytest.raises(ValueError, match="missing expert tensors for model.layers.1.mlp.experts: expert 2 up "
                                         + kind.replace(".", "_")):
        _run(_rewrite(path, tmp_path / "q", quant, config))
