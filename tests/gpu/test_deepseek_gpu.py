"""DeepSeek-V2 / V3 (model/models/deepseek.py) on a CUDA GPU, through the same layers as every model: the Triton
attention backend over the latent MLA cache (one KV head of kv_lora_rank + qk_rope_head_dim = 128 + 64 here, all
query heads on it; V2-Lite / V3's 576 in the kernel test), the Triton rotary in place on the rope part of Q and the
shared k_pe, the fused Triton experts with the router on the device, decode and piecewise CUDA graphs, the expanded
prompt form (TritonAttentionBackend.varlen_attention at qk_head_dim 192 / v_head_dim 128). Skipped without CUDA
(collected on the CPU); the kernel tests also run in Triton's interpreter (TRITON_INTERPRET=1, see
tests/gpu/conftest.py).

* fp32: greedy tokens identical to HF fp32 (fp32 keeps the router's choices HF's; in bf16 a tiny random router's
  near-ties pick other experts, as tests/gpu/test_engine_gpu.py's MoE test says).
* an FP8 block checkpoint (V3's form: 128 x 128 blocks, a partial one) in bf16: the weights stay e4m3 and every
  token is the dequantized reference's HF fp32 argmax on our own sequence, unless HF makes it a near-tie
  (test_engine_gpu.assert_greedy_under_hf).
* the attention kernels on the latent cache's shape (K and V one tensor: the latent stored once), the rotary in
  place on MLA's views.
"""
from __future__ import annotations

import os

import pytest
import torch

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

NEW_TOKENS = 24
PROMPT_LENS = [3, 17, 40, 70, 130]


def _config(arch: str):
    import transformers
    common = dict(vocab_size=2048, hidden_size=256, intermediate_size=512, moe_intermediate_size=128,
                  num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=4, n_routed_experts=16,
                  num_experts_per_tok=2, kv_lora_rank=128, qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128,
                  max_position_embeddings=1024, first_k_dense_replace=1, tie_word_embeddings=False,
                  bos_token_id=1, eos_token_id=2, pad_token_id=0)
    yarn = dict(rope_type="yarn", rope_theta=10000.0, factor=4.0, original_max_position_embeddings=256,
                beta_fast=32, beta_slow=1)
    if arch == "v2_lite":     # q_proj, greedy routing, two shared experts
        cfg = transformers.DeepseekV2Config(**common, q_lora_rank=None, topk_method="greedy", n_shared_experts=2,
                                            rope_parameters=dict(yarn, mscale=0.707, mscale_all_dim=0.707))
    elif arch == "v2":        # low-rank Q, group-limited routing
        cfg = transformers.DeepseekV2Config(**common, q_lora_rank=128, topk_method="group_limited_greedy", n_group=4,
                                            topk_group=1, n_shared_experts=1, routed_scaling_factor=2.0)
    else:                     # sigmoid + correction bias, noaux_tc groups
        cfg = transformers.DeepseekV3Config(**common, q_lora_rank=128, n_group=4, topk_group=2, n_shared_experts=1,
                                            norm_topk_prob=True, routed_scaling_factor=2.5,
                                            rope_parameters=dict(yarn, mscale=1.0, mscale_all_dim=0.8))
    cfg.architectures = ["DeepseekV3ForCausalLM" if arch == "v3" else "DeepseekV2ForCausalLM"]
    return cfg


def _save(arch: str, path) -> str:
    return save_random(_config(arch), path)


def save_random(config, path, router_bias_std: float = 0.02) -> str:
    """A random fp32 model of ``config`` saved at ``path``, with sharp logits and a drawn router correction bias
    (``router_bias_std``: a wide one makes the experts' choice clear of near-ties)."""
    from transformers import AutoModelForCausalLM
    torch.manual_seed(1234)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():
        model.lm_head.weight.mul_(8.0)          # sharper logits than the tiny default init: clear greedy margins
        for module in model.modules():
            if hasattr(module, "e_score_correction_bias"):
                module.e_score_correction_bias.normal_(0.0, router_bias_std)
    model.save_pretrained(path)
    return str(path)


def _prompts():
    g = torch.Generator().manual_seed(0)
    return [torch.randint(5, 2000, (n,), generator=g).tolist() for n in PROMPT_LENS]


