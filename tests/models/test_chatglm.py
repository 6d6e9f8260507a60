"""ChatGLM2 / ChatGLM3 (``ChatGLMModel`` / ``ChatGLMForConditionalGeneration``) against a plain-torch reference.

HF transformers does not ship ChatGLM (its modeling code comes with the hub checkpoint, unreachable here), so the
reference is written below from the published architecture, independently of pagedllm's layers: interleaved rotary
on the first half of each head, multi-query attention with ``multi_query_group_num`` KV heads, SwiGLU, RMSNorm,
recomputing the whole sequence at every step (no KV cache). The checkpoint is a config.json in THUDM's format (with
its ``auto_map`` to remote code that is not there) and random safetensors under THUDM's tensor names.
"""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from pagedllm import LLM, SamplingParams

NEW_TOKENS = 10
PROMPT_LENS = (4, 19, 37)

# chatglm2-6b's config.json fields, shrunk (kv_channels * heads == hidden, 2 KV groups for 4 heads)
CHATGLM2 = dict(
    model_type="chatglm", architectures=["ChatGLMModel"],
    auto_map={"AutoConfig": "configuration_chatglm.ChatGLMConfig",
              "AutoModel": "modeling_chatglm.ChatGLMForConditionalGeneration",
              "AutoModelForCausalLM": "modeling_chatglm.ChatGLMForConditionalGeneration"},
    add_bias_linear=False, add_qkv_bias=True, apply_query_key_layer_scaling=True,
    apply_residual_connection_post_layernorm=False, attention_dropout=0.0, attention_softmax_in_fp32=True,
    bias_dropout_fusion=True, ffn_hidden_size=96, fp32_residual_connection=False, hidden_dropout=0.0,
    hidden_size=64, kv_channels=16, layernorm_epsilon=1e-5, multi_query_attention=True, multi_query_group_num=2,
    num_attention_heads=4, num_layers=2, original_rope=True, padded_vocab_size=512, post_layer_norm=True,
    rmsnorm=True, seq_length=256, use_cache=True, torch_dtype="float32", tie_word_embeddings=False,
    eos_token_id=2, pad_token_id=0)
# chatglm3-6b-32k's difference: the rotary base scaled by rope_ratio
CHATGLM3_32K = dict(CHATGLM2, architectures=["ChatGLMForConditionalGeneration"], rope_ratio=50)


