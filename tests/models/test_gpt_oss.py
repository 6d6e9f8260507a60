"""gpt-oss (GptOssForCausalLM) against HF transformers fp32 on a tiny random model: greedy tokens plain, chunked,
with prefix-cache hits and under preemption, logprobs; every other layer attends through an 8-token window; YaRN
rotary with an attention factor != 1; attention sinks, router bias, expert biases and the clamped SwiGLU drawn
non-zero. MXFP4 checkpoints (the published form: experts as ``*_blocks`` + ``*_scales``) written here by a quantizer
that follows the OCP MX spec load to the tokens of the dense checkpoint they were made from, and HF reads them
alike."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file

from pagedllm import LLM, SamplingParams
from pagedllm.attention.backends.torch_backend import TorchAttentionBackend
from pagedllm.attention.registry import _BACKENDS, register_attention_backend
from tests.models.test_models_vs_hf import (NEW_TOKENS, PROMPT_LENS, VOCAB, TinyModel, _assert_matches_hf, _generate,
                                            _prompts)

E2M1 = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0)


def _config(**overrides) -> transformers.GptOssConfig:
    cfg = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=32, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=2, head_dim=16, num_local_experts=4, num_experts_per_tok=2, sliding_window=8,
               max_position_embeddings=512, initializer_range=0.2, bos_token_id=1, eos_token_id=2, pad_token_id=0,
               swiglu_limit=1.0, swiglu_alpha=1.5,     # a limit the tiny experts' gate / up values cross both ways
               # YaRN as gpt-oss has it, over a short original context so its attention factor is 1.35 here
               rope_parameters={"rope_type": "yarn", "rope_theta": 150000.0, "factor": 32.0, "beta_fast": 32.0,
                                "beta_slow": 1.0, "truncate": False, "original_max_position_embeddings": 16},
               architectures=["GptOssForCausalLM"])
    cfg.update(overrides)
    return transformers.GptOssConfig(**cfg)


def swiglu_from_config(hf: transformers.PreTrainedModel) -> transformers.PreTrainedModel:
    """HF's reference with the config's clamped SwiGLU: transformers before 5.25 (5.17 on the GPU host) hard-codes
    alpha 1.702 and limit 7.0 in GptOssExperts and ignores the config's swiglu_alpha / swiglu_limit, which pagedllm
    honours as 5.25 does; these tests set other values, so HF's experts are given them on either release."""
    alpha = float(getattr(hf.config, "swiglu_alpha", 1.702))
    limit = float(getattr(hf.config, "swiglu_limit", 7.0))
    for module in hf.modules():
        if hasattr(module, "alpha") and hasattr(module, "limit"):
            module.alpha, module.limit = alpha, limit
    return hf


class GptOssTiny(TinyModel):
    """A saved random gpt-oss and its HF greedy references (TinyModel's)."""

    def __init__(self, path: str, hf: transformers.PreTrainedModel | None = None, seed: int = 0):
        if hf is None:
            torch.manual_seed(seed)
            # HF's own loops (modeling_gpt_oss.py), not its grouped_mm experts default
            hf = transformers.AutoModelForCausalLM.from_config(_config(), attn_implementation="eager",
                                                               experts_implementation="eager",
                                                               dtype=torch.float32).eval()
            swiglu_from_config(hf)
            with torch.no_grad():
                for name, param in hf.named_parameters():
                    # HF starts norms at 1 and biases at 0; sinks are std 0.2: drawn wider, so each is checked
                    if "norm" in name or "bias" in name or "sinks" in name:
                        param.add_(torch.randn_like(param) * (1.0 if "sinks" in name else 0.3))
                    elif ".experts." in name:
                        param.normal_(0.0, 0.2)
            hf.save_pretrained(path)
        self.hf, self.path, self._refs = hf, path, {}
        self.hf.generation_config.eos_token_id = None


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> GptOssTiny:
    return GptOssTiny(str(tmp_path_factory.mktemp("gpt_oss")))


# HF parity, as every architecture there (with this module's ``tiny``): greedy plain, chunked, with prefix-cache
# hits, logprobs, under preemption.
from tests.models.test_models_vs_hf import (test_chunked_prefill_matches_hf, test_greedy_matches_hf,  # noqa: E402
                                            test_preemption_matches_hf, test_prefix_cache_hits_match_hf,
                                            test_sample_logprobs_match_hf)

__all__ = ["test_chunked_prefill_matches_hf", "test_greedy_matches_hf", "test_preemption_matches_hf",
           "test_prefix_cache_hits_match_hf", "test_sample_logprobs_match_hf"]