def _hf(path):
    from transformers import AutoModelForCausalLM
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).cuda().eval()


def _generate(llm, prompts):
    from pagedllm import SamplingParams
    sp = SamplingParams(temperature=0.0, max_tokens=NEW_TOKENS, ignore_eos=True, detokenize=False)
    return [list(o.outputs[0].token_ids) for o in llm.generate([{"prompt_token_ids": p} for p in prompts], sp,
                                                                use_tqdm=False)]


@needs_cuda
@pytest.mark.parametrize("arch", ["v2_lite", "v2", "v3"])
def test_fp32_triton_graphs_tokens_equal_hf(arch, tmp_path):
    _assert_graphs_tokens_equal_hf(arch, tmp_path)


@needs_cuda
@pytest.mark.parametrize("mode", ["expanded-always", "absorbed"])
def test_fp32_mla_prefill_forms_tokens_equal_hf(mode, tmp_path, monkeypatch):
    """PAGEDLLM_MLA_PREFILL's other two forms, V3 (the default's rule keeps the prefix hits' short tails absorbed):
    expanded-always runs every prompt chunk expanded with its cached context (128-token chunks after context,
    mixed with decodes, the second run's prefix hits) through TritonAttentionBackend.varlen_attention between the
    piecewise graphs; absorbed runs every token over the latent cache (session 35's form). HF's greedy tokens."""
    monkeypatch.setenv("PAGEDLLM_MLA_PREFILL", mode)
    _assert_graphs_tokens_equal_hf("v3", tmp_path)


@needs_cuda
def test_fp32_chunked_context_prefill_tokens_equal_hf(tmp_path, monkeypatch):
    """The default form over more keys than its bound (max_num_batched_tokens on the GPU; 48 here, and every step
    with cached context expanded: this config's cost rule would keep most of them absorbed): the new tokens attend
    to themselves and to their cached context in chunks of at most 48 keys (TritonAttentionBackend.varlen_attention
    non-causal with the LSE), merged by log-sum-exp, between the piecewise graphs; chunks after context, mixed
    with decodes, and the second run's prefix hits. HF's greedy tokens."""
    from pagedllm.attention.backends.triton_backend import TritonAttentionBackend
    from pagedllm.model.models.deepseek import MLAttention
    monkeypatch.setattr(MLAttention, "context_chunk_keys", 48)
    forms, varlen = [], TritonAttentionBackend.varlen_attention

    def record(self, *args, **kwargs):
        forms.append(kwargs.get("causal", True))
        return varlen(self, *args, **kwargs)
    monkeypatch.setattr(TritonAttentionBackend, "varlen_attention", record)

    def expand_every_context(model):
        del forms[:]        # the start-up warm-up's (its chunked-context form)
        for layer in model.modules():
            if isinstance(layer, MLAttention):
                layer.context_token_cost = 0
    _assert_graphs_tokens_equal_hf("v3", tmp_path, configure=expand_every_context)
    assert False in forms, "no context chunk attended"


@needs_cuda
def test_no_triton_compile_after_start_up_with_either_prefill_form(tmp_path):
    """The default form runs a step absorbed when expanding its cached context would cost more (the second run's
    prefix hits with short tails); the warm-up runs the absorbed prefill too (DeepseekV2ForCausalLM.warmup_forms),
    so on an empty Triton cache no kernel variant builds inside a request. A fresh process: this one's earlier
    tests hold built variants in memory."""
    import subprocess
    import sys
    path = _save("v3", tmp_path / "v3")
    script = f"""
import torch
from pagedllm import LLM, SamplingParams
from pagedllm.kernels import late_compiles
llm = LLM(model={path!r}, skip_tokenizer_init=True, max_model_len=1024, kv_cache_memory_gb=1.0,
          dtype="bfloat16", max_num_batched_tokens=128, enable_prefix_caching=True)
g = torch.Generator().manual_seed(0)
prompts = [{{"prompt_token_ids": torch.randint(5, 2000, (n,), generator=g).tolist()}} for n in (300, 200, 40)]
params = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)
for _ in range(2):
    llm.generate(prompts, params, use_tqdm=False)
print("late compiles", late_compiles.late_compiles)
if late_compiles.late_compiles:      # which specialisations were built, to tell the late ones from start-up's
    from pagedllm.kernels import triton_attention
    for cache in triton_attention._extend_kernel.device_caches.values():
        for key in cache[0]:
            print("extend variant", key)
"""
    env = dict(os.environ, TRITON_CACHE_DIR=str(tmp_path / "triton_cache"))
    run = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    late = [line for line in (run.stdout + run.stderr).splitlines()
            if "after start-up" in line or line.startswith("extend variant")]
    assert "late compiles 0" in run.stdout, "\n".join(late) or run.stdout[-500:] + run.stderr[-3000:]