def random_weights(cfg: dict, seed: int) -> dict[str, torch.Tensor]:
    """THUDM's tensor names; std 0.2 so that greedy continuations vary (std 0.02 gives near-uniform logits)."""
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=gen) * 0.2

    hidden, ffn, vocab = cfg["hidden_size"], cfg["ffn_hidden_size"], cfg["padded_vocab_size"]
    qkv = (cfg["num_attention_heads"] + 2 * cfg["multi_query_group_num"]) * cfg["kv_channels"]
    w = {"transformer.embedding.word_embeddings.weight": rand(vocab, hidden) * 5,
         "transformer.encoder.final_layernorm.weight": 1 + rand(hidden),
         "transformer.output_layer.weight": rand(vocab, hidden),
         # saved by the remote code's RotaryEmbedding buffer in the original .bin checkpoints; must be skipped
         "transformer.rotary_pos_emb.inv_freq": torch.ones(cfg["kv_channels"] // 4)}
    for i in range(cfg["num_layers"]):
        p = f"transformer.encoder.layers.{i}."
        w |= {p + "input_layernorm.weight": 1 + rand(hidden),
              p + "self_attention.query_key_value.weight": rand(qkv, hidden),
              p + "self_attention.query_key_value.bias": rand(qkv),
              p + "self_attention.dense.weight": rand(hidden, cfg["num_attention_heads"] * cfg["kv_channels"]),
              p + "post_attention_layernorm.weight": 1 + rand(hidden),
              p + "mlp.dense_h_to_4h.weight": rand(2 * ffn, hidden),
              p + "mlp.dense_4h_to_h.weight": rand(hidden, ffn)}
    return w


# ---- the reference: ChatGLM2's forward pass in plain torch, from the published architecture ----

def _rms_norm(x, weight, eps):
    return weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def _rotary_interleaved(x, positions, base, interleaved=True):
    """x [T, H, D]: rotate the first D/2 dims in pairs (x[2i], x[2i+1]) by position * base^(-2i / (D/2)).
    ``interleaved=False`` pairs (x[i], x[i + D/4]) instead: the wrong layout, used to show the test would notice."""
    tokens, heads, head_dim = x.shape
    rot = head_dim // 2
    theta = 1.0 / (base ** (torch.arange(0, rot, 2, dtype=torch.float) / rot))
    angles = torch.outer(positions.float(), theta)                      # [T, rot/2]
    cos, sin = angles.cos()[:, None, :], angles.sin()[:, None, :]
    x_rot, x_pass = x[..., :rot], x[..., rot:]
    if interleaved:
        pairs = x_rot.reshape(tokens, heads, rot // 2, 2)
        a, b = pairs[..., 0], pairs[..., 1]
        out = torch.stack([a * cos - b * sin, b * cos + a * sin], dim=-1).flatten(2)
    else:
        a, b = x_rot[..., :rot // 2], x_rot[..., rot // 2:]
        out = torch.cat([a * cos - b * sin, b * cos + a * sin], dim=-1)
    return torch.cat([out, x_pass], dim=-1)


@torch.no_grad()
def reference_logits(cfg: dict, w: dict[str, torch.Tensor], ids: list[int], interleaved: bool = True) -> torch.Tensor:
    """Logits [T, vocab] of the whole sequence ``ids``."""
    heads, groups, head_dim = cfg["num_attention_heads"], cfg["multi_query_group_num"], cfg["kv_channels"]
    eps, base = cfg["layernorm_epsilon"], 10000 * cfg.get("rope_ratio", 1)
    tokens = len(ids)
    positions = torch.arange(tokens)
    h = w["transformer.embedding.word_embeddings.weight"][torch.tensor(ids)]
    causal = torch.ones(tokens, tokens, dtype=torch.bool).tril()
    for i in range(cfg["num_layers"]):
        p = f"transformer.encoder.layers.{i}."
        x = _rms_norm(h, w[p + "input_layernorm.weight"], eps)
        qkv = x @ w[p + "self_attention.query_key_value.weight"].T + w[p + "self_attention.query_key_value.bias"]
        q, k, v = qkv.split([heads * head_dim, groups * head_dim, groups * head_dim], dim=-1)
        q = _rotary_interleaved(q.view(tokens, heads, head_dim), positions, base, interleaved)
        k = _rotary_interleaved(k.view(tokens, groups, head_dim), positions, base, interleaved)
        # multi-query: query head j reads KV group j // (heads / groups)
        k = k.repeat_interleave(heads // groups, dim=1)
        v = v.view(tokens, groups, head_dim).repeat_interleave(heads // groups, dim=1)
        scores = torch.einsum("qhd,khd->hqk", q, k) / head_dim ** 0.5
        probs = scores.masked_fill(~causal, float("-inf")).softmax(-1)
        attn = torch.einsum("hqk,khd->qhd", probs, v).reshape(tokens, heads * head_dim)
        h = h + attn @ w[p + "self_attention.dense.weight"].T
        x = _rms_norm(h, w[p + "post_attention_layernorm.weight"], eps)
        gate, up = (x @ w[p + "mlp.dense_h_to_4h.weight"].T).chunk(2, dim=-1)    # SwiGLU: silu(first) * second
        h = h + (F.silu(gate) * up) @ w[p + "mlp.dense_4h_to_h.weight"].T
    h = _rms_norm(h, w["transformer.encoder.final_layernorm.weight"], eps)
    return h @ w["transformer.output_layer.weight"].T


def reference_greedy(cfg, w, prompt: list[int]) -> tuple[list[int], list[torch.Tensor]]:
    """Greedy tokens and each step's log-probabilities."""
    ids, logprobs = list(prompt), []
    for _ in range(NEW_TOKENS):
        logits = reference_logits(cfg, w, ids)[-1]
        top2 = logits.topk(2).values
        assert top2[0] - top2[1] > 1e-4, "near-tie in the reference's greedy choice; pick another seed"
        logprobs.append(logits.log_softmax(-1))
        ids.append(int(logits.argmax()))
    return ids[len(prompt):], logprobs


def _prompts(vocab: int) -> list[list[int]]:
    gen = torch.Generator().manual_seed(5)
    return [torch.randint(3, vocab, (n,), generator=gen).tolist() for n in PROMPT_LENS]


@pytest.fixture(scope="module", params=["chatglm2", "chatglm3-32k"])
def checkpoint(request, tmp_path_factory):
    cfg = {"chatglm2": CHATGLM2, "chatglm3-32k": CHATGLM3_32K}[request.param]
    path = tmp_path_factory.mktemp(request.param)
    weights = random_weights(cfg, seed=0)
    with open(path / "config.json", "w") as f:
        json.dump(cfg, f)
    save_file(weights, str(path / "model.safetensors"))
    return cfg, weights, str(path)


def test_reference_depends_on_the_rotary_layout(checkpoint):
    # The parity below would not notice a wrong rotary layout if the positions did not matter to these weights.
    cfg, weights, _ = checkpoint
    ids = _prompts(cfg["padded_vocab_size"])[1]
    right = reference_logits(cfg, weights, ids)
    wrong = reference_logits(cfg, weights, ids, interleaved=False)
    assert (right - wrong).abs().max() > 1e-2


def test_greedy_tokens_and_logprobs_match_reference(checkpoint):
    cfg, weights, path = checkpoint
    # trust_remote_code=True as seed 002 passes it: accepted, and no remote code is needed or run
    llm = LLM(path, trust_remote_code=True, skip_tokenizer_init=True, dtype="float32", seed=0)
    prompts = _prompts(cfg["padded_vocab_size"])
    params = SamplingParams(temperature=0.0, max_tokens=NEW_TOKENS, ignore_eos=True, logprobs=3)
    outputs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
    for prompt, out in zip(prompts, outputs):
        tokens, ref_logprobs = reference_greedy(cfg, weights, prompt)
        assert out.outputs[0].token_ids == tokens, f"prompt of {len(prompt)} tokens"
        for step, (ours, ref) in enumerate(zip(out.outputs[0].logprobs, ref_logprobs)):
            for token_id, logprob in ours.items():
                assert abs(logprob.logprob - float(ref[token_id])) < 1e-4, (len(prompt), step, token_id)


def test_chunked_prefill_matches_reference(checkpoint):
    # A 16-token budget splits the longer prompts into chunks and mixes them with decodes.
    cfg, weights, path = checkpoint
    llm = LLM(path, skip_tokenizer_init=True, dtype="float32", seed=0, max_num_batched_tokens=16)
    prompts = _prompts(cfg["padded_vocab_size"])
    params = SamplingParams(temperature=0.0, max_tokens=NEW_TOKENS, ignore_eos=True)
    outputs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
    assert [o.outputs[0].token_ids for o in outputs] == [reference_greedy(cfg, weights, p)[0] for p in prompts]


def test_unsupported_layout_is_refused(tmp_path):
    # A P-tuning v2 prefix (pre_seq_len) changes every layer's KV: refused, never silently ignored.
    cfg = dict(CHATGLM2, pre_seq_len=8)
    with open(tmp_path / "config.json", "w") as f:
        json.dump(cfg, f)
    save_file(random_weights(CHATGLM2, seed=0), str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError, match="pre_seq_len=8 is not supported"):
        LLM(str(tmp_path), skip_tokenizer_init=True, dtype="float32")
