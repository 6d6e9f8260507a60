"""/v1/chat/completions with image_url parts (data: URLs; no network here) on a tiny random LLaVA-1.5, the server's
app in-process: the answer is HF fp32 greedy's for the processor's prompt, and a bad image, too many images and an
image sent to a text-only model are OpenAI-style 400s in vLLM's words. AsyncLLMEngine.generate with
multi_modal_data (vLLM's engine API) gives HF's tokens too."""
from __future__ import annotations

import base64
import io
import json

import pytest

from tests.models.test_llava import hf_greedy, images, save_tiny_llava
from tests.unit.app_client import post_all, serve_in_process

CHAT = "/v1/chat/completions"


def data_url(image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def chat(*urls: str, text: str = "w3 w5") -> dict:
    parts = [{"type": "image_url", "image_url": {"url": u}} for u in urls] + [{"type": "text", "text": text}]
    return {"model": "m", "messages": [{"role": "user", "content": parts}], "max_tokens": 6, "temperature": 0,
            "ignore_eos": True, "logprobs": True, "return_tokens_as_token_ids": True}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp("llava")
    hf, processor = save_tiny_llava(path)
    return str(path), hf, processor


def test_chat_with_images_and_its_errors(tiny):
    a, b = images(7)
    bad_png = "data:image/png;base64," + base64.b64encode(b"not a png").decode()
    with serve_in_process(tiny[0], "--served-model-name", "m", "--limit-mm-per-prompt", '{"image": 1}') as (app, _):
        ok, bad, two, not_base64, streamed = post_all(app, [
            (CHAT, chat(data_url(a))), (CHAT, chat(bad_png)), (CHAT, chat(data_url(a), data_url(b))),
            (CHAT, chat("data:image/png;base64,@@")), (CHAT, {**chat(data_url(a)), "stream": True})])
    ids, ref = hf_greedy(tiny, "USER: <image>\nw3 w5 ASSISTANT:", [a], max_tokens=6)
    assert ok.status_code == 200, ok.text
    body = ok.json()
    assert body["usage"]["prompt_tokens"] == len(ids)         # the image's 16 placeholders counted
    assert [t["token"] for t in body["choices"][0]["logprobs"]["content"]] == [f"token_id:{t}" for t in ref]
    chunks = [json.loads(line[6:]) for line in streamed.text.splitlines() if line.startswith("data: {")]
    assert [t["token"] for c in chunks for t in ((c["choices"][0].get("logprobs") or {}).get("content") or [])] == \
        [f"token_id:{t}" for t in ref]
    for response, message in ((bad, "the image could not be read"),
                              (two, "At most 1 image(s) may be provided in one prompt. Set `--limit-mm-per-prompt` "
                                    "to increase this limit."),
                              (not_base64, "not valid base64")):
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert error["type"] == "BadRequestError" and error["param"] == "messages"
        assert message in error["message"], error


def test_image_sent_to_a_text_only_model(tmp_path):
    from tests.models.test_llava import word_tokenizer_with_image
    from tests.unit.tiny_models import save_tiny_llama
    save_tiny_llama(tmp_path, vocab_size=120)
    word_tokenizer_with_image().save_pretrained(tmp_path)
    with serve_in_process(str(tmp_path), "--served-model-name", "m") as (app, _):
        (response,) = post_all(app, [(CHAT, chat("https://example.com/cat.png"))])    # refused before any fetch
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["message"].startswith("At most 0 image(s) may be provided in one prompt. LlamaForCausalLM reads "
                                       "text only"), error


def test_async_engine_generate_with_images(tiny):
    # vLLM's AsyncLLMEngine.generate({"prompt": ..., "multi_modal_data": ...}): processed off the event loop.
    import asyncio

    from pagedllm import EngineArgs, SamplingParams
    from pagedllm.engine.async_engine import AsyncLLMEngine
    from tests.models.test_llava import TWO
    engine = AsyncLLMEngine(EngineArgs(model=tiny[0], dtype="float32", max_model_len=256, kv_cache_memory_gb=0.01),
                            log_requests=False)
    a, b = images(10)

    async def main():
        out = None
        async for out in engine.generate({"prompt": TWO, "multi_modal_data": {"image": [a, b]}},
                                         SamplingParams(temperature=0, max_tokens=6, ignore_eos=True), "r"):
            pass
        return out
    try:
        out = asyncio.run(main())
    finally:
        engine.shutdown()
    ids, ref = hf_greedy(tiny, TWO, [a, b], max_tokens=6)
    assert out.prompt_token_ids == ids
    assert list(out.outputs[0].token_ids) == ref


def test_qwen2_5_vl_chat_with_a_data_url_image(tmp_path):
    # Qwen2.5-VL served: the template's parts give <|vision_start|><|image_pad|><|vision_end|>, the image's
    # placeholders and M-RoPE positions come from its grid; the answer is HF fp32 greedy's.
    from tests.models.test_qwen2_vl import IMG, save_tiny_qwen_vl
    from tests.models.test_qwen2_vl import hf_greedy as qwen_hf_greedy
    hf, processor = save_tiny_qwen_vl(tmp_path)
    (image,) = images(14, sizes=((70, 50),))
    (large,) = images(15, sizes=((120, 70),))
    small = {"max_pixels": 28 * 28 * 6}
    with serve_in_process(str(tmp_path), "--served-model-name", "m") as (app, _):
        ok, ok_small, too_large = post_all(app, [
            (CHAT, chat(data_url(image))), (CHAT, {**chat(data_url(large)), "mm_processor_kwargs": small}),
            (CHAT, {**chat(data_url(large)), "mm_processor_kwargs": {"max_pixels": 28 * 28 * 66}})])
    text = f"<|im_start|>user {IMG} w3 w5<|im_end|> <|im_start|>assistant"
    ids, ref = qwen_hf_greedy((str(tmp_path), hf, processor), text, [image], max_tokens=6)
    assert ok.status_code == 200, ok.text
    body = ok.json()
    assert body["usage"]["prompt_tokens"] == len(ids)
    assert [t["token"] for t in body["choices"][0]["logprobs"]["content"]] == [f"token_id:{t}" for t in ref]
    # vLLM's request field mm_processor_kwargs (it was ignored, logged as unknown): the image at that size.
    ids, ref = qwen_hf_greedy((str(tmp_path), hf, processor), text, [large], max_tokens=6,
                              size={"shortest_edge": 28 * 28 * 4, "longest_edge": 28 * 28 * 6})
    assert ok_small.status_code == 200, ok_small.text
    assert ok_small.json()["usage"]["prompt_tokens"] == len(ids)
    assert [t["token"] for t in ok_small.json()["choices"][0]["logprobs"]["content"]] == [f"token_id:{t}" for t in ref]
    assert too_large.status_code == 400 and too_large.json()["error"]["param"] == "mm_processor_kwargs"


def test_image_parts_without_a_type(tiny):
    """vLLM's simple parts ({"image_url": "<url>"}, no type: OpenAI's API takes it, undocumented; {"image_pil": ...}
    offline) read as image_url / image_pil parts; a part with neither a type nor an image is a 400 that says so."""
    from pagedllm import LLM, SamplingParams
    (a,) = images(16, sizes=((40, 30),))
    typed = chat(data_url(a))
    simple = {**typed, "messages": [{"role": "user", "content": [{"image_url": data_url(a)},
                                                                 {"type": "text", "text": "w3 w5"}]}]}
    untyped = {**typed, "messages": [{"role": "user", "content": [{"url": data_url(a)}]}]}
    with serve_in_process(tiny[0], "--served-model-name", "m") as (app, _):
        ok, plain, bad = post_all(app, [(CHAT, typed), (CHAT, simple), (CHAT, untyped)])
    assert ok.status_code == plain.status_code == 200, plain.text
    assert plain.json()["choices"][0]["logprobs"] == ok.json()["choices"][0]["logprobs"]
    assert bad.status_code == 400 and "messages[0].content[0]: a content part needs a 'type'" in \
        bad.json()["error"]["message"], bad.text
    llm = LLM(tiny[0], dtype="float32", kv_cache_memory_gb=0.01, max_model_len=256)
    greedy = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True)
    outs = llm.chat([[{"role": "user", "content": [part, {"type": "text", "text": "w3 w5"}]}]
                     for part in ({"type": "image_pil", "image_pil": a}, {"image_pil": a})], greedy, use_tqdm=False)
    assert outs[0].outputs[0].token_ids == outs[1].outputs[0].token_ids
    assert [t["token"] for t in ok.json()["choices"][0]["logprobs"]["content"]] == \
        [f"token_id:{t}" for t in outs[0].outputs[0].token_ids]