def _assert_graphs_tokens_equal_hf(arch: str, tmp_path, configure=None) -> None:
    from pagedllm import LLM
    path = _save(arch, tmp_path / arch)
    prompts = _prompts()
    llm = LLM(model=path, skip_tokenizer_init=True, max_model_len=1024, kv_cache_memory_gb=1.0, dtype="float32",
              attention_backend="triton", max_num_batched_tokens=128, enable_prefix_caching=True)
    runner = llm.llm_engine.runner
    if configure is not None:
        configure(runner.model)
    assert runner.graph_runner is not None and 1 in runner.graph_runner.captured_sizes()
    assert runner.piecewise_runner is not None
    assert runner.head_dim == 128 + 64 and runner.num_kv_heads == 1     # the latent cache
    got = _generate(llm, prompts)
    again = _generate(llm, prompts)                                  # prefix-cache hits
    del llm
    torch.cuda.empty_cache()
    hf = _hf(path)
    want = [hf.generate(torch.tensor([p], device="cuda"), max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS,
                        do_sample=False, eos_token_id=None, pad_token_id=0)[0, len(p):].tolist() for p in prompts]
    assert got == want and again == want


@needs_cuda
def test_bf16_fp8_block_v3_follows_its_dequantized_reference(tmp_path, monkeypatch):
    """V3's published form at its block size: every projection e4m3 with a weight_scale_inv per 128 x 128 block,
    kv_a_proj_with_mqa's 192 rows (128 + 64, as V3's 512 + 64) ending in a half block; the block GEMM and the
    block-scaled fused experts; the rope rows reordered at load stay inside their blocks. An empty on-disk Triton
    cache of its own: the start-up's dry pass then skips the block GEMM's first launches (session 36: the FP8
    kv_b_proj dequantized in that pass made every token wrong on a fresh machine)."""
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path / "triton_cache"))
    import json
    import sys

    from safetensors.torch import load_file, save_file

    from pagedllm import LLM
    from pagedllm.kernels.quant.fp8 import FP8_DTYPE
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1] / "models"))
    from test_deepseek import _block_fp8
    dense = _save("v3", tmp_path / "dense")
    state = load_file(f"{dense}/model.safetensors")
    quant, reference = dict(state), dict(state)
    for name, w in state.items():
        if name.endswith(("proj.weight", "proj_with_mqa.weight")):
            quant[name], quant[name.replace(".weight", ".weight_scale_inv")], reference[name] = _block_fp8(w, 128)
    config = json.loads((tmp_path / "dense" / "config.json").read_text())
    for out, tensors, extra in ((tmp_path / "fp8", quant, {"quantization_config": {
            "quant_method": "fp8", "activation_scheme": "dynamic", "fmt": "e4m3", "weight_block_size": [128, 128]}}),
            (tmp_path / "ref", reference, {})):
        out.mkdir()
        (out / "config.json").write_text(json.dumps(dict(config, **extra)))
        save_file(tensors, str(out / "model.safetensors"))
    prompts = _prompts()
    llm = LLM(model=str(tmp_path / "fp8"), skip_tokenizer_init=True, max_model_len=1024, kv_cache_memory_gb=1.0,
              dtype="bfloat16")
    layer = llm.llm_engine.runner.model.model.layers[1]
    assert layer.self_attn.kv_a_proj_with_mqa.weight.dtype == FP8_DTYPE and layer.mlp.experts.w13.dtype == FP8_DTYPE
    got = _generate(llm, prompts)
    del llm
    torch.cuda.empty_cache()
    from test_engine_gpu import assert_greedy_under_hf
    # The reference runs the dequantized weights in fp32 with fp32 activations; the block GEMM quantizes each
    # activation block to e4m3 (3 mantissa bits), which rounds more than bf16 does. An H100 run gave gaps of
    # 0.013 / 0.021 / 0.020 at three tokens (session 37); a kernel fault gives gaps near 1 (session 36's FP8
    # kv_b_proj bug: 0.4-1.5). So the FP8-activation bound of test_moe_archs_gpu's GLM-4.5 FP8 case.
    assert_greedy_under_hf(_hf(str(tmp_path / "ref")), prompts, got, near_tie=0.1)