def test_windowed_layers_and_yarn_are_exercised(tiny):
    assert tiny.hf.model.rotary_emb.attention_scaling != 1.0          # YaRN's attention factor
    windows = tiny.llm(kv_cache_memory_gb=0.01).apply_model(
        lambda model: [layer.self_attn.attn.sliding_window for layer in model.model.layers])
    assert windows == [[8, 0]]                 # the prompts (up to 70 tokens) run past the window


# ---- MXFP4 checkpoints -------------------------------------------------------------------------------------------
def _quantize_mxfp4(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``[..., N, K]`` -> (blocks ``[..., N, K / 32, 16]``, scales ``[..., N, K / 32]``), uint8, per the OCP MX spec:
    one E8M0 scale (2 ** (byte - 127)) per 32 values, each value the nearest E2M1 code, the even-indexed value of a
    pair in the low nibble."""
    groups = weight.float().unflatten(-1, (-1, 32))                        # [..., N, G, 32]
    amax = groups.abs().amax(-1, keepdim=True).clamp(min=2.0 ** -100)
    exponent = torch.ceil(torch.log2(amax / 6.0))                          # |value / 2^e| <= 6
    table = torch.tensor(E2M1)
    codes = (groups / 2.0 ** exponent).unsqueeze(-1).sub(table).abs().argmin(-1).to(torch.uint8)
    blocks = codes[..., 0::2] | (codes[..., 1::2] << 4)
    return blocks, (exponent.squeeze(-1) + 127).to(torch.uint8)


def _dequantize_reference(blocks: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    codes = torch.stack((blocks & 0x0F, blocks >> 4), dim=-1).flatten(-2).long()
    return (torch.tensor(E2M1)[codes] * 2.0 ** (scales.float() - 127).unsqueeze(-1)).flatten(-2)


def test_mxfp4_dequantization_follows_the_spec():
    from pagedllm.model.quantization.mxfp4 import dequantize_mxfp4
    # one block: byte 0x2F holds codes 0xF (value 0: -6.0) and 0x2 (value 1: 1.0); scale byte 128 is 2 ** 1
    blocks = torch.full((1, 1, 16), 0x2F, dtype=torch.uint8)
    blocks[0, 0, 15] = 0x90                       # values 30, 31: 0.0 and -0.5
    out = dequantize_mxfp4(blocks, torch.tensor([[128]], dtype=torch.uint8), torch.float32)
    assert out[0, :4].tolist() == [-12.0, 2.0, -12.0, 2.0] and out[0, 30:].tolist() == [0.0, -1.0]
    with pytest.raises(ValueError, match="MXFP4 blocks .* do not match scales"):
        dequantize_mxfp4(blocks, torch.tensor([[128, 127]], dtype=torch.uint8), torch.float32)


def write_mxfp4_pair(hf: transformers.PreTrainedModel, dense_dir: Path, mx_dir: Path) -> None:
    """Round ``hf``'s experts to MXFP4 values (in place), save it to ``dense_dir``, and the same model with its
    experts as ``*_blocks`` + ``*_scales`` (``quant_method: mxfp4``, as the published checkpoints) to ``mx_dir``."""
    quantized = {}
    with torch.no_grad():
        for name, param in hf.named_parameters():
            if name.endswith(("experts.gate_up_proj", "experts.down_proj")):
                # HF's [E, in, out]; MXFP4 blocks run along the input dim of each output row: [E, out, in]
                blocks, scales = _quantize_mxfp4(param.transpose(1, 2))
                param.copy_(_dequantize_reference(blocks, scales).transpose(1, 2))
                quantized[name + "_blocks"], quantized[name + "_scales"] = blocks, scales
    hf.save_pretrained(str(dense_dir))
    tensors = load_file(str(next(Path(dense_dir).glob("*.safetensors"))))
    mx = {n: t for n, t in tensors.items() if not n.endswith(("experts.gate_up_proj", "experts.down_proj"))}
    mx.update(quantized)
    Path(mx_dir).mkdir(parents=True, exist_ok=True)
    save_file(mx, str(Path(mx_dir) / "model.safetensors"), metadata={"format": "pt"})
    config = json.loads((Path(dense_dir) / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "mxfp4"}
    (Path(mx_dir) / "config.json").write_text(json.dumps(config))


@pytest.fixture(scope="module")
def mxfp4_pair(tmp_path_factory):
    """(dense GptOssTiny whose experts hold MXFP4-representable values, the MXFP4 checkpoint made from it)."""
    dense_dir, mx_dir = tmp_path_factory.mktemp("dense"), tmp_path_factory.mktemp("mxfp4")
    hf = GptOssTiny(str(tmp_path_factory.mktemp("seed")), seed=1).hf
    write_mxfp4_pair(hf, dense_dir, mx_dir)
    return GptOssTiny(str(dense_dir), hf), str(mx_dir)


def test_mxfp4_checkpoint_loads_to_the_dense_tokens(mxfp4_pair, caplog):
    dense, mx_dir = mxfp4_pair
    prompts = _prompts(PROMPT_LENS[:3])
    expected = [dense.greedy(p) for p in prompts]
    # HF reads the same files (dequantizing them itself) to the same tokens: the layout is HF's, not only ours
    hf_mx = transformers.AutoModelForCausalLM.from_pretrained(
        mx_dir, dtype=torch.float32, attn_implementation="eager", experts_implementation="eager",
        quantization_config=transformers.Mxfp4Config(dequantize=True)).eval()
    # transformers 5.17 dequantizes MXFP4 to bf16 whatever dtype says; e2m1 values times power-of-two scales are
    # exact in bf16, so the fp32 copy is the same values
    swiglu_from_config(hf_mx.float())
    for prompt, tokens in zip(prompts, expected):
        ids = torch.tensor([prompt])
        out = hf_mx.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=NEW_TOKENS,
                             pad_token_id=0, eos_token_id=None)
        assert out[0, len(prompt):].tolist() == tokens
    with caplog.at_level("INFO", logger="pagedllm.model.models.gpt_oss"):
        llm = LLM(mx_dir, skip_tokenizer_init=True, dtype="float32", seed=0)
    assert "MXFP4 experts dequantized to torch.float32 at load" in caplog.text
    assert llm.llm_engine.config.quant_config.name == "mxfp4"
    _assert_matches_hf(dense, prompts, _generate(llm, prompts))


def test_mxfp4_checkpoint_under_pipeline_parallel(mxfp4_pair):
    """PP=2 (gloo): the last stage, which holds no embedding, dequantizes its layer's MXFP4 experts too (the load's
    log line named the embedding's dtype there, and failed)."""
    dense, mx_dir = mxfp4_pair
    prompts = _prompts(PROMPT_LENS[:2])
    llm = LLM(mx_dir, skip_tokenizer_init=True, dtype="float32", seed=0, pipeline_parallel_size=2,
              kv_cache_memory_gb=0.01, max_model_len=128)
    _assert_matches_hf(dense, prompts, _generate(llm, prompts))


def test_mxfp4_checkpoint_missing_scales_is_named(mxfp4_pair, tmp_path):
    _, mx_dir = mxfp4_pair
    import shutil
    shutil.copy(f"{mx_dir}/config.json", tmp_path / "config.json")
    tensors = load_file(f"{mx_dir}/model.safetensors")
    del tensors["model.layers.1.mlp.experts.down_proj_scales"]
    save_file(tensors, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"MXFP4 experts missing their blocks or scales: "
                                         r"model.layers.1.mlp.experts.down_proj \(blocks only\)"):
        LLM(str(tmp_path), skip_tokenizer_init=True, dtype="float32", kv_cache_memory_gb=0.01)


def test_bf16_checkpoint_loads(tiny, tmp_path):
    """The checkpoint in bf16 (as gpt-oss's non-expert tensors are) runs in bf16: HF bf16's greedy tokens (a prompt
    whose top-2 logit margins stay above bf16's rounding at these logits, ~0.03)."""
    hf = transformers.AutoModelForCausalLM.from_pretrained(tiny.path, dtype=torch.bfloat16, attn_implementation="eager",
                                                           experts_implementation="eager").eval()
    swiglu_from_config(hf)
    hf.save_pretrained(str(tmp_path))
    prompt = _prompts([12], seed=28)[0]
    ids = torch.tensor([prompt])
    ref = hf.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=6, pad_token_id=0,
                      eos_token_id=None, output_logits=True, return_dict_in_generate=True)
    top2 = torch.cat(ref.logits).float().topk(2, dim=-1).values
    assert (top2[:, 0] - top2[:, 1]).min() > 0.05, "near-tie in HF's bf16 greedy choice; pick another prompt"
    llm = LLM(str(tmp_path), skip_tokenizer_init=True, dtype="bfloat16", seed=0)
    out = llm.generate([{"prompt_token_ids": prompt}], SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True),
                       use_tqdm=False)
    assert list(out[0].outputs[0].token_ids) == ref.sequences[0, len(prompt):].tolist()


