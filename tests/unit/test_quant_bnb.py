"""bitsandbytes quantization (pagedllm/model/quantization/bitsandbytes.py) on the CPU, through the library's own CPU
backend: in-flight NF4 and pre-quantized 4-bit / 8-bit tensors as transformers saves them, against bitsandbytes' own
dequantization; and the error without the library."""
from __future__ import annotations

import sys
import warnings

import pytest
import torch

from pagedllm.model.layers.linear import MergedColumnParallelLinear, QKVParallelLinear, RowParallelLinear
from pagedllm.model.quantization.bitsandbytes import BitsAndBytesConfig

QKV_SIZES = [64, 32, 32]


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def test_missing_library_gives_the_pip_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)     # import bitsandbytes -> ImportError
    with pytest.raises(ValueError, match=r"pip install bitsandbytes>=0\.45\.0"):
        BitsAndBytesConfig.from_config({})


bnb = pytest.importorskip("bitsandbytes")
bnbf = pytest.importorskip("bitsandbytes.functional")


def test_inflight_nf4_quantizes_each_part_as_it_loads_and_matmul_equals_the_dequantized_weight():
    torch.manual_seed(0)
    cfg = BitsAndBytesConfig.from_config({})
    assert cfg.load_in_4bit and cfg.bnb_4bit_quant_type == "nf4" and not cfg.pre_quantized
    layer = QKVParallelLinear(64, 16, 4, 2, bias=True)
    method = cfg.get_linear_method(layer, "model.layers.0.self_attn.qkv_proj")
    method.create_weights(layer, 64, QKV_SIZES, torch.float32)
    parts = {s: torch.randn(n, 64) for s, n in zip("qkv", QKV_SIZES)}
    for s in "qkv":
        layer.weight.weight_loader(layer.weight, parts[s], s)
        layer.bias.weight_loader(layer.bias, torch.zeros(dict(zip("qkv", QKV_SIZES))[s]) + 0.5, s)
        assert layer.bnb_parts[_index(s)] is not None      # quantized on arrival: no dense copy is kept
    method.process_weights_after_loading(layer)

    # reference: bitsandbytes' own NF4 of each part (blocks of 64, double-quantized statistics), dequantized
    ref = torch.cat([bnbf.dequantize_4bit(*bnbf.quantize_4bit(parts[s], blocksize=64, compress_statistics=True,
                                                               quant_type="nf4")) for s in "qkv"])
    assert torch.equal(method.dequantized_weight(layer, torch.float32), ref)
    assert [p.dtype for p in layer.bnb_packed] == [torch.uint8] * 3
    assert sum(p.numel() for p in layer.bnb_packed) == 128 * 64 // 2      # 4 bits a weight
    x = torch.randn(3, 64)
    torch.testing.assert_close(method.apply(layer, x, layer.bias), x @ ref.t() + 0.5, rtol=1e-5, atol=1e-5)


def _index(s):
    return "qkv".index(s)


@pytest.mark.parametrize("quant_type,double_quant", [("nf4", True), ("fp4", False)])
def test_prequantized_4bit_tensors_as_transformers_saves_them(quant_type, double_quant):
    torch.manual_seed(1)
    cfg = BitsAndBytesConfig.from_config({"quant_method": "bitsandbytes", "load_in_4bit": True,
                                          "bnb_4bit_quant_type": quant_type,
                                          "bnb_4bit_use_double_quant": double_quant})
    layer = MergedColumnParallelLinear(64, [48, 48])
    method = cfg.get_linear_method(layer, "model.layers.0.mlp.gate_up_proj")
    method.create_weights(layer, 64, [48, 48], torch.float32)
    refs = []
    for i in range(2):
        lin = bnb.nn.Linear4bit(64, 48, bias=False, compute_dtype=torch.float32, quant_type=quant_type,
                                compress_statistics=double_quant)
        lin.weight = bnb.nn.Params4bit(torch.randn(48, 64), requires_grad=False, quant_type=quant_type,
                                       compress_statistics=double_quant)
        lin.weight._quantize("cpu")
        for key, tensor in lin.state_dict().items():     # weight, weight.absmax, weight.quant_state.bitsandbytes__..
            name = cfg.checkpoint_name(f"model.layers.0.mlp.gate_up_proj.{key}").rsplit(".", 1)[1]
            param = getattr(layer, name)
            param.weight_loader(param, tensor, i)
        refs.append(bnbf.dequantize_4bit(lin.weight.data, lin.weight.quant_state))
    method.process_weights_after_loading(layer)
    ref = torch.cat(refs)
    assert torch.equal(method.dequantized_weight(layer, torch.float32), ref)
    x = torch.randn(2, 64)
    torch.testing.assert_close(method.apply(layer, x, None), x @ ref.t(), rtol=1e-5, atol=1e-5)