@pytest.mark.skipif(not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1",
                    reason="needs a CUDA GPU or TRITON_INTERPRET=1")
@pytest.mark.parametrize("heads, kv_rank, rope", [(16, 512, 64), (4, 128, 64), (4, 32, 8)],
                         ids=["v2-lite-576", "gpu-test-192", "cpu-test-40"])
@pytest.mark.parametrize("decode", [False, True], ids=["extend", "decode"])
def test_attention_kernels_on_the_latent_mla_cache(decode, heads, kv_rank, rope):
    """The Triton extend and decode kernels on the latent MLA cache's shape: every query head on ONE KV head of
    kv_lora_rank + qk_rope_head_dim dims (V2-Lite / V3's 576: BLOCK_D 1024, masked; this file's and
    tests/models/test_deepseek.py's tiny widths), K and V the same tensor, as the model runner gives MLAttention
    the latent row stored once: the torch reference's output over the latent part (the rope part's output,
    softmax . k_pe, the model cuts off)."""
    from test_triton_attention import BF16, make_batch, reference, rel_err

    from pagedllm.kernels import triton_attention as tri
    width = kv_rank + rope
    specs = [(37, 1), (80, 1), (5, 1)] if decode else [(40, 40), (77, 5), (30, 1)]
    query, k_cache, _, qsl, seq_lens, tables = make_batch(specs, heads, 1, width, 16, BF16, seed=3)
    scale = (128 + 64) ** -0.5
    if decode:
        out = tri.decode_attention(query, k_cache, k_cache, seq_lens, tables, scale,
                                   tri.DecodeWorkspace.allocate(8, heads, 1, width, device=query.device))
    else:
        out = tri.extend_attention(query, k_cache, k_cache, qsl, seq_lens, tables, scale, 40)
    want = reference(query, k_cache, k_cache, qsl, seq_lens, tables, scale)
    assert rel_err(out[..., :kv_rank], want[..., :kv_rank]) < 1e-2


@pytest.mark.skipif(not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1",
                    reason="needs a CUDA GPU or TRITON_INTERPRET=1")