class NoSinksBackend(TorchAttentionBackend):
    supports_attention_sinks = False     # what a third-party backend says unless it takes sinks


def test_a_backend_without_sinks_is_refused(tiny):
    register_attention_backend("nosinks", f"{__name__}:NoSinksBackend")
    try:
        with pytest.raises(ValueError, match=r"attention has sinks .*GptOssForCausalLM.*the attention backend "
                                             r"'nosinks' does not take them: use 'torch' or 'triton'"):
            tiny.llm(attention_backend="nosinks", kv_cache_memory_gb=0.01)
    finally:
        _BACKENDS.pop("nosinks", None)


@pytest.mark.parametrize("parallel", [dict(tensor_parallel_size=2), dict(pipeline_parallel_size=2)],
                         ids=["tp2", "pp2"])
def test_parallel_matches_hf(tiny, parallel):
    """On the CPU (gloo). TP=2: each rank its 2 of the 4 heads and their sinks, 1 of the 2 KV heads, half of every
    expert's intermediate dim and of its gate/up biases; the down bias added once (rank 0) before the all-reduce.
    PP=2: a layer a stage, each stage reading only its layers' tensors (the experts' too)."""
    prompts = _prompts(PROMPT_LENS[:3])
    llm = tiny.llm(max_num_batched_tokens=16, max_model_len=128, kv_cache_memory_gb=0.01, **parallel)
    _assert_matches_hf(tiny, prompts, _generate(llm, prompts))