def test_image_url_detail_is_said_to_be_ignored(tiny, caplog):
    """OpenAI's image_url.detail ("low" / "high") changes nothing here (the processor's one resolution): a warning
    says so, as vLLM's, rather than ignoring it silently; "auto" (the default) is quiet."""
    import logging

    from pagedllm import LLM, SamplingParams
    (a,) = images(17, sizes=((40, 30),))
    llm = LLM(tiny[0], dtype="float32", kv_cache_memory_gb=0.01, max_model_len=256)
    greedy = SamplingParams(temperature=0, max_tokens=2, ignore_eos=True)
    outs = []
    for detail in ("auto", "high"):
        parts = [{"type": "image_url", "image_url": {"url": data_url(a), "detail": detail}}]
        with caplog.at_level(logging.WARNING, logger="pagedllm.entrypoints.chat_utils"):
            caplog.clear()
            outs.append(llm.chat([{"role": "user", "content": parts}], greedy, use_tqdm=False)[0])
            warned = [r.getMessage() for r in caplog.records if "image_url.detail" in r.getMessage()]
        assert warned == ([] if detail == "auto" else
                          ["'image_url.detail' ('high') is currently not supported and will be ignored."])
    assert outs[0].outputs[0].token_ids == outs[1].outputs[0].token_ids