def test_triton_backend_on_the_latent_cache_stored_once():
    """The model runner's K-only latent cache (worker/swap_space.kv_cache_view: a [1, ...] allocation expanded
    to [2, ...], V the same memory) through the Triton backend as MLAttention uses it: write_kv of the step's new
    rows as key and value (the store kernel writes each row twice to the one place), then the whole step attended
    (decodes and prompt chunks: decode and extend kernels) and its decodes alone: the torch reference's output
    over the latent part, with V read as K."""
    from test_triton_attention import BF16, make_batch, reference, rel_err

    from pagedllm.attention.backends.base import CommonAttentionMetadata
    from pagedllm.worker.swap_space import kv_cache_view
    heads, kv_rank, rope = 4, 32, 8
    specs = [(37, 1), (5, 1), (40, 12), (20, 20)]
    query, old, _, qsl, seq_lens, tables = make_batch(specs, heads, 1, kv_rank + rope, 16, BF16, seed=6)
    device = query.device
    kv_cache = kv_cache_view(old.clone()[None])
    assert kv_cache.shape == (2, *old.shape) and kv_cache[1].data_ptr() == kv_cache[0].data_ptr()
    host_tables = tables.cpu()
    slots = torch.cat([host_tables[i, torch.arange(s - q, s) // 16].long() * 16 + torch.arange(s - q, s) % 16
                       for i, (s, q) in enumerate(specs)]).to(device)
    new = torch.randn(len(slots), 1, kv_rank + rope, generator=torch.Generator().manual_seed(7)).to(BF16).to(device)
    backend = _triton_backend(heads, 1, kv_rank + rope, 16, device)
    common = CommonAttentionMetadata(query_start_loc=qsl, seq_lens=seq_lens, block_tables=tables,
                                     slot_mapping=slots, max_query_len=20, max_seq_len=40, num_decodes=2)
    metadata = backend.build_metadata(common)
    backend.write_kv(query, new, new, kv_cache, slots)
    assert torch.equal(kv_cache[0].flatten(0, 1)[slots], new)
    scale = 0.2
    want = reference(query, kv_cache[0], kv_cache[0], qsl, seq_lens, tables, scale)[..., :kv_rank]
    assert rel_err(backend.attend(query, kv_cache, metadata, scale)[..., :kv_rank], want) < 1e-2
    assert rel_err(backend.attend_decodes(query[:2], kv_cache, metadata, scale)[..., :kv_rank], want[:2]) < 1e-2


@pytest.mark.skipif(not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1",
                    reason="needs a CUDA GPU or TRITON_INTERPRET=1")
@pytest.mark.parametrize("decode", [False, True], ids=["extend", "decode"])
def test_wide_heads_launch_in_groups_of_16(monkeypatch, decode):
    """V2 / V3 on one GPU: 128 query heads on the latent cache's one 576-wide KV head. A launch packs a KV head's
    query group into its row block, which at this width does not fit an H100's shared memory beyond 16 heads: the
    heads go in launches of 16 (40 here: 16 + 16 + 8), with the torch reference's output."""
    from test_triton_attention import BF16, make_batch, reference, rel_err

    from pagedllm.kernels import triton_attention as tri
    heads, kv_rank, rope = 40, 256, 40
    groups = []

    class Recorder:
        def __init__(self, kernel):
            self.kernel = kernel

        def __getitem__(self, grid):
            def launch(*args, **kwargs):
                groups.append(kwargs["GROUP"])
                return self.kernel[grid](*args, **kwargs)
            return launch
    name = "_decode_kernel" if decode else "_extend_kernel"
    monkeypatch.setattr(tri, name, Recorder(getattr(tri, name)))
    specs = [(37, 1), (9, 1)] if decode else [(20, 20), (33, 5)]
    query, k_cache, v_cache, qsl, seq_lens, tables = make_batch(specs, heads, 1, kv_rank + rope, 16, BF16, seed=5)
    scale = 0.1
    if decode:
        out = tri.decode_attention(query, k_cache, v_cache, seq_lens, tables, scale,
                                   tri.DecodeWorkspace.allocate(8, heads, 1, kv_rank + rope, device=query.device))
    else:
        out = tri.extend_attention(query, k_cache, v_cache, qsl, seq_lens, tables, scale, 20, _two_pass=False)
    assert groups == [16, 16, 8]
    assert rel_err(out, reference(query, k_cache, v_cache, qsl, seq_lens, tables, scale)) < 1e-2


def _triton_backend(heads: int, kv_heads: int, head_dim: int, block_size: int, device):
    from pagedllm.attention.backends.triton_backend import TritonAttentionBackend
    return TritonAttentionBackend(num_heads=heads, num_kv_heads=kv_heads, head_dim=head_dim, block_size=block_size,
                                  max_num_seqs=8, max_num_batched_tokens=256, dtype=torch.float16, device=device)


@pytest.mark.skipif(not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1",
                    reason="needs a CUDA GPU or TRITON_INTERPRET=1")
@pytest.mark.parametrize("heads, qk_dim, v_dim", [(16, 192, 128), (4, 24, 12)], ids=["v2-lite-192-128", "cpu-test"])
def test_triton_varlen_attention_on_the_expanded_mla_shapes(heads, qk_dim, v_dim):
    """DeepSeek's expanded prefill on the GPU: TritonAttentionBackend.varlen_attention (the extend kernel over the
    given keys read as one-token blocks, V zero-padded to the key's width and cut) at qk_head_dim 192 / v_head_dim
    128 (V2-Lite / V3; and the CPU tests' 24 / 12), requests with cached context (more keys than queries), without,
    and of one token: the torch reference's output (kernels/torch_attention.varlen_attention, fp32)."""
    from test_triton_attention import BF16, rel_err

    from pagedllm.kernels import torch_attention
    device = "cuda" if torch.cuda.is_available() else "cpu"
    g = torch.Generator().manual_seed(11)
    q_lens, k_lens = [20, 7, 1, 33], [20, 30, 9, 40]
    q = torch.randn(sum(q_lens), heads, qk_dim, generator=g).to(BF16)
    k = torch.randn(sum(k_lens), heads, qk_dim, generator=g).to(BF16)
    v = torch.randn(sum(k_lens), heads, v_dim, generator=g).to(BF16)
    cu_q = torch.tensor([0, *torch.tensor(q_lens).cumsum(0).tolist()], dtype=torch.int32)
    cu_k = torch.tensor([0, *torch.tensor(k_lens).cumsum(0).tolist()], dtype=torch.int32)
    scale = qk_dim ** -0.5
    want = torch_attention.varlen_attention(q.float(), k.float(), v.float(), cu_q, cu_k, scale)
    backend = _triton_backend(heads, heads, qk_dim, 16, device)
    got = backend.varlen_attention(q.to(device), k.to(device), v.to(device), cu_q.to(device), cu_k.to(device),
                                   scale, max(q_lens), max(k_lens))
    assert got.shape == (sum(q_lens), heads, v_dim)
    assert rel_err(got.cpu(), want) < 1e-2


@pytest.mark.skipif(not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1",
                    reason="needs a CUDA GPU or TRITON_INTERPRET=1")
@pytest.mark.parametrize("heads, qk_dim, v_dim", [(16, 192, 128), (4, 24, 12)], ids=["v2-lite-192-128", "cpu-test"])
def test_triton_varlen_attention_non_causal_lse_chunks_merge_to_the_causal_pass(heads, qk_dim, v_dim):
    """DeepSeek's expanded prefill over a long cached context (MLAttention.attend's context_chunks): the new tokens
    attend to themselves (causal) and to the context in chunks (TritonAttentionBackend.varlen_attention with
    causal=False, return_lse=True: the extend kernel's NONCAUSAL / HAS_LSE forms; a chunk may hold none of a
    request's keys, or end inside its context), merged by log-sum-exp: the torch reference's one causal pass over
    the whole sequences (fp32); each chunk's LSE the reference's."""
    from test_triton_attention import BF16, rel_err

    from pagedllm.kernels import torch_attention
    device = "cuda" if torch.cuda.is_available() else "cpu"
    g = torch.Generator().manual_seed(12)
    q_lens, ctx_lens = [20, 1, 7, 140], [0, 29, 45, 11]       # 140: more than one row block
    k_lens = [q + c for q, c in zip(q_lens, ctx_lens)]

    def cu(lens):
        return torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], dtype=torch.int32)
    q = torch.randn(sum(q_lens), heads, qk_dim, generator=g).to(BF16)
    k = torch.randn(sum(k_lens), heads, qk_dim, generator=g).to(BF16)
    v = torch.randn(sum(k_lens), heads, v_dim, generator=g).to(BF16)
    scale = qk_dim ** -0.5
    want = torch_attention.varlen_attention(q.float(), k.float(), v.float(), cu(q_lens), cu(k_lens), scale)
    is_ctx = torch.cat([torch.arange(n) < c for n, c in zip(k_lens, ctx_lens)])
    k_ctx, v_ctx, k_new, v_new = k[is_ctx], v[is_ctx], k[~is_ctx], v[~is_ctx]
    backend = _triton_backend(heads, heads, qk_dim, 16, device)
    dev = [t.to(device) for t in (q, k_new, v_new, cu(q_lens))]
    out, lse = backend.varlen_attention(*dev[:3], dev[3], dev[3], scale, max(q_lens), max(q_lens), return_lse=True)
    _, want_lse = torch_attention.varlen_attention(q.float(), k_new.float(), v_new.float(), cu(q_lens), cu(q_lens),
                                                   scale, return_lse=True)
    assert (lse.cpu() - want_lse).abs().max() < 2e-2
    cu_ctx, bound = cu(ctx_lens), 32
    for lo in range(0, sum(ctx_lens), bound):
        hi = min(lo + bound, sum(ctx_lens))
        lens = (cu_ctx[1:].clamp(lo, hi) - cu_ctx[:-1].clamp(lo, hi)).tolist()
        part, part_lse = backend.varlen_attention(dev[0], k_ctx[lo:hi].to(device), v_ctx[lo:hi].to(device), dev[3],
                                                  cu(lens).to(device), scale, max(q_lens), max(lens), causal=False,
                                                  return_lse=True)
        _, ref_lse = torch_attention.varlen_attention(q.float(), k_ctx[lo:hi].float(), v_ctx[lo:hi].float(),
                                                      cu(q_lens), cu(lens), scale, causal=False, return_lse=True)
        assert torch.equal(part_lse.cpu().isinf(), ref_lse.isinf())       # the requests without keys here
        assert (part_lse.cpu() - ref_lse).nan_to_num(0.0).abs().max() < 2e-2
        out, lse = torch_attention.merge_attn_states(out, lse, part, part_lse)
    assert out.shape == (sum(q_lens), heads, v_dim)
    assert rel_err(out.float().cpu(), want) < 1e-2


