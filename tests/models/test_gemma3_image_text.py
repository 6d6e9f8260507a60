"""An image-text Gemma 3 checkpoint (Gemma3ForConditionalGeneration: gemma-3-4b-it and up) served as its language
model: the engine builds the text config's model, loads the ``language_model.`` tensors, skips the vision tower's,
and its greedy tokens on text prompts equal HF's (the whole image-text model, given text only; fp32)."""
from __future__ import annotations

import PIL.Image
import pytest
import torch
import transformers

from pagedllm import LLM, SamplingParams


def test_text_part_of_an_image_text_gemma3_equals_hf(tmp_path):
    text = dict(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, head_dim=16, sliding_window=8, query_pre_attn_scalar=16,
                layer_types=["sliding_attention", "full_attention"], initializer_range=0.2)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=32,
                  patch_size=8)
    cfg = transformers.Gemma3Config(text_config=text, vision_config=vision, mm_tokens_per_image=4,
                                    image_token_index=299, boi_token_index=297, eoi_token_index=298)
    torch.manual_seed(0)
    hf = transformers.Gemma3ForConditionalGeneration(cfg).eval()
    hf.save_pretrained(tmp_path)
    llm = LLM(str(tmp_path), skip_tokenizer_init=True, dtype="float32", kv_cache_memory_gb=0.01, max_model_len=256)
    engine_cfg = llm.llm_engine.config
    assert engine_cfg.hf_config.architectures == ["Gemma3ForConditionalGeneration"]
    assert engine_cfg.hf_config.num_hidden_layers == 2 and engine_cfg.hf_config.sliding_window == 8
    gen = torch.Generator().manual_seed(2)
    prompts = [torch.randint(3, 290, (n,), generator=gen).tolist() for n in (5, 20)]
    ours = llm.generate([{"prompt_token_ids": p} for p in prompts],
                        SamplingParams(temperature=0, max_tokens=12, ignore_eos=True), use_tqdm=False)
    for p, out in zip(prompts, ours):
        ref = hf.generate(torch.tensor([p]), max_new_tokens=12, min_new_tokens=12, do_sample=False,
                          pad_token_id=0)[0, len(p):].tolist()
        assert list(out.outputs[0].token_ids) == ref
    # An image for it (vLLM's multi_modal_data) is refused in vLLM's words for a model without images, then saying
    # what runs (its language model) and that Gemma 3's images are not supported yet.
    image = PIL.Image.new("RGB", (32, 32), "red")
    with pytest.raises(ValueError, match=r"^At most 0 image\(s\) may be provided in one prompt\. "
                                         r"Gemma3ForConditionalGeneration reads text only.*not yet for Gemma 3"):
        llm.generate({"prompt_token_ids": [297, 299, 298, 5], "multi_modal_data": {"image": image}}, use_tqdm=False)
