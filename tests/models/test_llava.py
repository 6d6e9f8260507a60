"""LLaVA-1.5 (LlavaForConditionalGeneration) with images, vLLM's way (``multi_modal_data``, ``LLM.chat`` image_url
parts), against HF transformers fp32 greedy on a tiny random LLaVA (CLIP vision tower 3 layers, Llama 2 layers) and
a LlavaProcessor built here (a word-level tokenizer with "<image>", a 28 px CLIPImageProcessor: 16 placeholder
tokens per image). Images of different sizes are resized and cropped by the processor; the prompt's ids must be the
processor's, and the tokens HF's: one and two images, chunked prefill with chunk boundaries inside the placeholders,
prefix caching that tells two images behind the same text apart, limit_mm_per_prompt, a text-only model given one."""
from __future__ import annotations

import base64
import io

import PIL.Image
import pytest
import torch
import transformers

from pagedllm import LLM, SamplingParams

GREEDY = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)
IMAGE_TOKENS = 16        # (28 / 7) ** 2 patches; the CLS row is dropped ("default" feature selection)
# The processor's chat template, written for content parts as LLaVA-1.5's is (images first, then the texts): the
# engine must prefer it to the tokenizer's (vLLM's order) and hand it parts ("auto" content format detects that).
CHAT_TEMPLATE = ("{{ bos_token }}{% for m in messages %}{{ m['role'].upper() }}: "
                 "{% for c in m['content'] | selectattr('type', 'equalto', 'image') %}<image>\n{% endfor %}"
                 "{% for c in m['content'] %}{% if c['type'] == 'text' %}{{ c['text'] }} {% endif %}{% endfor %}"
                 "{% endfor %}ASSISTANT:")
# The tokenizer's own (for a text-only model's folder); a LLaVA folder's is the processor's: transformers 5 saves one
# chat_template.jinja for both.
TOKENIZER_CHAT_TEMPLATE = "{{ bos_token }}{% for m in messages %}{{ m['content'] }}{% endfor %}"


