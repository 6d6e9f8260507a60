"""FP8 quantization (pagedllm/model/quantization/fp8.py) on the CPU: online quantization at load, fp8 checkpoints
(per-tensor with fused parts, static input scales, 128x128 blocks, compressed-tensors per-channel), the device check
and the configuration errors. Each layer is built as the models build it and filled through its weight loaders."""
from __future__ import annotations

import pytest
import torch

from pagedllm.kernels.quant.fp8 import (FP8_DTYPE, FP8_MAX, fp8_linear_reference, fp8_scaled_mm, per_tensor_quantize,
                                        per_token_quant_fp8_torch)
from pagedllm.model.layers.linear import MergedColumnParallelLinear, QKVParallelLinear, RowParallelLinear
from pagedllm.model.quantization.fp8 import Fp8Config, compressed_tensors_fp8_method, is_layer_skipped

QKV_SIZES = [64, 32, 32]     # hidden 64, head_dim 16, 4 query heads, 2 KV heads


def qkv_layer(method_config: Fp8Config, bias: bool = False):
    layer = QKVParallelLinear(64, 16, 4, 2, bias=bias)
    method = method_config.get_linear_method(layer, "model.layers.0.self_attn.qkv_proj")
    method.create_weights(layer, 64, QKV_SIZES, torch.float32)
    return layer, method


def load(param, tensor, shard_id=None):
    if shard_id is None:
        param.weight_loader(param, tensor)
    else:
        param.weight_loader(param, tensor, shard_id)


def test_online_per_tensor_quantizes_the_fused_weight_and_matmul_uses_its_dequantized_value():
    torch.manual_seed(0)
    layer, method = qkv_layer(Fp8Config.from_config({}), bias=True)
    parts = {s: torch.randn(n, 64) for s, n in zip("qkv", QKV_SIZES)}
    for s in "qkv":
        load(layer.weight, parts[s], s)
        load(layer.bias, torch.randn(dict(zip("qkv", QKV_SIZES))[s]), s)
    method.process_weights_after_loading(layer)

    full = torch.cat(list(parts.values()))
    assert layer.weight.dtype == FP8_DTYPE and tuple(layer.weight.shape) == (128, 64)
    assert torch.allclose(layer.weight_scale, full.abs().max() / FP8_MAX)
    expected_w = (full / (full.abs().max() / FP8_MAX)).to(FP8_DTYPE).float() * layer.weight_scale
    assert torch.equal(method.dequantized_weight(layer, torch.float32), expected_w)
    # e4m3 keeps 3 mantissa bits: every weight within 1/16 of itself (relative) or of the smallest step
    assert ((expected_w - full).abs() <= full.abs() / 16 + layer.weight_scale * 2 ** -9).all()
    x = torch.randn(5, 64)
    torch.testing.assert_close(method.apply(layer, x, layer.bias), x @ expected_w.t() + layer.bias,
                               rtol=1e-5, atol=1e-5)


def test_online_per_channel_has_one_scale_per_output_row():
    torch.manual_seed(1)
    layer, method = qkv_layer(Fp8Config(weight_per_channel=True))
    full = torch.randn(128, 64) * torch.linspace(0.1, 10, 128)[:, None]
    load(layer.weight, full)
    method.process_weights_after_loading(layer)
    assert layer.weight_scale.shape == (128,)
    torch.testing.assert_close(layer.weight_scale, full.abs().amax(dim=1) / FP8_MAX)
    rel = (method.dequantized_weight(layer, torch.float32) - full).abs() / full.abs().amax(dim=1, keepdim=True)
    assert rel.max() <= 1 / 16


def test_checkpoint_fused_parts_are_requantized_to_the_largest_scale_and_static_input_scale_is_the_max():
    torch.manual_seed(2)
    cfg = Fp8Config.from_config({"quant_method": "fp8", "activation_scheme": "static"})
    assert cfg.is_checkpoint_fp8_serialized
    layer = MergedColumnParallelLinear(64, [48, 48])
    method = cfg.get_linear_method(layer, "model.layers.0.mlp.gate_up_proj")
    method.create_weights(layer, 64, [48, 48], torch.float32)
    quantized = [per_tensor_quantize(torch.randn(48, 64) * m) for m in (1.0, 7.0)]
    for i, (q, s) in enumerate(quantized):
        load(layer.weight, q, i)
        load(layer.weight_scale, s.reshape(()), i)     # checkpoints store scalar scales
        load(layer.input_scale, torch.tensor([0.01, 0.03][i]), i)
    method.process_weights_after_loading(layer)

    max_scale = quantized[1][1]
    assert torch.equal(layer.weight_scale, max_scale.reshape(1))
    assert torch.equal(layer.input_scale, torch.tensor([0.03]))
    # vLLM's rule: dequantize each part with its scale, quantize again with the max
    expected = torch.cat([(q.float() * s / max_scale).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE) for q, s in quantized])
    assert torch.equal(layer.weight.view(torch.uint8), expected.view(torch.uint8))
    # the larger part was already at the max scale: unchanged
    assert torch.equal(layer.weight[48:].view(torch.uint8), quantized[1][0].view(torch.uint8))