def test_checkpoint_names_map_to_parameter_names():
    cfg = BitsAndBytesConfig.from_config({})
    assert cfg.checkpoint_name("model.layers.0.self_attn.q_proj.weight.quant_state.bitsandbytes__nf4") == \
        "model.layers.0.self_attn.q_proj.weight_quant_state_bitsandbytes__nf4"
    assert cfg.checkpoint_name("model.layers.0.self_attn.q_proj.weight.absmax") == \
        "model.layers.0.self_attn.q_proj.weight_absmax"
    assert cfg.checkpoint_name("model.layers.0.self_attn.q_proj.weight") == "model.layers.0.self_attn.q_proj.weight"


def test_prequantized_int8_matches_bitsandbytes_linear8bitlt():
    torch.manual_seed(2)
    cfg = BitsAndBytesConfig.from_config({"quant_method": "bitsandbytes", "load_in_8bit": True})
    layer = RowParallelLinear(64, 40, bias=True)
    method = cfg.get_linear_method(layer, "model.layers.0.mlp.down_proj")
    method.create_weights(layer, 64, [40], torch.float32)
    dense = torch.randn(40, 64, dtype=torch.float16)
    reference = bnb.nn.Linear8bitLt(64, 40, bias=True, has_fp16_weights=False, threshold=6.0)
    reference.weight = bnb.nn.Int8Params(dense, requires_grad=False, has_fp16_weights=False)
    reference.bias = torch.nn.Parameter(torch.randn(40, dtype=torch.float16), requires_grad=False)
    reference = reference.to("cpu")
    saved = reference.state_dict()     # weight (int8), SCB, weight_format, bias
    layer.weight.weight_loader(layer.weight, saved["weight"])
    layer.SCB.weight_loader(layer.SCB, saved["SCB"])
    layer.bias.weight_loader(layer.bias, saved["bias"].float())
    if "weight_format" in saved:
        layer.weight_format.weight_loader(layer.weight_format, saved["weight_format"])
    method.process_weights_after_loading(layer)

    assert layer.weight.dtype == torch.int8
    w = method.dequantized_weight(layer, torch.float32)
    assert ((w - dense.float()).abs() <= dense.float().abs().amax(dim=1, keepdim=True) / 127).all()
    x = torch.randn(3, 64, dtype=torch.float16)
    # on the CPU bitsandbytes multiplies by the dequantized weight (MatMul8bitFp, its module's train-mode path)
    reference.train()
    torch.testing.assert_close(method.apply(layer, x, layer.bias.half()), reference(x), rtol=2e-3, atol=2e-3)


def test_configuration_errors():
    with pytest.raises(ValueError, match="exactly one of load_in_4bit and load_in_8bit"):
        BitsAndBytesConfig.from_config({"quant_method": "bitsandbytes", "load_in_4bit": True, "load_in_8bit": True})
    with pytest.raises(ValueError, match="bnb_4bit_quant_type must be 'nf4' or 'fp4'"):
        BitsAndBytesConfig.from_config({"quant_method": "bitsandbytes", "load_in_4bit": True,
                                        "bnb_4bit_quant_type": "int4"})
    cfg = BitsAndBytesConfig.from_config({"quant_method": "bitsandbytes", "load_in_4bit": True,
                                          "llm_int8_skip_modules": ["lm_head", "down_proj"]})
    assert cfg.get_linear_method(None, "model.layers.0.mlp.down_proj") is None
    assert cfg.get_linear_method(None, "model.layers.0.mlp.gate_up_proj") is not None


# ---- end to end: LLM(...) ---------------------------------------------------------------------------------------------
from test_quant_fp8 import _linear_groups  # noqa: E402
from test_quant_int_formats import _run, _save, _tiny  # noqa: E402