def test_published_config_rotates_as_hf(tmp_path):
    """gpt-oss-20b's config.json as published (YaRN in ``rope_scaling`` with ``rope_theta`` beside it, transformers
    4.55's form): our rotary tables are HF's (attention factor 1.35 included), every other layer windowed at 128."""
    from transformers.models.gpt_oss.modeling_gpt_oss import GptOssRotaryEmbedding

    from pagedllm.config import layer_sliding_windows
    from pagedllm.model.layers.rotary import RotaryEmbedding
    published = {"architectures": ["GptOssForCausalLM"], "model_type": "gpt_oss", "head_dim": 64, "hidden_size": 2880,
                 "num_attention_heads": 64, "num_key_value_heads": 8, "num_hidden_layers": 24,
                 "layer_types": ["sliding_attention", "full_attention"] * 12, "max_position_embeddings": 131072,
                 "rope_scaling": {"beta_fast": 32.0, "beta_slow": 1.0, "factor": 32.0, "rope_type": "yarn",
                                  "original_max_position_embeddings": 4096, "truncate": False},
                 "rope_theta": 150000, "sliding_window": 128, "quantization_config": {"quant_method": "mxfp4"}}
    (tmp_path / "config.json").write_text(json.dumps(published))
    cfg = transformers.AutoConfig.from_pretrained(str(tmp_path))
    hf = GptOssRotaryEmbedding(cfg)
    cos, sin = hf(torch.zeros(1), torch.arange(8192)[None])
    ours = RotaryEmbedding(cfg, 64, 8192)
    assert hf.attention_scaling == pytest.approx(1.3466, abs=1e-4)
    assert torch.equal(ours.cos, cos[0]) and torch.equal(ours.sin, sin[0])
    assert layer_sliding_windows(cfg, 24)[:4] == [128, 0, 128, 0]


def test_lora_on_the_attention_equals_hf_merged(tiny, tmp_path):
    """A LoRA adapter of q/k/v/o (what HF's gpt-oss has as linear layers): greedy tokens equal HF's with the
    adapter merged, beside the base model in one batch."""
    import shutil
    import sys
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))      # test_lora imports its neighbours
    from test_lora import GREEDY, PROMPTS, make_llm, merged_tokens, save_adapter

    from pagedllm.lora.request import LoRARequest
    shutil.copytree(tiny.path, tmp_path / "model")
    adapter = save_adapter(tmp_path / "lora", tiny.hf, rank=8, alpha=16, seed=3)
    assert sorted({n.rpartition(".")[2] for n in adapter}) == ["k_proj", "o_proj", "q_proj", "v_proj"]
    expected, base = merged_tokens(tiny.hf, adapter, 16 / 8, PROMPTS, 6), merged_tokens(tiny.hf, {}, 0, PROMPTS, 6)
    assert expected != base
    got = make_llm(tmp_path).generate([{"prompt_token_ids": p} for p in PROMPTS] * 2, GREEDY, use_tqdm=False,
                                      lora_request=[LoRARequest("lora", 1, str(tmp_path / "lora"))] * 2 + [None] * 2)
    assert [list(o.outputs[0].token_ids) for o in got] == expected + base


