"""LLaVA-1.5 with images on a CUDA GPU (tests/models/test_llava.py's tiny model and processor): the vision tower
(transformers' CLIPVisionModel) and the projector run on the device, eagerly, inside steps that also use the Triton
attention backend, decode CUDA graphs and piecewise prompt graphs for the text-only requests beside them. A step with
an image's embeddings runs eagerly (the graphs embed input_ids inside them): the tests mix image and text-only
requests in one batch, chunk inside the placeholders, and hit the prefix cache, so a graph that captured the merge
wrongly, or a text-only prompt step replayed with an image's rows, gives other tokens than HF fp32's. In bf16, the
image's embeddings are HF fp32's to bf16 precision; tensor parallel over 2 GPUs (NCCL) gives HF's tokens. Skipped
without CUDA (collected on the CPU)."""
from __future__ import annotations

import pytest
import torch

from tests.models.test_llava import IMAGE_TOKENS, ONE, TWO, hf_greedy, images, save_tiny_llava

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
DEVICE = "cuda"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp("llava")
    hf, processor = save_tiny_llava(path)
    return str(path), hf, processor


def make_llm(tiny, **kwargs):
    from pagedllm import LLM
    return LLM(tiny[0], **{"dtype": "float32", "device": DEVICE, "gpu_memory_utilization": 0.3,
                           "max_model_len": 256, **kwargs})


@needs_cuda
@pytest.mark.parametrize("chunk", [None, 5])
def test_images_beside_text_only_requests_equal_hf(tiny, chunk):
    from pagedllm import SamplingParams
    llm = make_llm(tiny, **({"max_num_batched_tokens": chunk} if chunk else {}))
    params = SamplingParams(temperature=0, max_tokens=16, ignore_eos=True)
    a, b = images(11)
    cases = [(ONE, [a]), ("USER: w3 w5 w8 ASSISTANT:", []), (TWO, [a, b]), ("USER: w9 ASSISTANT:", []),
             (ONE, [b])]
    prompts = [{"prompt": p, "multi_modal_data": {"image": ims}} if ims else p for p, ims in cases]
    outs = llm.generate(prompts, params, use_tqdm=False)
    for (prompt, ims), out in zip(cases, outs):
        ids, ref = hf_greedy(tiny, prompt, ims, max_tokens=16) if ims else _hf_text(tiny, prompt, 16)
        assert out.prompt_token_ids == ids
        assert list(out.outputs[0].token_ids) == ref, prompt
    # Again, now from the prefix cache: the same answers; a new image behind the first prompt's text misses.
    again = llm.generate(prompts, params, use_tqdm=False)
    assert [o.outputs[0].token_ids for o in again] == [o.outputs[0].token_ids for o in outs]
    (c,) = images(12, sizes=((31, 31),))
    other = llm.generate({"prompt": ONE, "multi_modal_data": {"image": c}}, params, use_tqdm=False)[0]
    assert list(other.outputs[0].token_ids) == hf_greedy(tiny, ONE, [c], max_tokens=16)[1]


@needs_cuda
def test_bf16_image_embeddings_are_hf_fp32_s(tiny):
    llm = make_llm(tiny, dtype="bfloat16")
    _, hf, processor = tiny
    (image,) = images(13, sizes=((40, 52),))
    pixels = processor(text="<image>", images=[image], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        ref = hf.get_image_features(pixel_values=pixels)
    ref = (ref.pooler_output if hasattr(ref, "pooler_output") else ref)
    ref = torch.cat(list(ref)) if isinstance(ref, (list, tuple)) else ref.reshape(-1, ref.shape[-1])
    ours = llm.apply_model(lambda model: model.embed_multimodal(
        "image", {"pixel_values": pixels.to(DEVICE)}).float().cpu())[0]
    assert ours.shape == (IMAGE_TOKENS, hf.config.text_config.hidden_size) == ref.shape
    torch.testing.assert_close(ours, ref.float(), atol=3e-2, rtol=3e-2)


def _hf_text(tiny, prompt: str, max_tokens: int) -> tuple[list[int], list[int]]:
    _, hf, processor = tiny
    ids = processor.tokenizer(prompt, return_tensors="pt")["input_ids"]
    out = hf.generate(input_ids=ids, max_new_tokens=max_tokens, min_new_tokens=max_tokens, do_sample=False)
    return ids[0].tolist(), out[0, ids.shape[1]:].tolist()


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA GPUs")
def test_tensor_parallel_2_with_images_equals_hf(tiny):
    # NCCL, one GPU per rank, CUDA graphs on: each rank runs the vision tower; chunks of 7 inside the placeholders.
    from pagedllm import SamplingParams
    llm = make_llm(tiny, tensor_parallel_size=2, max_num_batched_tokens=7)
    params = SamplingParams(temperature=0, max_tokens=16, ignore_eos=True)
    a, b = images(17)
    outs = llm.generate([{"prompt": TWO, "multi_modal_data": {"image": [a, b]}}, "USER: w3 w5 w8 ASSISTANT:"],
                        params, use_tqdm=False)
    assert list(outs[0].outputs[0].token_ids) == hf_greedy(tiny, TWO, [a, b], max_tokens=16)[1]
    assert list(outs[1].outputs[0].token_ids) == _hf_text(tiny, "USER: w3 w5 w8 ASSISTANT:", 16)[1]