# LLM.int8() on CUDA (bitsandbytes' matmul) quantizes the activations too, int8 rows with outlier columns in 16 bits:
# its logprobs are within ~1e-2 of the dequantized weights' (9e-3 at most on an H100, session 24), its tokens equal.
# On the CPU pagedllm multiplies by the dequantized int8 weights: the tight bound holds there.
INT8_ON_GPU_TOL = dict(rtol=2e-2, atol=2e-2)


def _check(tmp_path, config, quant, reference, tol=None, **kw):
    qpath = _save(tmp_path / "quant", config, quant)
    _, ref_tokens, ref_logprobs = _run(_save(tmp_path / "ref", {k: v for k, v in config.items()
                                                                 if k != "quantization_config"}, reference))
    llm, tokens, logprobs = _run(qpath, **kw)
    assert llm.llm_engine.core.config.quant_config.name == "bitsandbytes"
    assert tokens == ref_tokens
    torch.testing.assert_close(torch.tensor(logprobs), torch.tensor(ref_logprobs),
                               **(tol or dict(rtol=1e-3, atol=1e-5)))


# vLLM's spellings: quantization alone, both (its bitsandbytes tutorials), and the load format alone.
@pytest.mark.parametrize("kwargs", [dict(quantization="bitsandbytes"),
                                    dict(quantization="bitsandbytes", load_format="bitsandbytes"),
                                    dict(load_format="bitsandbytes")])
def test_inflight_nf4_end_to_end_matches_bitsandbytes_dequantized_reference(tmp_path, kwargs):
    config, state = _tiny("llama")
    reference = dict(state)
    for names in _linear_groups(state):
        for n in names:
            reference[n] = bnbf.dequantize_4bit(*bnbf.quantize_4bit(state[n], blocksize=64, compress_statistics=True,
                                                                    quant_type="nf4"))
    _check(tmp_path, config, state, reference, **kwargs)


def test_bitsandbytes_load_format_with_another_method_is_vllms_error():
    from pagedllm.config import EngineArgs, FlexibleArgumentParser, verify_engine_args
    with pytest.raises(ValueError, match="BitsAndBytes load format only supports 'bitsandbytes' quantization, but "
                                         "got awq"):
        verify_engine_args(EngineArgs(model="m", load_format="bitsandbytes", quantization="awq"))
    # The flag is a choice of serve's --load-format, as in vLLM.
    args = EngineArgs.add_cli_args(FlexibleArgumentParser()).parse_args(["--load-format", "bitsandbytes"])
    assert EngineArgs.from_cli_args(args).quantization == "bitsandbytes"


@pytest.mark.parametrize("bits", [4, 8])
def test_prequantized_checkpoint_end_to_end(tmp_path, bits):
    config, state = _tiny("qwen2")
    quant, reference = dict(state), dict(state)
    for names in _linear_groups(state):
        for n in names:
            if bits == 4:        # as transformers saves Linear4bit: packed weight + its quant state beside it
                packed, qs = bnbf.quantize_4bit(state[n], blocksize=64, compress_statistics=True, quant_type="nf4")
                quant[n] = packed
                quant.update({f"{n}.{k}": v for k, v in qs.as_dict(packed=True).items()})
                reference[n] = bnbf.dequantize_4bit(packed, qs)
            else:                # Linear8bitLt: int8 rows + SCB (absmax per row)
                cb, scb, _ = bnbf.int8_vectorwise_quant(state[n].half())
                quant[n], quant[n.replace(".weight", ".SCB")] = cb, scb
                reference[n] = cb.float() * scb[:, None] / 127
    quant_config = ({"quant_method": "bitsandbytes", "load_in_4bit": True, "bnb_4bit_quant_type": "nf4",
                     "bnb_4bit_use_double_quant": True, "bnb_4bit_compute_dtype": "float32"} if bits == 4 else
                    {"quant_method": "bitsandbytes", "load_in_8bit": True, "llm_int8_threshold": 6.0})
    _check(tmp_path, dict(config, quantization_config=quant_config), quant, reference,
           tol=INT8_ON_GPU_TOL if bits == 8 and torch.cuda.is_available() else None)