def test_checkpoint_missing_a_part_scale_is_an_error():
    layer = MergedColumnParallelLinear(64, [48, 48])
    method = Fp8Config(is_checkpoint_fp8_serialized=True).get_linear_method(layer, "model.layers.0.mlp.gate_up_proj")
    method.create_weights(layer, 64, [48, 48], torch.float32)
    load(layer.weight_scale, torch.tensor(0.5), 0)
    with pytest.raises(ValueError, match="missing weight_scale"):
        method.process_weights_after_loading(layer)


def test_block_wise_checkpoint_loads_each_part_s_block_scales_and_multiplies_the_block_dequantized_weight():
    torch.manual_seed(3)
    cfg = Fp8Config.from_config({"quant_method": "fp8", "activation_scheme": "dynamic", "weight_block_size": [16, 32]})
    layer, method = qkv_layer(cfg)
    assert tuple(layer.weight_scale_inv.shape) == (8, 2)
    ref_rows = []
    for s, n in zip("qkv", QKV_SIZES):
        q = (torch.randn(n, 64) * 100).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)
        scale_inv = torch.rand(n // 16, 2) + 0.5
        load(layer.weight, q, s)
        load(layer.weight_scale_inv, scale_inv, s)
        # the format's definition, tile by tile: W[r, c] = q[r, c] * scale_inv[r // 16, c // 32]
        rows = torch.empty(n, 64)
        for r in range(n):
            for c in range(64):
                rows[r, c] = q[r, c].float() * scale_inv[r // 16, c // 32]
        ref_rows.append(rows)
    method.process_weights_after_loading(layer)
    ref = torch.cat(ref_rows)
    assert torch.equal(method.dequantized_weight(layer, torch.float32), ref)
    x = torch.randn(3, 64)
    torch.testing.assert_close(method.apply(layer, x, None), x @ ref.t(), rtol=1e-5, atol=1e-5)


def test_compressed_tensors_fp8_channel_scheme_reads_n_by_1_scales():
    method = compressed_tensors_fp8_method(
        {"type": "float", "num_bits": 8, "strategy": "channel", "dynamic": False, "symmetric": True},
        {"type": "float", "num_bits": 8, "strategy": "token", "dynamic": True}, "float-quantized")
    assert method is not None and method.config.weight_per_channel and method.config.activation_scheme == "dynamic"
    layer = RowParallelLinear(64, 40)
    method.create_weights(layer, 64, [40], torch.float32)
    q = torch.randn(40, 64).to(FP8_DTYPE)
    scale = torch.rand(40, 1) + 0.1
    load(layer.weight, q)
    load(layer.weight_scale, scale)
    method.process_weights_after_loading(layer)
    assert torch.equal(method.dequantized_weight(layer, torch.float32), q.float() * scale)
    static = compressed_tensors_fp8_method({"type": "float", "num_bits": 8, "strategy": "tensor"},
                                           {"type": "float", "num_bits": 8, "strategy": "tensor", "dynamic": False},
                                           "float-quantized")
    assert static.config.activation_scheme == "static"
    assert compressed_tensors_fp8_method({"type": "int", "num_bits": 4}, None, "pack-quantized") is None


def test_scaled_mm_row_wise_matches_the_dequantized_reference():
    # torch._scaled_mm also runs on the CPU (torch >= 2.6): the GPU path's GEMM, checked here without a GPU.
    torch.manual_seed(4)
    x = torch.randn(7, 64, dtype=torch.bfloat16)
    wq, ws = per_tensor_quantize(torch.randn(48, 64))
    qx, sx = per_token_quant_fp8_torch(x)
    bias = torch.randn(48, dtype=torch.bfloat16)
    y = fp8_scaled_mm(qx, sx, wq, ws, bias, torch.bfloat16)
    ref = fp8_linear_reference(x, wq, ws, bias)
    assert y.dtype == torch.bfloat16
    assert ((y.float() - ref).norm() / ref.norm()).item() < 1e-2


@pytest.mark.parametrize("capability,ok", [((8, 0), False), ((8, 6), False), ((8, 9), True), ((9, 0), True)])
def test_verify_device_needs_sm89_on_cuda(monkeypatch, capability, ok):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    cfg = Fp8Config.online()
    cfg.verify_device(torch.device("cpu"))      # the CPU path: any CPU
    if ok:
        cfg.verify_device(torch.device("cuda", 0))
    else:
        with pytest.raises(ValueError, match=f"fp8 is not supported for the current GPU. Minimum capability: 89. "
                                             f"Current capability: {capability[0]}{capability[1]}"):
            cfg.verify_device(torch.device("cuda", 0))


def test_configuration_errors():
    with pytest.raises(ValueError, match="Unsupported activation scheme per-block"):
        Fp8Config.from_config({"quant_method": "fp8", "activation_scheme": "per-block"})
    with pytest.raises(ValueError, match="online quantization .* is dynamic only"):
        Fp8Config(activation_scheme="static")
    with pytest.raises(ValueError, match="block-wise quantization only supports dynamic activation scheme"):
        Fp8Config.from_config({"quant_method": "fp8", "activation_scheme": "static", "weight_block_size": [128, 128]})
    with pytest.raises(ValueError, match="must have 2 dimensions"):
        Fp8Config.from_config({"quant_method": "fp8", "weight_block_size": [128]})
    with pytest.raises(ValueError, match="Unsupported FP8 format"):
        Fp8Config.from_config({"quant_method": "fp8", "fmt": "e5m2"})


def test_ignored_layers_name_checkpoint_modules_and_keep_lm_head_dense():
    cfg = Fp8Config.from_config({"quant_method": "fp8", "ignored_layers": ["model.layers.1.self_attn.q_proj",
                                                                           "model.layers.1.self_attn.k_proj",
                                                                           "model.layers.1.self_attn.v_proj",
                                                                           "model.layers.0.mlp.down_proj"]})
    assert cfg.get_linear_method(None, "model.layers.1.self_attn.qkv_proj") is None
    assert cfg.get_linear_method(None, "model.layers.0.self_attn.qkv_proj") is not None
    assert cfg.get_linear_method(None, "model.layers.0.mlp.down_proj") is None
    assert cfg.get_linear_method(None, "lm_head") is None
    with pytest.raises(ValueError, match="some but not all shards of model.layers.0.self_attn.qkv_proj"):
        is_layer_skipped(cfg, "model.layers.0.self_attn.qkv_proj", ["model.layers.0.self_attn.q_proj"])
    assert is_layer_skipped(cfg, "model.layers.3.mlp.down_proj", ["re:.*mlp.down_proj"])


# ---- end to end: LLM(...) on tiny checkpoints written per the formats' specifications ---------------------------------
# the int formats' tiny-model helpers
from test_quant_int_formats import LINEARS, _check_against_reference, _run, _save, _tiny  # noqa: E402

FUSED = {"qkv": ("q_proj", "k_proj", "v_proj"), "gate_up": ("gate_proj", "up_proj")}


def _linear_groups(state: dict) -> list[list[str]]:
    """The checkpoint's linear weight names, grouped as our fused layers hold them."""
    groups = []
    for prefix in sorted({k.rsplit(".", 2)[0] for k in state if any(f".{n}." in k for n in LINEARS)}):
        for parts in list(FUSED.values()) + [("o_proj",), ("down_proj",)]:
            names = [f"{prefix}.{p}.weight" for p in parts]
            if all(n in state for n in names):
                groups.append(names)
    return groups


def _block_quantize(w: torch.Tensor, bn: int, bk: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``w`` in e4m3 with one scale per ``bn x bk`` tile: (fp8 weight, scales [N / bn, K / bk], dequantized)."""
    tiles = w.reshape(w.shape[0] // bn, bn, w.shape[1] // bk, bk)
    scale = tiles.abs().amax(dim=(1, 3)) / FP8_MAX
    q = (tiles / scale[:, None, :, None]).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)
    return q.reshape(w.shape), scale, (q.float() * scale[:, None, :, None]).reshape(w.shape)


def _weights_bytes(llm) -> float:
    return llm.llm_engine.core.runner.startup_info()["weights_gib"] * 2**30


# "fp8_per_tensor": vLLM's online-quantization name for the same scheme (docs: features/quantization/online)
@pytest.mark.parametrize("method", ["fp8", "fp8_per_tensor"])
def test_online_fp8_matches_the_fp8_dequantized_reference_and_halves_linear_bytes(tmp_path, caplog, method):
    config, state = _tiny("llama")
    path = _save(tmp_path / "dense", config, state)
    reference = dict(state)
    for names in _linear_groups(state):       # one per-tensor scale per fused layer: amax over its parts / 448
        scale = max(state[n].abs().max() for n in names) / FP8_MAX
        for n in names:
            reference[n] = (state[n] / scale).to(FP8_DTYPE).float() * scale
    rpath = _save(tmp_path / "ref", config, reference)
    _, ref_tokens, ref_logprobs = _run(rpath)
    import logging
    with caplog.at_level(logging.INFO, logger="pagedllm"):
        llm, tokens, logprobs = _run(path, quantization=method)
    assert tokens == ref_tokens
    torch.testing.assert_close(torch.tensor(logprobs), torch.tensor(ref_logprobs), rtol=1e-3, atol=1e-5)
    assert "(fp8 e4m3, per-tensor)" in caplog.text


def test_online_fp8_weights_take_a_quarter_of_fp32_bytes_on_the_start_up_line(tmp_path):
    from pagedllm import LLM
    config, state = _tiny("llama")
    path = _save(tmp_path / "dense", config, state)
    # the start-up figure, read before any forward (the CPU packs dense weights for oneDNN at the first one)
    sizes = {q: _weights_bytes(LLM(model=path, skip_tokenizer_init=True, dtype="float32", max_model_len=64,
                                   kv_cache_memory_gb=0.01, quantization=q)) for q in (None, "fp8")}
    linear_numel = sum(state[n].numel() for g in _linear_groups(state) for n in g)
    # fp32 -> e4m3: 3 bytes fewer per linear weight, plus one fp32 scale per layer (qkv, o, gate_up, down in each
    # of the 2 decoder layers); embeddings, norms and lm_head stay dense
    assert sizes[None] - sizes["fp8"] == pytest.approx(3 * linear_numel - 4 * 8, abs=0.5)


@pytest.mark.parametrize("block", [None, [32, 64]])
def test_fp8_checkpoint_matches_its_dequantized_reference(tmp_path, block):
    config, state = _tiny("qwen2")       # QKV bias: stays dense beside the fp8 weight
    torch.manual_seed(5)
    quant, reference = dict(state), dict(state)
    for names in _linear_groups(state):
        if block is None:
            # per-tensor e4m3 per checkpoint module (as llm-compressor / AutoFP8 write them), static input scales
            for n in names:
                scale = state[n].abs().max() / FP8_MAX * (1 + torch.rand(()))    # parts get different scales
                quant[n] = (state[n] / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)
                quant[n.replace(".weight", ".weight_scale")] = scale.reshape(())
                quant[n.replace(".weight", ".input_scale")] = torch.rand(()) + 0.01
            # our fused layer: every part requantized to the largest scale (vLLM's rule)
            top = max(quant[n.replace(".weight", ".weight_scale")] for n in names)
            for n in names:
                part = quant[n].float() * quant[n.replace(".weight", ".weight_scale")]
                reference[n] = (part / top).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE).float() * top
        else:
            for n in names:      # DeepSeek / Qwen3-FP8: one scale per bn x bk tile, stored as weight_scale_inv
                quant[n], quant[n.replace(".weight", ".weight_scale_inv")], reference[n] = _block_quantize(state[n],
                                                                                                         *block)
    quant_config = {"quant_method": "fp8", "activation_scheme": "static" if block is None else "dynamic"}
    if block is not None:
        quant_config.update(weight_block_size=block, fmt="e4m3")
    qpath = _save(tmp_path / "fp8", dict(config, quantization_config=quant_config), quant)
    _, ref_tokens, ref_logprobs = _run(_save(tmp_path / "ref", config, reference))
    llm, tokens, logprobs = _run(qpath)       # detected from config.json
    assert llm.llm_engine.core.config.quant_config.name == "fp8"
    assert tokens == ref_tokens
    torch.testing.assert_close(torch.tensor(logprobs), torch.tensor(ref_logprobs), rtol=1e-3, atol=1e-5)


def _ct_fp8_channel_checkpoint(state: dict) -> tuple[dict, dict, dict]:
    """compressed-tensors FP8_DYNAMIC (llm-compressor's): e4m3 weights with a scale per row, dynamic per-token
    activations; its config, tensors and the dequantized reference."""
    quant, reference = dict(state), dict(state)
    for names in _linear_groups(state):
        for n in names:
            scale = state[n].abs().amax(dim=1, keepdim=True) / FP8_MAX
            quant[n] = (state[n] / scale).to(FP8_DTYPE)
            quant[n.replace(".weight", ".weight_scale")] = scale
            reference[n] = quant[n].float() * scale
    quant_config = {"quant_method": "compressed-tensors", "format": "float-quantized", "ignore": ["lm_head"],
                    "config_groups": {"group_0": {
                        "targets": ["Linear"],
                        "weights": {"type": "float", "num_bits": 8, "strategy": "channel", "dynamic": False,
                                    "symmetric": True},
                        "input_activations": {"type": "float", "num_bits": 8, "strategy": "token", "dynamic": True,
                                              "symmetric": True}}}}
    return quant_config, quant, reference


def test_compressed_tensors_fp8_dynamic_channel_checkpoint(tmp_path):
    config, state = _tiny("llama")
    quant_config, quant, reference = _ct_fp8_channel_checkpoint(state)
    qpath = _save(tmp_path / "ct", dict(config, quantization_config=quant_config), quant)
    _, ref_tokens, ref_logprobs = _run(_save(tmp_path / "ref", config, reference))
    _, tokens, logprobs = _run(qpath)
    assert tokens == ref_tokens
    torch.testing.assert_close(torch.tensor(logprobs), torch.tensor(ref_logprobs), rtol=1e-3, atol=1e-5)


def test_compressed_tensors_fp8_block_checkpoint(tmp_path):
    """llm-compressor's FP8_BLOCK scheme (strategy 'block', block_structure [rows, columns]; the scales stored as
    weight_scale, one per tile; activations dynamic per group of 128), which vLLM reads as its block FP8: it was
    'weight strategy 'block' is not supported'. Equals its dequantized reference."""
    bn, bk = 32, 64

    def make(state: dict) -> tuple[dict, dict, dict]:
        quant, reference = dict(state), dict(state)
        for names in _linear_groups(state):
            for n in names:
                quant[n], quant[n.replace(".weight", ".weight_scale")], reference[n] = _block_quantize(state[n], bn,
                                                                                                       bk)
        weights = {"type": "float", "num_bits": 8, "strategy": "block", "block_structure": [bn, bk], "dynamic": False,
                   "symmetric": True}
        activations = {"type": "float", "num_bits": 8, "strategy": "group", "group_size": 128, "dynamic": True,
                       "symmetric": True}
        return {"quant_method": "compressed-tensors", "format": "float-quantized", "ignore": ["lm_head"],
                "config_groups": {"group_0": {"targets": ["Linear"], "weights": weights,
                                              "input_activations": activations}}}, quant, reference

    llm = _check_against_reference(tmp_path, "qwen2", make)
    assert llm.llm_engine.core.config.quant_config.name == "compressed-tensors"


def test_checkpoint_kv_cache_scales_load_and_are_named_when_unused(tmp_path, caplog):
    """A checkpoint with a kv_cache_scheme (llm-compressor's FP8 KV cache: self_attn.k_scale / v_scale; older FP8
    exports: self_attn.kv_scale) loads (it failed: 'Checkpoint tensor ...k_scale has no matching parameter') and
    runs as without them; the fp8 KV cache does not apply them yet, and says so."""
    import logging
    config, state = _tiny("llama")
    quant_config, quant, _ = _ct_fp8_channel_checkpoint(state)
    _, ref_tokens, ref_logprobs = _run(_save(tmp_path / "plain", dict(config, quantization_config=quant_config),
                                             quant))
    quant_config["kv_cache_scheme"] = {"type": "float", "num_bits": 8, "strategy": "tensor", "dynamic": False,
                                       "symmetric": True}
    scales = {"model.layers.0.self_attn.k_scale": torch.tensor(0.05), "model.layers.0.self_attn.v_scale":
              torch.tensor(0.02), "model.layers.1.self_attn.kv_scale": torch.tensor(0.03)}
    path = _save(tmp_path / "kv", dict(config, quantization_config=quant_config), {**quant, **scales})
    _, tokens, logprobs = _run(path)
    assert tokens == ref_tokens
    torch.testing.assert_close(torch.tensor(logprobs), torch.tensor(ref_logprobs), rtol=1e-3, atol=1e-5)
    with caplog.at_level(logging.WARNING, logger="pagedllm"):
        _run(path, kv_cache_dtype="fp8")
    assert ("The checkpoint's 3 KV-cache scales (k_scale / v_scale, from 0.02 to 0.05) are not applied yet"
            in caplog.text)


def test_fp8_checkpoint_with_unknown_activation_scheme_is_rejected_at_start(tmp_path):
    config, state = _tiny("llama")
    path = _save(tmp_path / "bad", dict(config, quantization_config={"quant_method": "fp8",
                                                                     "activation_scheme": "per-block"}), state)
    from pagedllm import LLM
    with pytest.raises(ValueError, match="Unsupported activation scheme per-block"):
        LLM(model=path, skip_tokenizer_init=True, max_model_len=64, kv_cache_memory_gb=0.01)
