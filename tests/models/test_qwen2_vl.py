"""Qwen2.5-VL and Qwen2-VL (images) against HF transformers fp32 greedy, on tiny random models (vision transformer of 4
blocks, Qwen2.5-VL's with window attention in blocks 0 and 2; a 2-layer Qwen2 decoder with M-RoPE, mrope_section
[2, 3, 3]) and an image processor of 28..224 px images (4..64 placeholder tokens each, by the image's size) built
here. The tokens must be HF's: one and two images of different sizes, text-only prompts on the same model (M-RoPE
as the plain rotary), chunked prefill with chunk ends inside an image, prefix caching that tells two images behind
the same text apart, preemption, both checkpoint layouts, chat with a data: URL image; video refused."""
from __future__ import annotations

import json
from unittest import mock

import pytest
import torch
import transformers

from pagedllm import LLM, SamplingParams
from tests.models.test_llava import images
from tests.unit.test_chat_images_server import data_url

GREEDY = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>",
            "<|video_pad|>"]
IMAGE_PAD = 5
# Qwen2-VL's template, cut down: content parts (the engine must hand it parts: "auto" content format).
CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }} {% if m['content'] is string %}"
                 "{{ m['content'] }}{% else %}{% for c in m['content'] %}{% if c['type'] in ('image', 'image_url') %}"
                 "<|vision_start|><|image_pad|><|vision_end|> {% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}"
                 "{% endfor %}{% endif %}<|im_end|> {% endfor %}<|im_start|>assistant")
IMG = "<|vision_start|><|image_pad|><|vision_end|>"
ONE = f"<|im_start|> user {IMG} w3 w5 w8 <|im_end|> <|im_start|> assistant"
TWO = f"<|im_start|> user {IMG} w3 w5 {IMG} w9 <|im_end|> <|im_start|> assistant"
TEXT = "<|im_start|> user w3 w5 w8 w13 <|im_end|> <|im_start|> assistant"