@pytest.mark.skipif(not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1",
                    reason="needs a CUDA GPU or TRITON_INTERPRET=1")
def test_triton_attend_decodes_of_a_mixed_step_on_the_latent_cache():
    """A step's decodes alone (TritonAttentionBackend.attend_decodes: the decode kernel on its first num_decodes
    requests), as DeepSeek's MLA attends them absorbed while its prompt requests go expanded: their rows of the
    torch reference's attention over the whole step."""
    from test_triton_attention import BF16, make_batch, reference, rel_err

    from pagedllm.attention.backends.base import CommonAttentionMetadata
    heads, width = 4, 32 + 8
    query, k_cache, v_cache, qsl, seq_lens, tables = make_batch([(37, 1), (5, 1), (40, 12)], heads, 1, width, 16,
                                                                BF16, seed=4)
    device = query.device
    backend = _triton_backend(heads, 1, width, 16, device)
    common = CommonAttentionMetadata(query_start_loc=qsl, seq_lens=seq_lens, block_tables=tables,
                                     slot_mapping=torch.zeros(14, dtype=torch.long, device=device), max_query_len=12,
                                     max_seq_len=40, num_decodes=2)
    metadata = backend.build_metadata(common)
    assert metadata.common is common
    scale = 0.2
    got = backend.attend_decodes(query[:2], torch.stack((k_cache, v_cache)), metadata, scale)
    assert rel_err(got, reference(query, k_cache, v_cache, qsl, seq_lens, tables, scale)[:2]) < 1e-2


