"""Weight-only integer checkpoints (AWQ, GPTQ, compressed-tensors pack-quantized) load and run on the CPU.

Each test quantizes a tiny random model's fp32 weights with code written from the format's published description
(AutoAWQ's GEMM packing, AutoGPTQ's / GPTQModel's packing, compressed-tensors' pack-quantized; and compressed-tensors'
own packer where the library is installed), saves it with its ``quantization_config``, and saves the same weights
dequantized to fp32 as a plain dense checkpoint: the reference. Both load through ``LLM``; the quantized model's
log-probabilities must equal the reference's within 1e-3 relative and its greedy tokens must be the same.
"""
from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch

from pagedllm import LLM, SamplingParams
from pagedllm.kernels.quant.cpu import cpu_packed_matmul, prepare_cpu_weight
from pagedllm.kernels.quant.packed import PackedWeight, pack_along_k, reference_matmul

VOCAB = 1024
PROMPTS = [[11, 12, 13, 14, 15], [101, 57, 300, 42, 42, 9, 871, 5, 5, 5, 77, 640, 13, 250, 999, 3, 18]]
GREEDY = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True, logprobs=3)
LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
FUSED_INPUTS = {"q_proj": "qkv", "k_proj": "qkv", "v_proj": "qkv", "gate_proj": "gate_up", "up_proj": "gate_up"}


# ---- a tiny model ---------------------------------------------------------------------------------------------------
def _tiny(arch: str = "llama", seed: int = 0):
    """HF config dict and fp32 state dict of a tiny model whose projections take groups of 128 (hidden 128,
    intermediate 256; 4 heads of 32, 2 KV heads)."""
    import transformers
    cfg_cls, model_cls = {"llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
                          "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
                          "qwen3": (transformers.Qwen3Config, transformers.Qwen3ForCausalLM)}[arch]
    cfg = cfg_cls(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=32, vocab_size=VOCAB, max_position_embeddings=512,
                  tie_word_embeddings=False)
    torch.manual_seed(seed)
    model = model_cls(cfg).eval()
    with torch.no_grad():        # larger projections than HF's init (std 0.02), so quantization changes the output
        for name, p in model.named_parameters():
            if any(f".{n}." in name for n in LINEARS) and name.endswith("weight"):
                p.normal_(0.0, 0.08)
    return cfg.to_dict(), {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}


def _save(path, config: dict, tensors: dict[str, torch.Tensor]) -> str:
    from safetensors.torch import save_file
    path.mkdir(parents=True, exist_ok=True)
    architecture = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM"}
    config = dict(config, architectures=[architecture[config["model_type"]]], dtype="float32")
    with open(path / "config.json", "w") as f:
        json.dump(config, f)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path / "model.safetensors"))
    return str(path)