@pytest.mark.parametrize("rank", [0, 1])
def test_mxfp4_experts_kept_take_their_tensor_parallel_share(monkeypatch, rank):
    """Experts kept MXFP4 (what a CUDA device gets) on rank ``rank`` of 2: the checkpoint's interleaved gate / up
    rows split, each one's half; down's half of the columns as whole 32-value blocks; the scales alike. Dequantized,
    they are exactly the slices of the dequantized checkpoint (what the dense experts of that rank hold)."""
    from pagedllm.model.layers import moe
    from pagedllm.model.models.gpt_oss import GptOssExperts, GptOssForCausalLM
    from pagedllm.model.quantization.mxfp4 import Mxfp4Config, dequantize_mxfp4
    monkeypatch.setattr(moe, "get_tp_size", lambda: 2)
    monkeypatch.setattr(moe, "get_tp_rank", lambda: rank)
    num, hidden, inter, gen = 3, 64, 128, torch.Generator().manual_seed(rank)
    config = Mxfp4Config()
    config.verify_device(torch.device("cuda"))
    experts = GptOssExperts(num, hidden, inter, 1.7, 7.0, config, "model.layers.0.mlp.experts")
    checkpoint = {}
    for proj, rows, cols in (("gate_up_proj", 2 * inter, hidden), ("down_proj", hidden, inter)):
        blocks = torch.randint(0, 256, (num, rows, cols // 32, 16), generator=gen, dtype=torch.uint8)
        scales = torch.randint(118, 130, (num, rows, cols // 32), generator=gen, dtype=torch.uint8)
        GptOssForCausalLM._load_stacked(experts, proj, num, lambda e: blocks[e])
        GptOssForCausalLM._load_stacked(experts, proj, num, lambda e: scales[e], kind="weight_scale")
        checkpoint[proj] = dequantize_mxfp4(blocks, scales, torch.float32)
    experts.check_loaded("model.layers.0.mlp.experts")
    share = slice(rank * inter // 2, (rank + 1) * inter // 2)
    gate_up = checkpoint["gate_up_proj"]
    expected13 = torch.cat((gate_up[:, 0::2][:, share], gate_up[:, 1::2][:, share]), dim=1)
    for e in range(num):
        w13, w2 = experts.quant_method.dequantized(experts, e, torch.float32)
        assert torch.equal(w13, expected13[e]) and torch.equal(w2, checkpoint["down_proj"][e][:, share])
    assert experts.w13.dtype == torch.uint8 and experts.w13.shape == (num, inter, hidden // 2)
    # this rank's bytes and scale bytes (gate + up 128 rows x 64, down 64 rows x 64): 4.25 bits a value, fp32: 32
    assert config.kept == {"model.layers.0.mlp.experts": (num * (128 + 64) * (32 + 2), num * (128 + 64) * 64 * 4)}
    assert config.weight_bytes_note() == "mxfp4 experts kept in MXFP4: 0.00 GiB (0.00 GiB dequantized)"
    with pytest.raises(ValueError, match=r"MXFP4 experts \(model.layers.0.mlp.experts\) load from the checkpoint's "
                                         r"uint8 \*_blocks and \*_scales; got 'weight' torch.float32 for expert 0"):
        GptOssForCausalLM._load_stacked(experts, "gate_up_proj", num, lambda e: gate_up[e])
    # A share that is not whole 32-value blocks (intermediate 32 over 2 ranks): dequantized at load, and said so
    config = Mxfp4Config()
    config.verify_device(torch.device("cuda"))
    narrow = GptOssExperts(num, hidden, 32, 1.7, 7.0, config, "model.layers.0.mlp.experts")
    assert narrow.quant_method is None and narrow.w13.dtype == torch.get_default_dtype()
    assert config.weight_bytes_note() == ("mxfp4 experts dequantized at load: each rank's intermediate share (16) "
                                          "or the hidden size (64) is not a multiple of 32 (weights held in the model "
                                          "dtype)")


def test_mxfp4_experts_are_dequantized_at_load_on_the_cpu():
    from pagedllm.model.quantization.mxfp4 import Mxfp4Config
    config = Mxfp4Config()
    config.verify_device(torch.device("cpu"))
    assert config.get_moe_method(None, "model.layers.0.mlp.experts") is None
    assert config.weight_bytes_note() == "mxfp4 experts dequantized at load (weights held in the model dtype)"
