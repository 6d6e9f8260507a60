"""Qwen2.5-VL / Qwen2-VL with images on a CUDA GPU (tests/models/test_qwen2_vl.py's tiny models and processor). A
step with image rows runs eagerly and rotates Q/K by M-RoPE in the model; every other step, with the requests' text
positions shifted by their delta, runs the Triton backend's rotary + KV store, the fused rotary decode kernel, the
decode CUDA graphs and the piecewise prompt graphs. The tests mix image and text-only requests in one batch, chunk
inside the images, hit the prefix cache and run tensor parallel over 2 GPUs, so a graph or kernel fed the wrong
positions (the index instead of index + delta) gives other tokens than HF fp32's. Skipped without CUDA (collected
on the CPU)."""
from __future__ import annotations

import pytest
import torch
from transformers import LogitsProcessor, LogitsProcessorList

from tests.models.test_llava import images
from tests.models.test_qwen2_vl import ONE, TEXT, TWO, hf_greedy, save_tiny_qwen_vl

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
DEVICE = "cuda"
NEAR_TIE = 0.02      # tests/gpu/test_engine_gpu.py's: fp32 attention dots run as tf32 in the Triton kernels


class _Forced(LogitsProcessor):
    """Each step's choice is ``ours``' token there (the logits HF computed before it are kept by output_logits)."""

    def __init__(self, n: int, ours: list[int]):
        self.n, self.ours = n, ours

    def __call__(self, input_ids, scores):
        forced = torch.full_like(scores, float("-inf"))
        forced[:, self.ours[input_ids.shape[1] - self.n]] = 0.0
        return forced


def assert_greedy_equals_hf(tiny, prompt: str, ims: list, ours: list[int], ref: list[int]) -> None:
    """Our greedy tokens are HF fp32's (on the CPU), or, where they part, each of ours is within a near-tie of HF's
    argmax with HF teacher-forced on our path (the issues' rule for the GPU: equal until the first near-tie). The
    message gives the gap, so a failure says whether a tie or a bug parted them."""
    if ours == ref:
        return
    _, hf, processor = tiny
    inputs = processor(text=prompt, images=ims or None, return_tensors="pt")
    n = inputs["input_ids"].shape[1]
    hf.generation_config.eos_token_id = None      # as hf_greedy: our runs ignore EOS
    # HF's own generate, forced onto our tokens, with the raw logits of each step: a whole-sequence forward would
    # count a generated image-pad id among the image tokens and refuse (the tiny vocabulary has 120 ids).
    with torch.no_grad():
        out = hf.generate(**inputs, max_new_tokens=len(ours), do_sample=False, output_logits=True,
                          return_dict_in_generate=True, logits_processor=LogitsProcessorList([_Forced(n, ours)]))
    assert out.sequences[0, n:].tolist() == list(ours)
    logits = torch.cat(out.logits).float()
    top = logits.max(dim=-1).values
    gap = (top - logits[torch.arange(len(ours)), torch.tensor(ours)]) / top.abs().clamp_min(1.0)
    first = next(i for i, (a, b) in enumerate(zip(ours, ref)) if a != b)
    assert float(gap.max()) <= NEAR_TIE, (
        f"{prompt!r}: ours {ours} vs HF {ref} (first differs at {first}); token {int(gap.argmax())} is "
        f"{float(gap.max()):.4f} (relative) below HF's argmax, gap at the first difference {float(gap[first]):.4f}")


@pytest.fixture(scope="module", params=["qwen2_5_vl", "qwen2_vl"])
def tiny(tmp_path_factory, request):
    path = tmp_path_factory.mktemp(request.param)
    hf, processor = save_tiny_qwen_vl(path, request.param)
    return str(path), hf, processor


def make_llm(tiny, **kwargs):
    from pagedllm import LLM
    return LLM(tiny[0], **{"dtype": "float32", "device": DEVICE, "gpu_memory_utilization": 0.3,
                           "max_model_len": 256, **kwargs})


def _cases(seed: int):
    a, b = images(seed, sizes=((60, 90), (120, 70)))
    return [(ONE, [a]), (TEXT, []), (TWO, [a, b]), (ONE, [b])]


@needs_cuda
@pytest.mark.parametrize("chunk", [None, 5])
def test_images_beside_text_only_requests_equal_hf(tiny, chunk):
    from pagedllm import SamplingParams
    llm = make_llm(tiny, **({"max_num_batched_tokens": chunk} if chunk else {}))
    params = SamplingParams(temperature=0, max_tokens=16, ignore_eos=True)
    cases = _cases(11)
    prompts = [{"prompt": p, "multi_modal_data": {"image": ims}} if ims else p for p, ims in cases]
    outs = llm.generate(prompts, params, use_tqdm=False)
    for (prompt, ims), out in zip(cases, outs):
        ids, ref = hf_greedy(tiny, prompt, ims, max_tokens=16)
        assert out.prompt_token_ids == ids
        assert_greedy_equals_hf(tiny, prompt, ims, list(out.outputs[0].token_ids), ref)
    # Again, from the prefix cache: the same tokens. With 16-token blocks only the two prompts longer than a block
    # hit (a hit never covers a prompt's last token): TWO (26 tokens) recomputes its second image's rows from the
    # cached block, ONE with b (18) its last 2 tokens in a text-only step at index + delta. ONE with a (16 tokens)
    # and TEXT (9) hold no full block before their last token and miss.
    again = llm.generate(prompts, params, use_tqdm=False)
    assert [o.outputs[0].token_ids for o in again] == [o.outputs[0].token_ids for o in outs]
    assert [o.num_cached_tokens for o in again] == [0, 0, 16, 16]


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA GPUs")
def test_tensor_parallel_2_with_images_equals_hf(tiny):
    # NCCL, one GPU per rank, CUDA graphs on: each rank runs the vision transformer; chunks of 7 inside the images.
    from pagedllm import SamplingParams
    llm = make_llm(tiny, tensor_parallel_size=2, max_num_batched_tokens=7)
    params = SamplingParams(temperature=0, max_tokens=16, ignore_eos=True)
    cases = _cases(17)[1:3]
    outs = llm.generate([{"prompt": p, "multi_modal_data": {"image": ims}} if ims else p for p, ims in cases],
                        params, use_tqdm=False)
    for (prompt, ims), out in zip(cases, outs):
        assert_greedy_equals_hf(tiny, prompt, ims, list(out.outputs[0].token_ids),
                                hf_greedy(tiny, prompt, ims, max_tokens=16)[1])