@pytest.mark.skipif(not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1",
                    reason="needs a CUDA GPU or TRITON_INTERPRET=1")
def test_triton_rotary_in_place_on_the_rope_views():
    """MLAttention's rotation on the GPU: the Triton rotary turns, in place, the rope part of each head of Q (a view
    of q_b_proj's output) and the shared k_pe (a view of kv_a_proj_with_mqa's output, one head): the torch
    rotary's values there, every other element (q_nope, the latent) untouched."""
    from pagedllm.kernels.triton_rotary import rotary_inplace
    from pagedllm.model.layers.rotary import RotaryEmbedding
    cfg = _config("v3")
    rotary = RotaryEmbedding(cfg, cfg.qk_rope_head_dim, 256)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    g = torch.Generator().manual_seed(0)
    positions = torch.tensor([0, 5, 77, 200])
    q = torch.randn(4, 4, 192, generator=g)                  # [T, heads, 128 nope + 64 rope]
    kv_a = torch.randn(4, 128 + 64, generator=g)              # [T, kv_lora_rank + rope]
    want_q, want_k = rotary(positions, q[..., 128:], kv_a[:, 128:].unsqueeze(1))
    q_dev, kv_dev = q.clone().to(device), kv_a.clone().to(device)
    rotary_inplace(positions.to(device), q_dev[..., 128:], kv_dev[:, 128:].unsqueeze(1), rotary.cos.to(device),
                   rotary.sin.to(device))
    torch.testing.assert_close(q_dev[..., 128:].cpu(), want_q, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(kv_dev[:, 128:].cpu(), want_k[:, 0], rtol=1e-5, atol=1e-5)
    assert torch.equal(q_dev[..., :128].cpu(), q[..., :128]) and torch.equal(kv_dev[:, :128].cpu(), kv_a[:, :128])