def _quantize(w: torch.Tensor, bits: int, group: int, sym: bool, g_idx: torch.Tensor | None = None):
    """Round-to-nearest ``w`` [N, K] -> unsigned ``q`` [N, K], zero points ``z`` and scales ``s`` [N, K / G]
    (fp16, as checkpoints store them), with ``W ~= (q - z) * s``; ``g_idx``: each input row's group."""
    N, K = w.shape
    group = K if group == -1 else group
    g_idx = torch.arange(K) // group if g_idx is None else g_idx
    maxq = 2 ** bits - 1
    q = torch.zeros(N, K, dtype=torch.int64)
    z = torch.zeros(N, K // group, dtype=torch.int64)
    s = torch.zeros(N, K // group, dtype=torch.float16)
    for g in range(K // group):
        rows = (g_idx == g).nonzero().flatten()
        wg = w[:, rows]
        if sym:
            scale = (wg.abs().amax(dim=1) * 2 / maxq).clamp(min=1e-5)
            zero = torch.full((N,), 2 ** (bits - 1), dtype=torch.int64)
        else:
            lo, hi = wg.amin(dim=1).clamp(max=0), wg.amax(dim=1).clamp(min=0)
            scale = ((hi - lo) / maxq).clamp(min=1e-5)
            zero = torch.round(-lo / scale).to(torch.int64).clamp(1, maxq)    # >= 1: GPTQ v1 stores z - 1
        scale = scale.half()
        q[:, rows] = torch.clamp(torch.round(wg / scale.float()[:, None]) + zero[:, None], 0, maxq).to(torch.int64)
        z[:, g], s[:, g] = zero, scale
    return q, z, s, g_idx


def _dequantize(q, z, s, g_idx):
    return (q - z[:, g_idx]).to(torch.float32) * s.to(torch.float32)[:, g_idx]


def _pack_words(values: np.ndarray, bits: int, order=None) -> np.ndarray:
    """Pack unsigned ``values`` [R, C] along C into uint32 words of 32 / bits values; word ``j``'s slot ``i`` holds
    value ``j * pack + order[i]`` (AutoGPTQ: order = identity; AutoAWQ: [0, 2, 4, 6, 1, 3, 5, 7])."""
    pack = 32 // bits
    order = list(range(pack)) if order is None else order
    R, C = values.shape
    words = np.zeros((R, C // pack), dtype=np.uint32)
    for j in range(C // pack):
        for i in range(pack):
            words[:, j] |= values[:, j * pack + order[i]].astype(np.uint32) << np.uint32(bits * i)
    return words


def _i32(words: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(words.view(np.int32).copy())


def _linear_weights(state, quant: dict, dense: dict):
    """(name, name less 'weight', tensor) of each linear weight of ``state``; every other tensor is copied into
    ``quant`` and ``dense`` as it is."""
    for name, w in state.items():
        if not any(f".{n}." in name for n in LINEARS) or not name.endswith("weight"):
            quant[name] = dense[name] = w
            continue
        yield name, name[:-len("weight")], w


# ---- the formats -----------------------------------------------------------------------------------------------------
def _awq_checkpoint(state, group: int):
    """AutoAWQ's WQLinear_GEMM: qweight [K, N/8], qzeros [K/G, N/8] (interleaved nibble order), scales [K/G, N]."""
    quant, dense = {}, {}
    for name, base, w in _linear_weights(state, quant, dense):
        q, z, s, g_idx = _quantize(w, 4, group, sym=False)
        order = [0, 2, 4, 6, 1, 3, 5, 7]
        quant[base + "qweight"] = _i32(_pack_words(q.t().numpy(), 4, order))
        quant[base + "qzeros"] = _i32(_pack_words(z.t().numpy(), 4, order))
        quant[base + "scales"] = s.t().contiguous()
        dense[name] = _dequantize(q, z, s, g_idx)
    config = {"quant_method": "awq", "bits": 4, "group_size": group, "zero_point": True, "version": "gemm"}
    return config, quant, dense


def _act_order():
    """A function of (weight name, K, group) -> g_idx [K]: the rows quantized in a random "activation" order (row
    perm[i] falls in group i // G), one order per input (q/k/v, and gate/up, read the same activations, so GPTQ
    orders them alike)."""
    gen = torch.Generator().manual_seed(7)
    orders: dict[tuple[str, str], torch.Tensor] = {}

    def g_idx_of(name: str, K: int, group: int) -> torch.Tensor:
        module = name.split(".")[-2]
        layer_input = (name.split(".")[2], FUSED_INPUTS.get(module, module))
        perm = orders.setdefault(layer_input, torch.randperm(K, generator=gen))
        g_idx = torch.empty(K, dtype=torch.int64)
        g_idx[perm] = torch.arange(K) // group
        return g_idx
    return g_idx_of


def _gptq_checkpoint(state, bits: int, group: int, sym: bool, desc_act: bool, v2: bool = False):
    """AutoGPTQ's QuantLinear: qweight [K/pack, N] packed along K, qzeros [K/G, N/pack] (stored z - 1 unless
    gptq_v2), scales [K/G, N], g_idx [K] (a permutation's groups under desc_act); a zero bias for every layer."""
    quant, dense = {}, {}
    act_order = _act_order() if desc_act else None
    for name, base, w in _linear_weights(state, quant, dense):
        q, z, s, g_idx = _quantize(w, bits, group, sym, act_order(name, w.shape[1], group) if act_order else None)
        stored_z = z if v2 else z - 1
        quant[base + "qweight"] = _i32(_pack_words(q.numpy(), bits).T.copy())
        quant[base + "qzeros"] = _i32(_pack_words(stored_z.t().numpy(), bits))
        quant[base + "scales"] = s.t().contiguous()
        quant[base + "g_idx"] = g_idx.to(torch.int32)
        if base + "bias" not in state:
            quant[base + "bias"] = torch.zeros(w.shape[0], dtype=torch.float16)
        dense[name] = _dequantize(q, z, s, g_idx)
    config = {"quant_method": "gptq", "bits": bits, "group_size": group, "desc_act": desc_act, "sym": sym}
    if v2:
        config["checkpoint_format"] = "gptq_v2"
    return config, quant, dense


def _ct_config(bits: int, strategy: str, group: int | None, sym: bool, actorder: str | None = None) -> dict:
    return {"quant_method": "compressed-tensors", "format": "pack-quantized", "quantization_status": "compressed",
            "ignore": ["lm_head"],
            "config_groups": {"group_0": {"targets": ["Linear"], "input_activations": None, "output_activations": None,
                                          "weights": {"num_bits": bits, "type": "int", "symmetric": sym,
                                                      "strategy": strategy, "group_size": group, "dynamic": False,
                                                      "actorder": actorder, "observer": "minmax"}}}}


def _ct_checkpoint(state, bits: int, group: int, sym: bool, actorder: str | None = None):
    """compressed-tensors pack-quantized: weight_packed [N, K/pack] (signed q + 2**(bits-1), packed along K),
    weight_scale [N, K/G], weight_zero_point (asymmetric) packed along N, weight_shape; actorder 'group': the rows
    in activation order, each one's group in weight_g_idx [K]."""
    quant, dense = {}, {}
    act_order = _act_order() if actorder == "group" else None
    for name, base, w in _linear_weights(state, quant, dense):
        g_idx = act_order(name, w.shape[1], group) if act_order else None
        q, z, s, g_idx = _quantize(w, bits, group, sym, g_idx)      # unsigned q, z: signed = value - offset
        if act_order:
            quant[base + "weight_g_idx"] = g_idx.to(torch.int32)
        quant[base + "weight_packed"] = _i32(_pack_words(q.numpy(), bits))
        quant[base + "weight_scale"] = s
        if not sym:
            quant[base + "weight_zero_point"] = _i32(_pack_words(z.t().numpy(), bits).T.copy())
        quant[base + "weight_shape"] = torch.tensor(list(w.shape))
        dense[name] = _dequantize(q, z, s, g_idx)
    return (_ct_config(bits, "group" if group != -1 else "channel", group if group != -1 else None, sym, actorder),
            quant, dense)


def _ct_int8_checkpoint(state, strategy: str, activations: dict | None):
    """compressed-tensors int-quantized int8 (llm-compressor's W8A8 / W8A16): weight int8 [N, K] = round(w / s),
    weight_scale [N, 1] per row (channel) or one per module (tensor); static activations add input_scale and
    input_zero_point tensors."""
    quant, dense = {}, {}
    for name, base, w in _linear_weights(state, quant, dense):
        amax = w.abs().amax(dim=1, keepdim=True) if strategy == "channel" else w.abs().max().reshape(1)
        scale = amax / 127
        q = torch.clamp(torch.round(w / scale.reshape(-1, 1) if strategy == "channel" else w / scale), -128, 127)
        quant[base + "weight"] = q.to(torch.int8)
        quant[base + "weight_scale"] = scale.to(torch.float32)
        if activations is not None and not activations.get("dynamic"):
            quant[base + "input_scale"] = torch.tensor([0.02])
            quant[base + "input_zero_point"] = torch.tensor([0], dtype=torch.int8)
        dense[name] = q * (scale.reshape(-1, 1) if strategy == "channel" else scale)
    weights = {"num_bits": 8, "type": "int", "symmetric": True, "strategy": strategy, "dynamic": False}
    config = {"quant_method": "compressed-tensors", "format": "int-quantized", "ignore": ["lm_head"],
              "config_groups": {"group_0": {"targets": ["Linear"], "weights": weights,
                                            "input_activations": activations}}}
    return config, quant, dense


def _ct_library_checkpoint(state, bits: int, group: int, sym: bool):
    """The same format written by compressed-tensors' own compressor (its quantize + pack_to_int32)."""
    ct = pytest.importorskip("compressed_tensors")
    from compressed_tensors.compressors.pack_quantized.base import PackedQuantizationCompressor
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme
    strategy = "group" if group != -1 else "channel"
    args = QuantizationArgs(num_bits=bits, type="int", symmetric=sym, strategy=strategy,
                            group_size=group if group != -1 else None)
    scheme = QuantizationScheme(targets=["Linear"], weights=args)
    quant, dense = {}, {}
    for name, base, w in _linear_weights(state, quant, dense):
        q, z, s, g_idx = _quantize(w, bits, group, sym)
        module_state = {"weight": w, "weight_scale": s.float()}
        if not sym:
            module_state["weight_zero_point"] = (z - 2 ** (bits - 1)).to(torch.int8)
        compressed = PackedQuantizationCompressor.compress(module_state, scheme)
        for key, value in compressed.items():
            quant[base + key] = value
        dense[name] = PackedQuantizationCompressor.decompress(compressed, scheme)["weight"].to(torch.float32)
    assert ct is not None
    return _ct_config(bits, strategy, group if group != -1 else None, sym), quant, dense


# ---- running both ----------------------------------------------------------------------------------------------------
def _run(path, **kw):
    llm = LLM(model=path, skip_tokenizer_init=True, dtype="float32", max_model_len=128, kv_cache_memory_gb=0.01,
              max_num_batched_tokens=16, **kw)
    outs = llm.generate([{"prompt_token_ids": p} for p in PROMPTS], GREEDY, use_tqdm=False)
    tokens = [list(o.outputs[0].token_ids) for o in outs]
    logprobs = [[lp[t].logprob for t, lp in zip(o.outputs[0].token_ids, o.outputs[0].logprobs)] for o in outs]
    return llm, tokens, logprobs


def _check_against_reference(tmp_path, arch, make, config_key: str = "quantization_config", **kw):
    config, state = _tiny(arch)
    quant_config, quant, dense = make(state)
    qpath = _save(tmp_path / "quant", {**config, config_key: quant_config}, quant)
    rpath = _save(tmp_path / "ref", config, dense)
    _, ref_tokens, ref_logprobs = _run(rpath)
    llm, tokens, logprobs = _run(qpath, **kw)
    assert tokens == ref_tokens
    np.testing.assert_allclose(np.array(logprobs), np.array(ref_logprobs), rtol=1e-3, atol=1e-5)
    return llm


def test_awq_matches_dequantized_reference(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="pagedllm"):
        llm = _check_against_reference(tmp_path, "llama", lambda s: _awq_checkpoint(s, 128))
    assert llm.llm_engine.core.config.quant_config.name == "awq"       # detected from config.json
    assert "(awq int4, group 128)" in caplog.text


@pytest.mark.parametrize("arch,bits,group,sym,desc_act,v2", [
    ("llama", 4, 128, True, False, False),
    ("qwen2", 4, 32, False, True, False),      # QKV bias; act-order rows; asymmetric
    ("qwen3", 8, 64, False, False, False),
    ("llama", 4, -1, False, False, True),      # one group per column, gptq_v2 zero points
    ("llama", 8, -1, True, False, False),      # torch's int8 per-channel GEMM
])
def test_gptq_matches_dequantized_reference(tmp_path, arch, bits, group, sym, desc_act, v2):
    _check_against_reference(tmp_path, arch, lambda s: _gptq_checkpoint(s, bits, group, sym, desc_act, v2),
                             quantization="gptq")


@pytest.mark.parametrize("bits,group,sym,actorder", [(4, 128, True, None), (4, 32, False, None), (8, -1, True, None),
                                                     (8, 64, False, None), (4, 32, True, "group"),
                                                     (4, 64, False, "static")])
def test_compressed_tensors_matches_dequantized_reference(tmp_path, bits, group, sym, actorder):
    """actorder 'group' (llm-compressor's GPTQ with activation ordering: weight_g_idx stored) and 'static' (an alias
    of 'weight': the calibration order only) were 'actorder ... is not supported yet'."""
    _check_against_reference(tmp_path, "qwen2", lambda s: _ct_checkpoint(s, bits, group, sym, actorder))


@pytest.mark.parametrize("strategy,activations", [
    ("channel", {"num_bits": 8, "type": "int", "symmetric": True, "strategy": "token", "dynamic": True}),   # W8A8
    ("tensor", {"num_bits": 8, "type": "int", "symmetric": True, "strategy": "tensor", "dynamic": False}),
    ("channel", None),                                                                                         # W8A16
], ids=["w8a8-dynamic", "w8a8-static-tensor", "w8a16"])
def test_compressed_tensors_int8_checkpoint(tmp_path, strategy, activations):
    """int-quantized int8 checkpoints (neuralmagic / RedHatAI '-quantized.w8a8' exports, which vLLM runs on the CPU
    too) were 'compressed-tensors scheme not supported'; they run as int8 weights (activations unrounded)."""
    _check_against_reference(tmp_path, "qwen2", lambda s: _ct_int8_checkpoint(s, strategy, activations))


def _ct_library_naive_checkpoint(state, kind: str):
    """compressed-tensors' own int-quantized / float-quantized compressor: int8 per row with int8 tokens (W8A8), or
    FP8 in 32 x 64 blocks with dynamic groups of 128 (FP8_BLOCK)."""
    pytest.importorskip("compressed_tensors")
    from compressed_tensors.compressors.naive_quantized.base import (FloatQuantizationCompressor,
                                                                     IntQuantizationCompressor)
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme
    if kind == "int8":
        args = QuantizationArgs(num_bits=8, type="int", symmetric=True, strategy="channel")
        act = QuantizationArgs(num_bits=8, type="int", symmetric=True, strategy="token", dynamic=True)
        compressor, fmt = IntQuantizationCompressor, "int-quantized"

        def scale_of(w: torch.Tensor) -> torch.Tensor:
            return w.abs().amax(dim=1, keepdim=True) / 127
    else:
        args = QuantizationArgs(num_bits=8, type="float", symmetric=True, strategy="block", block_structure=[32, 64])
        act = QuantizationArgs(num_bits=8, type="float", symmetric=True, strategy="group", group_size=128,
                               dynamic=True)
        compressor, fmt = FloatQuantizationCompressor, "float-quantized"

        def scale_of(w: torch.Tensor) -> torch.Tensor:
            return w.reshape(w.shape[0] // 32, 32, w.shape[1] // 64, 64).abs().amax(dim=(1, 3)) / 448.0
    scheme = QuantizationScheme(targets=["Linear"], weights=args, input_activations=act)
    quant, dense = {}, {}
    for name, base, w in _linear_weights(state, quant, dense):
        compressed = compressor.compress({"weight": w, "weight_scale": scale_of(w)}, scheme)
        quant.update({base + k: v for k, v in compressed.items()})
        dense[name] = compressor.decompress(compressed, scheme)["weight"].to(torch.float32)
    config = {"quant_method": "compressed-tensors", "format": fmt, "ignore": ["lm_head"],
              "config_groups": {"group_0": {"targets": ["Linear"], "weights": args.model_dump(mode="json"),
                                            "input_activations": act.model_dump(mode="json")}}}
    return config, quant, dense


@pytest.mark.parametrize("kind", ["int8", "fp8-block"])
def test_compressed_tensors_library_int8_and_fp8_block_checkpoints(tmp_path, kind):
    """The int8 W8A8 and FP8 block layouts as compressed-tensors' own compressors write them (the specs' tests:
    test_compressed_tensors_int8_checkpoint, test_quant_fp8's block test)."""
    _check_against_reference(tmp_path, "qwen2", lambda s: _ct_library_naive_checkpoint(s, kind))


@pytest.mark.parametrize("bits,group,sym", [(4, 128, True), (4, 64, False), (8, -1, False)])
def test_compressed_tensors_library_checkpoint(tmp_path, bits, group, sym):
    _check_against_reference(tmp_path, "llama", lambda s: _ct_library_checkpoint(s, bits, group, sym))


def _gptq_mixed_checkpoint(state, parts: dict[str, tuple[int, int] | None]):
    """A GPTQ checkpoint whose modules differ: ``parts`` maps a name fragment to (bits, group) or None (kept dense);
    the first fragment a tensor's name holds decides, "" the rest."""
    quant, dense = {}, {}
    for fragment, setting in parts.items():
        chosen = {k: v for k, v in state.items() if fragment in k
                  and next(f for f in parts if f in k) == fragment}
        if setting is None:
            quant.update(chosen)
            dense.update(chosen)
            continue
        _, q, d = _gptq_checkpoint(chosen, setting[0], setting[1], False, False)
        quant.update(q)
        dense.update(d)
    return quant, dense


def test_gptq_dynamic_per_module_settings_and_dense_modules(tmp_path):
    """GPTQModel's dynamic (vLLM reads it): a '-:' rule keeps layer 0's attention dense, a '+:' rule gives layer 1's
    MLP 8 bits in groups of 64 over the base 4 bits in groups of 32; a checkpoint that keeps a module in 16 bits with
    no rule (its safetensors hold a plain weight) loads it dense, as vLLM's reading of the files' dtypes; and
    modules_in_block_to_quantize names the quantized ones. Each equals its dequantized checkpoint; all were errors
    ('dynamic ... not supported', or '...down_proj.weight has no matching parameter')."""
    config, state = _tiny("llama")
    quant, dense = _gptq_mixed_checkpoint(state, {"layers.0.self_attn.": None, "layers.1.mlp.": (8, 64), "": (4, 32)})
    base = {"quant_method": "gptq", "bits": 4, "group_size": 32, "desc_act": False, "sym": False}
    dynamic = {r"-:model\.layers\.0\.self_attn\..*": {}, r"+:.*\.1\.mlp\..*": {"bits": 8, "group_size": 64}}
    _, ref_tokens, ref_logprobs = _run(_save(tmp_path / "ref", config, dense))
    llm, tokens, logprobs = _run(_save(tmp_path / "dyn", dict(config, quantization_config=dict(base, dynamic=dynamic)),
                                       quant))
    assert tokens == ref_tokens
    np.testing.assert_allclose(np.array(logprobs), np.array(ref_logprobs), rtol=1e-3, atol=1e-5)
    assert llm.llm_engine.core.config.quant_config.weight_bytes_note() == "gptq int4, group 32, per-module overrides"

    quant, dense = _gptq_mixed_checkpoint(state, {"layers.1.mlp.": None, "": (4, 32)})
    _, ref_tokens, ref_logprobs = _run(_save(tmp_path / "ref2", config, dense))
    blocks = [["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj"],
              ["layers.0.mlp.gate_proj", "layers.0.mlp.up_proj", "layers.0.mlp.down_proj"]]
    for name, quant_config in (("files", base), ("listed", dict(base, modules_in_block_to_quantize=blocks))):
        _, tokens, logprobs = _run(_save(tmp_path / name, dict(config, quantization_config=quant_config), quant))
        assert tokens == ref_tokens
        np.testing.assert_allclose(np.array(logprobs), np.array(ref_logprobs), rtol=1e-3, atol=1e-5)
    # a rule that splits a fused layer cannot be honoured (one matmul)
    split = dict(base, dynamic={r"-:.*\.q_proj": {}})
    assert _error(tmp_path / "split", split).startswith(
        "GPTQ dynamic: the parts of the fused layer model.layers.0.self_attn.qkv_proj "
        "(model.layers.0.self_attn.q_proj, model.layers.0.self_attn.k_proj, model.layers.0.self_attn.v_proj) "
        "match different rules")


@pytest.mark.parametrize("tied", [False, True])
def test_gptq_quantized_lm_head(tmp_path, tied):
    """GPTQModel's lm_head: true (the LM head quantized too; vLLM's ParallelLMHead takes the GPTQ method): it was
    'GPTQ checkpoints with a quantized lm_head (lm_head: true) are not supported.' The embedding stays dense, also
    when the checkpoint ties it to the head (the head's own GPTQ tensors are what multiplies). Equals the reference
    with the head dequantized."""
    config, state = _tiny("llama")
    if tied:
        config = dict(config, tie_word_embeddings=True)
    quant_config, quant, dense = _gptq_checkpoint(state, 4, 32, True, False)
    # the head quantized by the same builder, under a linear layer's name
    _, head_quant, head_dense = _gptq_checkpoint({"head.o_proj.weight": state["lm_head.weight"]}, 4, 32, True, False)
    quant = {k: v for k, v in quant.items() if k != "lm_head.weight"}
    quant.update({k.replace("head.o_proj.", "lm_head."): v for k, v in head_quant.items()})
    dense["lm_head.weight"] = head_dense["head.o_proj.weight"]
    ref_config = config
    if tied:     # the reference: the same dense embedding, the dequantized head untied from it
        ref_config = dict(config, tie_word_embeddings=False)
    _, ref_tokens, ref_logprobs = _run(_save(tmp_path / "ref", ref_config, dense))
    quant_config = dict(quant_config, lm_head=True)
    llm, tokens, logprobs = _run(_save(tmp_path / "q", dict(config, quantization_config=quant_config), quant))
    assert tokens == ref_tokens
    np.testing.assert_allclose(np.array(logprobs), np.array(ref_logprobs), rtol=1e-3, atol=1e-5)
    model = llm.llm_engine.core.runner.model
    assert model.lm_head.quant_method is not None and model.model.embed_tokens.quant_method is None


def test_compressed_tensors_settings_under_compression_config(tmp_path):
    """Older llm-compressor exports keep their compressed-tensors settings under config.json's compression_config
    (vLLM reads it when quantization_config is absent); it was ignored, and the packed tensors had no parameter.
    A dense sparsity_config (sparsity metadata, weights stored whole) loads."""
    def make(state: dict) -> tuple[dict, dict, dict]:
        config, quant, dense = _ct_checkpoint(state, 4, 32, True)
        return dict(config, sparsity_config={"format": "dense", "sparsity_structure": "unstructured"}), quant, dense

    llm = _check_against_reference(tmp_path, "llama", make, config_key="compression_config")
    assert llm.llm_engine.core.config.quant_config.name == "compressed-tensors"


def test_quantized_image_text_checkpoint_reads_the_top_level_quantization_config(tmp_path):
    """An image-text checkpoint (here Gemma 3's, served as its language model) keeps quantization_config at the top
    level of config.json, not in text_config (as RedHatAI's gemma-3 w4a16 exports); it loaded as a dense model and
    failed on the first packed tensor. Its language model's projections are W4A16 compressed-tensors with the vision
    tower ignored by 're:' entries; tokens and logprobs equal the dequantized checkpoint's."""
    import transformers
    from safetensors.torch import load_file

    from tests.models.test_moe import _rewrite
    text = dict(vocab_size=VOCAB, hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, head_dim=32, sliding_window=8, query_pre_attn_scalar=32,
                layer_types=["sliding_attention", "full_attention"], initializer_range=0.08)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=32,
                  patch_size=8)
    cfg = transformers.Gemma3Config(text_config=text, vision_config=vision, mm_tokens_per_image=4,
                                    image_token_index=VOCAB - 1, boi_token_index=VOCAB - 3, eoi_token_index=VOCAB - 2)
    torch.manual_seed(0)
    transformers.Gemma3ForConditionalGeneration(cfg).save_pretrained(tmp_path / "orig")
    state = load_file(str(tmp_path / "orig" / "model.safetensors"))
    language = {k: v for k, v in state.items() if k.startswith("language_model.")}
    others = {k: v for k, v in state.items() if not k.startswith("language_model.")}
    quant_config, quant, dense = _ct_checkpoint(language, 4, 32, True)
    quant_config["ignore"] = ["lm_head", "re:vision_tower.*", "re:multi_modal_projector.*"]

    orig = str(tmp_path / "orig")
    _, ref_tokens, ref_logprobs = _run(_rewrite(orig, tmp_path / "ref", {**others, **dense}))
    llm, tokens, logprobs = _run(_rewrite(orig, tmp_path / "quant", {**others, **quant}, quant_config))
    assert llm.llm_engine.core.config.quant_config.name == "compressed-tensors"
    assert tokens == ref_tokens
    np.testing.assert_allclose(np.array(logprobs), np.array(ref_logprobs), rtol=1e-3, atol=1e-5)


# ---- the CPU kernels against the canonical reference ---------------------------------------------------------------
@pytest.mark.parametrize("bits,group,kind", [(4, 32, "int4pack"), (4, 128, "int4pack"), (4, 256, "int4pack"),
                                             (4, 16, "dequant"), (8, 256, "int8pack"), (8, 64, "dequant")])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cpu_packed_matmul_matches_reference(bits, group, kind, dtype):
    K, N = 256, 96
    gen = torch.Generator().manual_seed(0)
    q = torch.randint(0, 2 ** bits, (K, N), generator=gen)
    scales = (torch.rand(K // group, N, generator=gen) * 0.02 + 0.001).to(dtype).float()
    offsets = (torch.randn(K // group, N, generator=gen) * 0.05).to(dtype).float()
    w = PackedWeight(pack_along_k(q, bits), scales, offsets, bits, group, perm=torch.randperm(K, generator=gen))
    prepared = prepare_cpu_weight(w, dtype)
    assert prepared.kind == kind
    bias = torch.randn(N, generator=gen).to(dtype)
    for M in (1, 5):
        x = torch.randn(M, K, generator=gen).to(dtype)
        got = cpu_packed_matmul(x, prepared, bias)
        want = reference_matmul(x, w, bias)
        assert got.dtype == dtype and got.shape == (M, N)
        tol = 1e-5 if dtype == torch.float32 else 2e-2
        scale = want.float().abs().max()
        assert (got.float() - want.float()).abs().max() <= tol * scale


# ---- errors ----------------------------------------------------------------------------------------------------------
def _error(tmp_path, quant_config: dict | None, **kw) -> str:
    config, state = _tiny()
    if quant_config is not None:
        config = dict(config, quantization_config=quant_config)
    path = _save(tmp_path / "m", config, state)
    with pytest.raises(ValueError) as e:
        LLM(model=path, skip_tokenizer_init=True, max_model_len=64, kv_cache_memory_gb=0.01, **kw)
    return str(e.value)


def test_unknown_method_lists_supported(tmp_path):
    msg = _error(tmp_path, None, quantization="int3")
    assert "Unknown quantization method: int3" in msg and "'awq'" in msg and "'gptq'" in msg


def test_vllm_methods_pagedllm_lacks_are_named_as_such(tmp_path):
    msg = _error(tmp_path, None, quantization="fbgemm_fp8")
    assert msg.startswith("Quantization method fbgemm_fp8 is a vLLM method that pagedllm does not support yet. "
                          "pagedllm's methods: ['awq', 'gptq'")
    # vLLM's newer names: online schemes and formats pagedllm lacks
    for name in ("fp8_per_block", "int8_per_channel_weight_only", "mxfp8", "online", "modelopt_mxfp8"):
        assert _error(tmp_path, None, quantization=name).startswith(
            f"Quantization method {name} is a vLLM method that pagedllm does not support yet.")
    msg = _error(tmp_path, {"quant_method": "hqq", "nbits": 4})
    assert msg.startswith("Quantization method hqq in the model config is a vLLM method that pagedllm does not "
                          "support yet.")


def test_flag_contradicting_checkpoint(tmp_path):
    msg = _error(tmp_path, {"quant_method": "awq", "bits": 4, "group_size": 128}, quantization="gptq")
    assert msg == ("Quantization method specified in the model config (awq) does not match the quantization method "
                   "specified in the `quantization` argument (gptq).")


def test_online_scheme_name_on_a_quantized_checkpoint_is_vllms_mismatch(tmp_path):
    # fp8_per_tensor quantizes a 16/32-bit checkpoint at load (as quantization="fp8" does); a checkpoint with its
    # own quantization_config, FP8 included, is vLLM's mismatch
    for quant_config in ({"quant_method": "awq", "bits": 4, "group_size": 128},
                         {"quant_method": "fp8", "activation_scheme": "dynamic"}):
        msg = _error(tmp_path, quant_config, quantization="fp8_per_tensor")
        assert msg == (f"Quantization method specified in the model config ({quant_config['quant_method']}) does not "
                       f"match the quantization method specified in the `quantization` argument (fp8_per_tensor).")


def test_marlin_names_are_aliases(tmp_path):
    # vLLM's kernel names read the same checkpoints: gptq_marlin against a gptq checkpoint is no mismatch
    msg = _error(tmp_path, {"quant_method": "gptq", "bits": 3, "group_size": 128}, quantization="gptq_marlin")
    assert "only 4/8-bit weight quantization is supported for GPTQ, but got 3 bits" in msg
    # cpu_awq / cpu_gptq: vLLM's CPU kernels for AWQ / GPTQ checkpoints (the names vLLM itself picks on a CPU)
    assert "only 4-bit weight quantization is supported for AWQ" in _error(
        tmp_path, {"quant_method": "awq", "bits": 8, "group_size": 128}, quantization="cpu_awq")
    assert "only 4/8-bit weight quantization is supported for GPTQ, but got 3 bits" in _error(
        tmp_path, {"quant_method": "gptq", "bits": 3, "group_size": 128}, quantization="cpu_gptq")


def test_moe_wna16_reads_the_checkpoints_awq_or_gptq(tmp_path):
    """vLLM's moe_wna16 (its fused int4/int8 MoE kernel for AWQ and GPTQ checkpoints, which MoE exports' model cards
    tell users to pass) runs the checkpoint's own method; it was 'a vLLM method that pagedllm does not support yet'.
    Another format is vLLM's mismatch; a dense checkpoint says what it reads."""
    llm = _check_against_reference(tmp_path / "awq", "llama", lambda s: _awq_checkpoint(s, 32),
                                   quantization="moe_wna16")
    assert llm.llm_engine.core.config.quant_config.name == "awq"
    msg = _error(tmp_path / "fp8", {"quant_method": "fp8", "activation_scheme": "dynamic"}, quantization="moe_wna16")
    assert msg == ("Quantization method specified in the model config (fp8) does not match the quantization method "
                   "specified in the `quantization` argument (moe_wna16).")
    assert _error(tmp_path / "dense", None, quantization="moe_wna16").startswith(
        "quantization='moe_wna16' reads awq or gptq checkpoints: no quantization_config in config.json")


@pytest.mark.parametrize("quant_config,expected", [
    ({"quant_method": "awq", "bits": 8, "group_size": 128}, "only 4-bit weight quantization is supported for AWQ"),
    ({"quant_method": "awq", "bits": 4, "group_size": 128, "version": "gemv"}, "AWQ version 'gemv' is not supported"),
    ({"quant_method": "gptq", "bits": 4, "group_size": 48}, "group_size 48 must divide it"),
    (_ct_config(4, "tensor", None, True), "weight strategy 'tensor' is not supported"),
    # sparse-compressed weights and online rotations are named (they failed on a tensor name, or would load without
    # their transforms); sparsity metadata over dense weights loads
    (dict(_ct_config(4, "group", 32, True), sparsity_config={"format": "sparse-24-bitmask",
                                                               "sparsity_structure": "2:4"}),
     "compressed-tensors sparsity_config format 'sparse-24-bitmask' (structure '2:4') is not supported"),
    (dict(_ct_config(4, "group", 32, True), transform_config={"config_groups": {"R1": {"type": "hadamard"}}}),
     "compressed-tensors transform_config (online rotations: QuIP / SpinQuant) is not supported yet."),
])
def test_unsupported_settings(tmp_path, quant_config, expected):
    assert expected in _error(tmp_path, quant_config)


def test_a_setting_a_rank_cannot_take_is_a_value_error_naming_the_rank(tmp_path):
    # Group 128 over a row-parallel layer's 128 columns split in two: each rank has half a group. With one rank the
    # same kind of setting raises ValueError in this process; a worker's used to come back as WorkerDied.
    msg = _error(tmp_path, {"quant_method": "awq", "bits": 4, "group_size": 128, "zero_point": True,
                            "version": "gemm"}, tensor_parallel_size=2)
    assert msg.startswith("The input size (64) is not aligned with the quantized weight shape: AWQ group_size 128 "
                          "must divide it (with tensor parallel, this rank's share).")
    assert msg.endswith((" (worker rank 0)", " (worker rank 1)"))      # both fail: the first to answer is named


def test_float16_on_the_cpu_with_a_quantized_checkpoint_names_bfloat16(tmp_path):
    # vLLM's CPU kernels for AWQ / GPTQ run 16-bit activations: bfloat16 is the setting that does here
    assert _error(tmp_path, {"quant_method": "awq", "bits": 4, "group_size": 32}, dtype="float16").endswith(
        "its weights are quantized already; use dtype='bfloat16' (16-bit activations, as vLLM's CPU kernels for "
        "quantized checkpoints run) or 'float32'.")


def test_quantized_flag_on_dense_checkpoint(tmp_path):
    assert "quantization='awq' needs a quantized checkpoint" in _error(tmp_path, None, quantization="awq")


# ---- tensor parallel: packed columns, group rows and per-part zero points shard like the dense weights -----------
@pytest.mark.parametrize("make", [
    lambda s: _awq_checkpoint(s, 32),
    lambda s: _gptq_checkpoint(s, 4, -1, False, False),           # per-column scales: whole on every rank
    lambda s: _gptq_checkpoint(s, 4, 32, False, False),           # groups: each row-parallel rank its g_idx slice
    lambda s: _ct_checkpoint(s, 4, 32, False),                     # zero points packed along the outputs
], ids=["awq-g32", "gptq-channel", "gptq-g32", "ct-asym-g32"])
def test_tensor_parallel_matches_dequantized_reference(tmp_path, make):
    _check_against_reference(tmp_path, "llama", make, tensor_parallel_size=2)


def test_dummy_weights_with_a_quantization_config(tmp_path):
    """load_format='dummy' (the GPU benchmarks' 7B AWQ runs) fills packed integers with random bits and keeps
    GPTQ's g_idx valid."""
    config, state = _tiny()
    quant_config, quant, _ = _gptq_checkpoint(state, 4, 32, False, True)
    path = _save(tmp_path / "q", dict(config, quantization_config=quant_config), quant)
    llm, tokens, logprobs = _run(path, load_format="dummy")
    assert len(tokens[0]) == GREEDY.max_tokens and np.isfinite(np.array(logprobs)).all()


def test_model_without_quantized_layers_rejects(tmp_path):
    import transformers
    cfg = transformers.OPTConfig(hidden_size=64, ffn_dim=128, num_hidden_layers=1, num_attention_heads=4,
                                 vocab_size=VOCAB, max_position_embeddings=128, word_embed_proj_dim=64)
    transformers.OPTForCausalLM(cfg).save_pretrained(tmp_path)
    with open(tmp_path / "config.json") as f:
        config = json.load(f)
    config["quantization_config"] = {"quant_method": "gptq", "bits": 4, "group_size": 32, "desc_act": False}
    with open(tmp_path / "config.json", "w") as f:
        json.dump(config, f)
    with pytest.raises(ValueError, match="Quantization \\(gptq\\) is not supported yet for OPTForCausalLM"):
        LLM(model=str(tmp_path), skip_tokenizer_init=True, max_model_len=64, kv_cache_memory_gb=0.01)


def test_gptq_settings_from_quantize_config_json(tmp_path):
    """Older AutoGPTQ exports keep their settings in quantize_config.json, not in config.json (vLLM reads both)."""
    config, state = _tiny()
    quant_config, quant, dense = _gptq_checkpoint(state, 4, 64, True, False)
    qpath = _save(tmp_path / "quant", config, quant)
    with open(tmp_path / "quant" / "quantize_config.json", "w") as f:
        json.dump({k: v for k, v in quant_config.items() if k != "quant_method"}, f)
    _, ref_tokens, _ = _run(_save(tmp_path / "ref", config, dense))
    llm, tokens, _ = _run(qpath, quantization="gptq")
    assert tokens == ref_tokens and llm.llm_engine.core.config.quant_config.weight_bytes_note() == "gptq int4, group 64"


@pytest.mark.parametrize("make", [lambda s: _gptq_checkpoint(s, 4, 32, True, False),
                                  lambda s: _gptq_checkpoint(s, 4, 32, False, False),
                                  lambda s: _awq_checkpoint(s, 32), lambda s: _ct_checkpoint(s, 4, 32, False)],
                         ids=["gptq-sym", "gptq-asym", "awq", "ct-asym"])
def test_the_gpu_canonical_form_is_row_major(tmp_path, monkeypatch, make):
    """The canonical packed tensors the GPU keeps (here on the CPU: the conversion is the same) are row-major, as the
    Triton kernels index them (GPTQ's offsets came out of the zero-point unpacking transposed; the GPU read them with
    the wrong stride). The kernels themselves: tests/gpu/test_quant_gptq_engine_gpu.py."""
    from pagedllm.model.quantization.int_weight import PackedIntLinearMethod
    monkeypatch.setattr(PackedIntLinearMethod, "cpu_form", staticmethod(lambda w: False))
    config, state = _tiny("qwen2")
    quant_config, quant, _ = make(state)
    llm = LLM(model=_save(tmp_path / "q", dict(config, quantization_config=quant_config), quant),
              skip_tokenizer_init=True, dtype="float32", max_model_len=64, kv_cache_memory_gb=0.01)
    buffers = [(n, b) for n, b in llm.llm_engine.core.runner.model.named_buffers()
               if n.rsplit(".", 1)[-1] in ("quant_qweight", "quant_scales", "quant_offsets")]
    assert len(buffers) == 2 * 4 * 3
    assert [n for n, b in buffers if not b.is_contiguous()] == []