def word_tokenizer_with_image():
    """A fast word-level tokenizer: <unk> <s> </s> <pad> <image> (0-4), "USER:" 5, "ASSISTANT:" 6, w0..w99 (7-106);
    BOS first; "<image>" a special token (so "<image><image>..." splits into one id each, as the processor needs)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "<pad>": 3, "<image>": 4, "USER:": 5, "ASSISTANT:": 6,
             **{f"w{i}": 7 + i for i in range(100)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                                unk_token="<unk>", pad_token="<pad>",
                                                additional_special_tokens=["<image>"])
    fast.chat_template = TOKENIZER_CHAT_TEMPLATE
    return fast


def save_tiny_llava(path, seed: int = 0):
    """A tiny random LLaVA-1.5 and its processor saved to ``path``; returns (HF model, processor)."""
    fast = word_tokenizer_with_image()
    images = transformers.CLIPImageProcessor(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28})
    processor = transformers.LlavaProcessor(image_processor=images, tokenizer=fast, patch_size=7,
                                            vision_feature_select_strategy="default", num_additional_image_tokens=1,
                                            chat_template=CHAT_TEMPLATE)
    vision = transformers.CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                           num_attention_heads=2, image_size=28, patch_size=7, projection_dim=16)
    text = transformers.LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                                    num_key_value_heads=2, vocab_size=120, max_position_embeddings=512)
    cfg = transformers.LlavaConfig(vision_config=vision, text_config=text, image_token_index=4)
    torch.manual_seed(seed)
    hf = transformers.LlavaForConditionalGeneration(cfg).eval()
    hf.save_pretrained(path)
    processor.save_pretrained(path)
    return hf, processor


def images(seed: int, sizes=((40, 30), (50, 64))) -> list[PIL.Image.Image]:
    gen = torch.Generator().manual_seed(seed)
    return [PIL.Image.fromarray(torch.randint(0, 256, (h, w, 3), generator=gen, dtype=torch.uint8).numpy())
            for w, h in sizes]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp("llava")
    hf, processor = save_tiny_llava(path)
    return str(path), hf, processor


def hf_greedy(tiny, prompt: str, ims: list, max_tokens: int = 8, **kwargs) -> tuple[list[int], list[int]]:
    """(the processor's prompt ids, HF's greedy tokens); ``kwargs`` for the processor."""
    _, hf, processor = tiny
    inputs = processor(text=prompt, images=ims, return_tensors="pt", **kwargs)
    ids = inputs["input_ids"][0].tolist()
    out = hf.generate(**inputs, max_new_tokens=max_tokens, min_new_tokens=max_tokens, do_sample=False)
    return ids, out[0, len(ids):].tolist()


def make_llm(tiny, **kwargs) -> LLM:
    return LLM(tiny[0], **{"dtype": "float32", "kv_cache_memory_gb": 0.01, "max_model_len": 256, **kwargs})


ONE = "USER: <image>\nw3 w5 w8 ASSISTANT:"
TWO = "USER: <image>\nw3 w5 <image> w9 ASSISTANT:"


def test_one_and_two_images_equal_hf(tiny):
    llm = make_llm(tiny)
    a, b = images(1)
    cases = [(ONE, [a]), (ONE, [b]), (TWO, [a, b]), (TWO, [b, a])]
    outs = llm.generate([{"prompt": p, "multi_modal_data": {"image": ims if len(ims) > 1 else ims[0]}}
                         for p, ims in cases], GREEDY, use_tqdm=False)
    for (prompt, ims), out in zip(cases, outs):
        ids, ref = hf_greedy(tiny, prompt, ims)
        assert out.prompt_token_ids == ids          # each "<image>" expanded to its 16 placeholders
        assert list(out.outputs[0].token_ids) == ref
    assert outs[0].prompt_token_ids.count(4) == IMAGE_TOKENS and outs[2].prompt_token_ids.count(4) == 2 * IMAGE_TOKENS
    # Different images give different tokens here (else the test could not tell an image dropped).
    assert outs[0].outputs[0].token_ids != outs[1].outputs[0].token_ids
    # Token ids with one "<image>" per image, and ids already expanded (an output's prompt_token_ids), as vLLM.
    again = llm.generate([{"prompt_token_ids": outs[2].prompt_token_ids, "multi_modal_data": {"image": [a, b]}},
                          {"prompt_token_ids": [1, 5, 4, 10, 12, 4, 16, 6], "multi_modal_data": {"image": [a, b]}}],
                         GREEDY, use_tqdm=False)
    assert [o.prompt_token_ids for o in again] == [outs[2].prompt_token_ids] * 2
    assert [o.outputs[0].token_ids for o in again] == [outs[2].outputs[0].token_ids] * 2


def test_chunked_prefill_inside_the_placeholders_equals_hf(tiny):
    # Chunks of 5 tokens: the first image's placeholders (positions 2..17) span four chunks, the second's five.
    llm = make_llm(tiny, max_num_batched_tokens=5, enable_prefix_caching=False)
    a, b = images(2)
    out = llm.generate({"prompt": TWO, "multi_modal_data": {"image": [a, b]}}, GREEDY, use_tqdm=False)[0]
    assert list(out.outputs[0].token_ids) == hf_greedy(tiny, TWO, [a, b])[1]


def test_prefix_cache_keeps_two_images_apart(tiny):
    # 16-token blocks: the prompt's first block holds BOS, "USER:" and 14 of the image's placeholders, the same ids
    # for every image. Image B after image A behind the same text must not read A's blocks; A again does.
    llm = make_llm(tiny)
    a, b = images(3, sizes=((33, 47), (60, 20)))
    prompt = "USER: <image>\nw3 w5 w8 w13 w21 w34 w55 w89 w1 w2 w4 w7 w11 w16 w22 w29 ASSISTANT:"
    first, second, again = (llm.generate({"prompt": prompt, "multi_modal_data": {"image": im}}, GREEDY,
                                         use_tqdm=False)[0] for im in (a, b, a))
    assert list(first.outputs[0].token_ids) == list(again.outputs[0].token_ids) == hf_greedy(tiny, prompt, [a])[1]
    assert list(second.outputs[0].token_ids) == hf_greedy(tiny, prompt, [b])[1]
    assert second.num_cached_tokens == 0
    assert again.num_cached_tokens == 32         # two full blocks of A's prompt (35 tokens)


def test_preemption_recomputes_the_images(tiny):
    # 6 blocks of 16 tokens: two requests' prompts (35 tokens, 3 blocks each) fill them, and each needs a 4th block
    # for its 20 new tokens, so requests are preempted and recomputed, their images encoded again.
    llm = make_llm(tiny, num_gpu_blocks_override=6, max_model_len=96, enable_prefix_caching=False)
    ims = images(8, sizes=((30, 30), (41, 29), (64, 48), (28, 50)))
    params = SamplingParams(temperature=0, max_tokens=20, ignore_eos=True)
    prompt = "USER: <image>\nw3 w5 w8 w13 w21 w34 w55 w89 w1 w2 w4 w7 w11 w16 w22 w29 ASSISTANT:"
    outs = llm.generate([{"prompt": prompt, "multi_modal_data": {"image": im}} for im in ims], params, use_tqdm=False)
    assert llm.llm_engine.scheduler.num_preemptions > 0
    for im, out in zip(ims, outs):
        assert list(out.outputs[0].token_ids) == hf_greedy(tiny, prompt, [im], max_tokens=20)[1]


def test_chat_with_a_data_url_image_equals_hf(tiny, tmp_path):
    llm = make_llm(tiny)
    (image,) = images(4, sizes=((45, 35),))
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    url = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    messages = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                             {"type": "text", "text": "w3 w5"}]}]
    out = llm.chat(messages, GREEDY, use_tqdm=False)[0]
    # The processor's template renders the parts (HF's own apply_chat_template gives the same text).
    text = tiny[2].apply_chat_template([{"role": "user", "content": [{"type": "image"},
                                                                     {"type": "text", "text": "w3 w5"}]}])
    assert text == "<s>USER: <image>\nw3 w5 ASSISTANT:"
    ids, ref = hf_greedy(tiny, text, [image], add_special_tokens=False)     # the template holds the BOS
    assert out.prompt_token_ids == ids
    assert out.prompt == "<s> USER: <image> w3 w5 ASSISTANT:"       # one "<image>" (word-level decode's spaces)
    assert list(out.outputs[0].token_ids) == ref
    # file:// URLs: only under allowed_local_media_path (vLLM's rule and words).
    path = tmp_path / "cat.png"
    image.save(path)
    local = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": f"file://{path}"}},
                                          {"type": "text", "text": "w3 w5"}]}]
    with pytest.raises(ValueError, match="Cannot load local files without `--allowed-local-media-path`"):
        llm.chat(local, GREEDY, use_tqdm=False)
    allowed = make_llm(tiny, allowed_local_media_path=str(tmp_path))
    assert list(allowed.chat(local, GREEDY, use_tqdm=False)[0].outputs[0].token_ids) == ref
    # A template that takes a string (given to chat): vLLM's string content, the placeholder on a line of its own.
    string_template = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}{% endfor %}"
    out = llm.chat(messages, GREEDY, use_tqdm=False, chat_template=string_template)[0]
    # "user: <image>\nw3 w5": "user:" is <unk> (0) in this vocabulary, w3 10, w5 12.
    assert out.prompt_token_ids == [0] + [4] * IMAGE_TOKENS + [10, 12]


@pytest.mark.parametrize("layout", ["hub", "modules"])
def test_checkpoint_layouts(tiny, tmp_path, layout):
    # transformers 5.25 saves language_model.model.* / language_model.lm_head.* / vision_tower.* (no vision_model.);
    # the hub's llava-hf checkpoints have vision_tower.vision_model.*; a state_dict of transformers 5's modules has
    # model.language_model.* / model.vision_tower.* / model.multi_modal_projector.* / lm_head.*. All load the same.
    import shutil

    from safetensors.torch import load_file, save_file
    tensors = load_file(f"{tiny[0]}/model.safetensors")

    def rename(name: str) -> str:
        if layout == "hub":
            return name.replace("vision_tower.", "vision_tower.vision_model.", 1)
        if name.startswith("language_model.lm_head."):
            return name.removeprefix("language_model.")
        if name.startswith("language_model.model."):
            return "model.language_model." + name.removeprefix("language_model.model.")
        return "model." + name
    for f in ("config.json", "tokenizer.json", "tokenizer_config.json", "processor_config.json",
              "chat_template.jinja"):
        shutil.copy(f"{tiny[0]}/{f}", tmp_path / f)
    save_file({rename(k): v for k, v in tensors.items()}, str(tmp_path / "model.safetensors"))
    llm = LLM(str(tmp_path), dtype="float32", kv_cache_memory_gb=0.01, max_model_len=256)
    a, b = images(9)
    out = llm.generate({"prompt": TWO, "multi_modal_data": {"image": [a, b]}}, GREEDY, use_tqdm=False)[0]
    assert list(out.outputs[0].token_ids) == hf_greedy(tiny, TWO, [a, b])[1]


def test_limit_mm_per_prompt_and_placeholder_count(tiny):
    llm = make_llm(tiny, limit_mm_per_prompt={"image": 1})
    a, b = images(5)
    with pytest.raises(ValueError, match=r"^At most 1 image\(s\) may be provided in one prompt\. Set "
                                         r"`--limit-mm-per-prompt` to increase this limit\.$"):
        llm.generate({"prompt": TWO, "multi_modal_data": {"image": [a, b]}}, GREEDY, use_tqdm=False)
    with pytest.raises(ValueError, match=r"has 2 image placeholder\(s\) \('<image>'\) for 1 image\(s\)"):
        llm.generate({"prompt": TWO, "multi_modal_data": {"image": a}}, GREEDY, use_tqdm=False)
    with pytest.raises(ValueError, match="video inputs are not supported yet"):
        llm.generate({"prompt": ONE, "multi_modal_data": {"video": [a]}}, GREEDY, use_tqdm=False)
    with pytest.raises(ValueError, match=r"multi_modal_data\['image'\]\[0\] must be a PIL image"):
        llm.generate({"prompt": ONE, "multi_modal_data": {"image": "a.png"}}, GREEDY, use_tqdm=False)
    with pytest.raises(ValueError, match="truncate_prompt_tokens with multi_modal_data is not supported"):
        llm.generate({"prompt": ONE, "multi_modal_data": {"image": a}},
                     SamplingParams(max_tokens=2, truncate_prompt_tokens=8), use_tqdm=False)
    assert list(llm.generate({"prompt": ONE, "multi_modal_data": {"image": a}}, GREEDY, use_tqdm=False)[0]
                .outputs[0].token_ids) == hf_greedy(tiny, ONE, [a])[1]      # usable after the errors


@pytest.mark.parametrize("disable", [False, True])
def test_disable_chunked_mm_input(tiny, disable):
    # vLLM's disable_chunked_mm_input: no prompt chunk ends inside an image's placeholders. TWO's images sit at
    # positions 2..17 and 20..35 (38 prompt tokens); chunks of at most 17 tokens: [0, 2), [2, 19), [19, 36),
    # [36, 38) with it, [0, 17), [17, 34), ... without.
    llm = make_llm(tiny, max_num_batched_tokens=17, disable_chunked_mm_input=disable)
    scheduler = llm.llm_engine.scheduler
    ends, schedule = [], scheduler.schedule

    def recording():
        out = schedule()
        done = {r.request_id: r.num_computed_tokens for r in scheduler.running}
        ends.extend(done[rid] for rid in out.num_scheduled_tokens if rid in done)
        return out
    scheduler.schedule = recording
    a, b = images(14)
    out = llm.generate({"prompt": TWO, "multi_modal_data": {"image": [a, b]}}, GREEDY, use_tqdm=False)[0]
    assert list(out.outputs[0].token_ids) == hf_greedy(tiny, TWO, [a, b])[1]
    inside = [e for e in ends if 2 < e < 18 or 20 < e < 36]
    assert (inside == []) if disable else inside, ends
    if disable:
        assert ends[:4] == [2, 19, 36, 38], ends
        with pytest.raises(ValueError, match="takes 16 placeholder tokens, more than max_num_batched_tokens=8"):
            make_llm(tiny, max_num_batched_tokens=8, disable_chunked_mm_input=True).generate(
                {"prompt": ONE, "multi_modal_data": {"image": a}}, GREEDY, use_tqdm=False)


def test_arrays_and_embeddings_are_read_as_vllm_reads_them(tiny):
    """vLLM's multi_modal_data["image"]: a 4-D array is a batch of images, a 3-D torch tensor (or a list of 2-D ones)
    precomputed embeddings, which pagedllm does not take yet: a ValueError, not pixels (that gave other tokens)."""
    import numpy as np
    llm = make_llm(tiny)
    a, b = images(2, sizes=((40, 30), (40, 30)))     # seed 2: the order of the two changes the tokens
    ref = hf_greedy(tiny, TWO, [a, b])[1]
    assert ref != hf_greedy(tiny, TWO, [b, a])[1]
    batch = np.stack([np.asarray(a), np.asarray(b)])
    out = llm.generate({"prompt": TWO, "multi_modal_data": {"image": batch}}, GREEDY, use_tqdm=False)[0]
    assert list(out.outputs[0].token_ids) == ref
    for embeds in (torch.zeros(1, IMAGE_TOKENS, 64), [torch.zeros(IMAGE_TOKENS, 64)]):
        with pytest.raises(ValueError, match=r"multi_modal_data\['image'\] holds image embeddings .* not supported "
                                             r"yet by pagedllm"):
            llm.generate({"prompt": ONE, "multi_modal_data": {"image": embeds}}, GREEDY, use_tqdm=False)


def test_text_only_model_given_an_image(tmp_path):
    from tests.unit.tiny_models import save_tiny_llama
    save_tiny_llama(tmp_path, vocab_size=120)
    llm = LLM(str(tmp_path), skip_tokenizer_init=True, dtype="float32", kv_cache_memory_gb=0.01, max_model_len=64)
    with pytest.raises(ValueError, match=r"^At most 0 image\(s\) may be provided in one prompt\. LlamaForCausalLM "
                                         r"reads text only"):
        llm.generate({"prompt_token_ids": [1, 4, 5], "multi_modal_data": {"image": images(6)[0]}}, use_tqdm=False)


def test_encoder_batches_and_its_memory_profile_call(tiny):
    # The vision tower runs at most encoder_batch_size images per call (a step's token budget of whole images), the
    # call the start-up memory profile makes on a GPU (_dummy_encode); more new images in one step are split.
    llm = make_llm(tiny, max_num_batched_tokens=40)
    runner = llm.llm_engine.core.runner
    assert runner.encoder_batch_size() == 2          # 40 // 16
    calls, embed = [], runner.model.embed_multimodal
    runner.model.embed_multimodal = lambda modality, data: calls.append(len(data["pixel_values"])) or embed(modality,
                                                                                                          data)
    runner._dummy_encode()
    assert calls == [2]
    ims = images(15, sizes=((30, 30), (41, 29), (64, 48)))
    prompt = "USER: <image> <image> <image> ASSISTANT:"       # 51 prompt tokens: the first step reaches all three
    out = llm.generate({"prompt": prompt, "multi_modal_data": {"image": ims}}, GREEDY, use_tqdm=False)[0]
    assert calls[1:] == [2, 1]
    assert list(out.outputs[0].token_ids) == hf_greedy(tiny, prompt, ims)[1]


def test_tensor_parallel_2_equals_hf(tiny):
    # TP=2 over gloo: the Llama is split over the ranks, each rank runs the whole vision tower (replicated) and puts
    # the image rows into the all-reduced embeddings; chunks of 7 end inside the placeholders.
    llm = make_llm(tiny, tensor_parallel_size=2, max_num_batched_tokens=7)
    a, b = images(16)
    outs = llm.generate([{"prompt": TWO, "multi_modal_data": {"image": [a, b]}},
                         {"prompt": ONE, "multi_modal_data": {"image": b}}], GREEDY, use_tqdm=False)
    assert list(outs[0].outputs[0].token_ids) == hf_greedy(tiny, TWO, [a, b])[1]
    assert list(outs[1].outputs[0].token_ids) == hf_greedy(tiny, ONE, [b])[1]
