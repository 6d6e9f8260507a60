"""kernels/torch_attention.varlen_attention's non-causal form and log-sum-exp, and merge_attn_states: DeepSeek's MLA
prefill over a long cached context attends the new tokens to themselves (causal) and to the context in bounded
chunks (non-causal), merging the outputs by log-sum-exp. Merged, that must be the one causal pass over the whole
sequences (fp32, 1e-5), for several requests of odd lengths, one without cached context, chunks that end inside a
request's context and hold none of another's."""
from __future__ import annotations

import torch

from pagedllm.kernels import torch_attention

Q_LENS, CTX_LENS = [5, 1, 13, 7], [0, 29, 11, 40]       # new tokens, cached context tokens, per request


def _cu(lens: list[int]) -> torch.Tensor:
    return torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], dtype=torch.int32)


def _random(heads: int = 4, kv_heads: int = 2, dim: int = 24, v_dim: int = 12):
    g = torch.Generator().manual_seed(3)
    k_lens = [q + c for q, c in zip(Q_LENS, CTX_LENS)]
    q = torch.randn(sum(Q_LENS), heads, dim, generator=g)
    k = torch.randn(sum(k_lens), kv_heads, dim, generator=g)
    v = torch.randn(sum(k_lens), kv_heads, v_dim, generator=g)
    return q, k, v, k_lens


def _split(k: torch.Tensor, k_lens: list[int]):
    """Each request's keys split into its cached context's and its new tokens' (request by request)."""
    ctx, new, at = [], [], 0
    for c, n in zip(CTX_LENS, Q_LENS):
        ctx.append(k[at:at + c])
        new.append(k[at + c:at + c + n])
        at += c + n
    return torch.cat(ctx), torch.cat(new)


def chunked_attention(q, k, v, k_lens, bound: int, scale: float, drop_chunk: int | None = None) -> torch.Tensor:
    """The new tokens over their own keys (causal), then over the context keys (request by request) cut every
    ``bound`` keys (non-causal), merged by log-sum-exp."""
    k_ctx, k_new = _split(k, k_lens)
    v_ctx, v_new = _split(v, k_lens)
    cu_q = _cu(Q_LENS)
    out, lse = torch_attention.varlen_attention(q, k_new, v_new, cu_q, cu_q, scale, return_lse=True)
    cu_ctx = _cu(CTX_LENS)
    for i, lo in enumerate(range(0, sum(CTX_LENS), bound)):
        hi = min(lo + bound, sum(CTX_LENS))
        lens = (cu_ctx[1:].clamp(lo, hi) - cu_ctx[:-1].clamp(lo, hi)).tolist()
        if i == drop_chunk:
            continue
        part, part_lse = torch_attention.varlen_attention(q, k_ctx[lo:hi], v_ctx[lo:hi], cu_q, _cu(lens), scale,
                                                          causal=False, return_lse=True)
        out, lse = torch_attention.merge_attn_states(out, lse, part, part_lse)
    return out


def test_context_chunks_merged_by_lse_equal_one_causal_pass():
    q, k, v, k_lens = _random()
    scale = 24 ** -0.5
    want = torch_attention.varlen_attention(q, k, v, _cu(Q_LENS), _cu(k_lens), scale)
    for bound in (8, 17, 200):          # 200: the whole context in one chunk
        got = chunked_attention(q, k, v, k_lens, bound, scale)
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    # One chunk left out, or the LSEs' weights taken the wrong way round: not that attention.
    assert (chunked_attention(q, k, v, k_lens, 8, scale, drop_chunk=2) - want).abs().max() > 1e-2


def test_lse_and_non_causal_form_and_a_request_without_keys():
    """The LSE is the log of the softmax's denominator over the scaled scores; non-causal, every query sees every
    key of its request; a request with no key there gives output 0 and LSE -inf (merged, the other side wins)."""
    q, k, v, _ = _random(heads=2, kv_heads=2)
    scale = 0.3
    cu_q, cu_k = _cu([3, 4]), _cu([0, 6])
    out, lse = torch_attention.varlen_attention(q[:7], k[:6], v[:6], cu_q, cu_k, scale, causal=False,
                                                return_lse=True)
    scores = torch.einsum("qhd,khd->hqk", q[3:7], k[:6]) * scale
    torch.testing.assert_close(lse[3:7], torch.logsumexp(scores, -1).T, rtol=0, atol=1e-5)
    torch.testing.assert_close(out[3:7], torch.einsum("hqk,khd->qhd", scores.softmax(-1), v[:6]), rtol=0,
                               atol=1e-5)
    assert torch.equal(out[:3], torch.zeros_like(out[:3])) and bool((lse[:3] == float("-inf")).all())
    other = torch.randn_like(out)
    merged, merged_lse = torch_attention.merge_attn_states(out, lse, other, torch.zeros_like(lse))
    torch.testing.assert_close(merged[:3], other[:3], rtol=0, atol=0)
    none, none_lse = torch_attention.merge_attn_states(out[:3], lse[:3], out[:3], lse[:3])
    assert not none.isnan().any() and bool((none_lse == float("-inf")).all())