def qwen_tokenizer():
    """A word-level tokenizer: Qwen's special tokens (0-6), "user" 7, "assistant" 8, w0..w99 (9-108)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    vocab = {t: i for i, t in enumerate(SPECIALS)}
    vocab.update({"user": 7, "assistant": 8, **{f"w{i}": 9 + i for i in range(100)}})
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<|endoftext|>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>",
                                                pad_token="<|endoftext|>", additional_special_tokens=SPECIALS[1:])
    fast.chat_template = CHAT_TEMPLATE
    return fast


def save_tiny_qwen_vl(path, arch: str = "qwen2_5_vl", seed: int = 0):
    """A tiny random Qwen2.5-VL (or Qwen2-VL) saved to ``path`` with its tokenizer and image processor; returns (HF
    model, HF processor). transformers 5's processor wants a video processor, which needs torchvision (not here):
    it is built without one (images only), and saved as its parts."""
    fast = qwen_tokenizer()
    ip = transformers.Qwen2VLImageProcessorPil(size={"shortest_edge": 28 * 28 * 4, "longest_edge": 28 * 28 * 64},
                                              patch_size=14, merge_size=2, temporal_patch_size=2)
    text = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, vocab_size=120, max_position_embeddings=512, bos_token_id=0, eos_token_id=2,
                initializer_range=0.3,
                rope_parameters={"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 10000.0})
    ids = dict(image_token_id=IMAGE_PAD, video_token_id=6, vision_start_token_id=3, vision_end_token_id=4)
    if arch == "qwen2_5_vl":
        vision = dict(depth=4, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64, patch_size=14,
                      spatial_merge_size=2, temporal_patch_size=2, window_size=56, fullatt_block_indexes=[1, 3])
        cfg, model, proc = (transformers.Qwen2_5_VLConfig(vision_config=vision, text_config=text, **ids),
                            transformers.Qwen2_5_VLForConditionalGeneration, transformers.Qwen2_5_VLProcessor)
    else:
        vision = dict(depth=3, embed_dim=32, hidden_size=64, mlp_ratio=2, num_heads=2, patch_size=14,
                      spatial_merge_size=2, temporal_patch_size=2)
        cfg, model, proc = (transformers.Qwen2VLConfig(vision_config=vision, text_config=text, **ids),
                            transformers.Qwen2VLForConditionalGeneration, transformers.Qwen2VLProcessor)
    with mock.patch.object(transformers.ProcessorMixin, "check_argument_for_proper_class", lambda *a: None):
        processor = proc(image_processor=ip, tokenizer=fast, video_processor=None)
    torch.manual_seed(seed)
    hf = model(cfg).eval()
    hf.save_pretrained(path)
    fast.save_pretrained(path)
    ip.save_pretrained(path)
    return hf, processor


@pytest.fixture(scope="module", params=["qwen2_5_vl", "qwen2_vl"])
def tiny(tmp_path_factory, request):
    path = tmp_path_factory.mktemp(request.param)
    hf, processor = save_tiny_qwen_vl(path, request.param)
    return str(path), hf, processor


def hf_greedy(tiny, prompt: str, ims: list, max_tokens: int = 8, **kwargs) -> tuple[list[int], list[int]]:
    """(the processor's prompt ids, HF's greedy tokens); ``kwargs`` for the processor."""
    _, hf, processor = tiny
    inputs = processor(text=prompt, images=ims or None, return_tensors="pt", **kwargs)
    ids = inputs["input_ids"][0].tolist()
    # No EOS at all (HF's min_new_tokens would forbid "<|im_end|>", which ignore_eos lets us sample).
    hf.generation_config.eos_token_id = None
    out = hf.generate(**inputs, max_new_tokens=max_tokens, do_sample=False)
    assert out.shape[1] == len(ids) + max_tokens
    return ids, out[0, len(ids):].tolist()


def make_llm(tiny, **kwargs) -> LLM:
    return LLM(tiny[0], **{"dtype": "float32", "kv_cache_memory_gb": 0.01, "max_model_len": 256, **kwargs})


def mm(prompt: str, ims: list):
    return {"prompt": prompt, "multi_modal_data": {"image": ims}} if ims else prompt


def test_images_and_text_equal_hf(tiny):
    llm = make_llm(tiny)
    a, b = images(1, sizes=((60, 90), (120, 70)))
    cases = [(ONE, [a]), (ONE, [b]), (TWO, [a, b]), (TEXT, [])]
    outs = llm.generate([mm(p, ims) for p, ims in cases], GREEDY, use_tqdm=False)
    for (prompt, ims), out in zip(cases, outs):
        ids, ref = hf_greedy(tiny, prompt, ims)
        assert out.prompt_token_ids == ids          # each <|image_pad|> expanded to its grid's count
        assert list(out.outputs[0].token_ids) == ref, prompt
    # 60 x 90 px -> 56 x 84 -> a 2 x 3 merged grid; 120 x 70 -> 112 x 70 -> 4 x 2 (rows x columns, HF's order)
    assert [o.prompt_token_ids.count(IMAGE_PAD) for o in outs] == [6, 8, 14, 0]
    assert outs[0].outputs[0].token_ids != outs[1].outputs[0].token_ids
    with pytest.raises(ValueError, match=r"multi_modal_data\['video'\]: video inputs are not supported yet"):
        llm.generate({"prompt": ONE, "multi_modal_data": {"video": [a]}}, GREEDY, use_tqdm=False)


def test_chunks_ending_inside_the_images_equal_hf(tiny):
    # Chunks of 5: the first image's 6 placeholders (positions 4..9) and the second's 8 span chunk ends, and the
    # text after them is positioned from the images' grids (the delta) in later chunks and decode.
    llm = make_llm(tiny, max_num_batched_tokens=5, enable_prefix_caching=False)
    a, b = images(2, sizes=((60, 90), (120, 70)))
    out = llm.generate(mm(TWO, [a, b]), GREEDY, use_tqdm=False)[0]
    assert list(out.outputs[0].token_ids) == hf_greedy(tiny, TWO, [a, b])[1]


def test_prefix_cache_and_preemption(tiny):
    # 16-token blocks: the first block holds the template, the image's placeholders and the same text for both
    # images; B behind A's text must miss, A again hits its two full blocks and continues from its delta.
    llm = make_llm(tiny)
    a, b = images(3, sizes=((100, 100), (90, 110)))      # 3 x 3 merged grids: 9 placeholders each
    prompt = f"<|im_start|> user {IMG} " + " ".join(f"w{i}" for i in range(2, 40, 2)) + \
        " <|im_end|> <|im_start|> assistant"
    first, second, again = (llm.generate(mm(prompt, [im]), GREEDY, use_tqdm=False)[0] for im in (a, b, a))
    assert list(first.outputs[0].token_ids) == list(again.outputs[0].token_ids) == hf_greedy(tiny, prompt, [a])[1]
    assert list(second.outputs[0].token_ids) == hf_greedy(tiny, prompt, [b])[1]
    assert second.num_cached_tokens == 0 and again.num_cached_tokens == 32
    # 6 blocks for two prompts of 35 tokens (3 blocks each) and 20 new tokens (a 4th block each): one is preempted
    # and recomputed (its image encoded again, its positions reused).
    small = make_llm(tiny, num_gpu_blocks_override=6, max_model_len=64, enable_prefix_caching=False)
    params = SamplingParams(temperature=0, max_tokens=20, ignore_eos=True)
    outs = small.generate([mm(prompt, [im]) for im in (a, b)], params, use_tqdm=False)
    assert small.llm_engine.scheduler.num_preemptions > 0
    for im, out in zip((a, b), outs):
        assert list(out.outputs[0].token_ids) == hf_greedy(tiny, prompt, [im], max_tokens=20)[1]


def test_transformers5_module_names_and_chat(tiny, tmp_path):
    # A state_dict of transformers 5's modules (model.language_model.*, model.visual.*, lm_head.*) loads as the
    # 4.x names transformers 5.25 saves (model.*, visual.*); chat with a data: URL renders the parts template
    # (chat_template.json's, the processor's).
    import shutil

    from safetensors.torch import load_file, save_file
    tensors = load_file(f"{tiny[0]}/model.safetensors")
    renamed = {("model.language_model." + k.removeprefix("model.") if k.startswith("model.") else
                "model." + k if k.startswith("visual.") else k): v for k, v in tensors.items()}
    assert any(k.startswith("model.visual.") for k in renamed)
    folder = tmp_path / "m5"
    shutil.copytree(tiny[0], folder)
    save_file(renamed, str(folder / "model.safetensors"))
    # The hub's Qwen2-VL folders keep the processor's chat template in chat_template.json: the tokenizer has none.
    (folder / "chat_template.jinja").unlink()
    (folder / "chat_template.json").write_text(json.dumps({"chat_template": CHAT_TEMPLATE}))
    llm = make_llm((str(folder),) + tiny[1:])
    (image,) = images(4, sizes=((45, 70),))
    messages = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_url(image)}},
                                             {"type": "text", "text": "w3 w5"}]}]
    out = llm.chat(messages, GREEDY, use_tqdm=False)[0]
    text = f"<|im_start|>user {IMG} w3 w5<|im_end|> <|im_start|>assistant"
    ids, ref = hf_greedy(tiny, text, [image])
    assert out.prompt_token_ids == ids
    assert list(out.outputs[0].token_ids) == ref


def test_tensor_parallel_2_equals_hf(tiny):
    # TP=2 over gloo: Qwen2's decoder split over the ranks, each rank runs the whole vision transformer and computes
    # the M-RoPE positions itself; chunks of 7 end inside the images; a text-only request beside them.
    if tiny[1].config.model_type != "qwen2_5_vl":
        pytest.skip("one architecture is enough here (the same decoder and runner)")
    llm = make_llm(tiny, tensor_parallel_size=2, max_num_batched_tokens=7)
    a, b = images(16, sizes=((60, 90), (120, 70)))
    cases = [(TWO, [a, b]), (TEXT, [])]
    outs = llm.generate([mm(p, ims) for p, ims in cases], GREEDY, use_tqdm=False)
    for (prompt, ims), out in zip(cases, outs):
        assert list(out.outputs[0].token_ids) == hf_greedy(tiny, prompt, ims)[1], prompt


def test_mm_processor_kwargs_pixel_range(tiny):
    # vLLM's mm_processor_kwargs min_pixels / max_pixels: the images shrink to at most 6 placeholders each (the
    # processor's size; profiling's largest image too), HF's tokens with the same size; other keys refused by name.
    if tiny[1].config.model_type != "qwen2_5_vl":
        pytest.skip("the same front end for both")
    llm = make_llm(tiny, mm_processor_kwargs={"max_pixels": 28 * 28 * 6})
    a, b = images(5, sizes=((60, 90), (120, 70)))
    out = llm.generate(mm(TWO, [a, b]), GREEDY, use_tqdm=False)[0]
    ids, ref = hf_greedy(tiny, TWO, [a, b], size={"shortest_edge": 28 * 28 * 4, "longest_edge": 28 * 28 * 6})
    assert out.prompt_token_ids == ids and out.prompt_token_ids.count(IMAGE_PAD) == 9      # 14 without the limit
    assert list(out.outputs[0].token_ids) == ref
    with pytest.raises(ValueError, match=r"mm_processor_kwargs \['fps'\] are not supported for "
                                         r"Qwen2_5_VLForConditionalGeneration \(supported: min_pixels, max_pixels\)"):
        make_llm(tiny, mm_processor_kwargs={"fps": 1})


def test_per_prompt_mm_processor_kwargs(tiny):
    # vLLM's per-prompt mm_processor_kwargs (a prompt's field, LLM.chat's keyword) over the engine's: HF's tokens for
    # the images at that size. Before: LLM.chat(mm_processor_kwargs=...) was a TypeError and the prompt's field a
    # "not supported yet" ValueError. A max_pixels past the engine's (its memory profile's largest image) is refused.
    if tiny[1].config.model_type != "qwen2_5_vl":
        pytest.skip("the same front end for both")
    llm = make_llm(tiny)
    small = {"max_pixels": 28 * 28 * 6}
    size = {"shortest_edge": 28 * 28 * 4, "longest_edge": 28 * 28 * 6}
    a, b = images(5, sizes=((60, 90), (120, 70)))
    out = llm.generate({**mm(TWO, [a, b]), "mm_processor_kwargs": small}, GREEDY, use_tqdm=False)[0]
    ids, ref = hf_greedy(tiny, TWO, [a, b], size=size)
    assert out.prompt_token_ids == ids and out.prompt_token_ids.count(IMAGE_PAD) == 9      # 14 without
    assert list(out.outputs[0].token_ids) == ref
    messages = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_url(b)}},
                                             {"type": "text", "text": "w3 w5"}]}]
    out = llm.chat(messages, GREEDY, use_tqdm=False, mm_processor_kwargs=small)[0]
    ids, ref = hf_greedy(tiny, f"<|im_start|>user {IMG} w3 w5<|im_end|> <|im_start|>assistant", [b], size=size)
    assert out.prompt_token_ids == ids and list(out.outputs[0].token_ids) == ref
    plain = llm.chat(messages, GREEDY, use_tqdm=False)[0]
    assert plain.prompt_token_ids.count(IMAGE_PAD) > out.prompt_token_ids.count(IMAGE_PAD)
    with pytest.raises(ValueError, match=r"mm_processor_kwargs max_pixels 51744 is above the engine's 50176"):
        llm.chat(messages, GREEDY, use_tqdm=False, mm_processor_kwargs={"max_pixels": 28 * 28 * 66})
    with pytest.raises(ValueError, match=r"mm_processor_kwargs \['fps'\] are not supported"):
        llm.generate({**mm(ONE, [a]), "mm_processor_kwargs": {"fps": 1}}, GREEDY, use_tqdm=False)
