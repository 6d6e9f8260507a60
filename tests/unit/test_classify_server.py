"""/classify, /score and /rerank on sequence-classification models (the server's app in-process, tiny random
checkpoints): vLLM's JSON against HF transformers' logits, and the 400s for what the model does not do."""
from __future__ import annotations

import pytest
import torch
from app_client import post_to_server_app as _post_to_server_app

from tests.unit.tiny_models import ENCODER_PROMPTS, save_tiny_classifier, save_tiny_encoder

TEXTS = ["w1 w2 w3", "w5 w60", " ".join(f"w{i}" for i in range(20))]
QUERY = "w1 w2 w3"
DOCS = ["w3 w4 w5 w6", "w1 w2 w3", "w90", "w9 w8 w7 w6 w5"]


@pytest.fixture(scope="module")
def sentiment(tmp_path_factory):
    """A BERT classifier of three named labels."""
    path = tmp_path_factory.mktemp("tiny-bert-sentiment")
    hf = save_tiny_classifier(path, "bert", 3, id2label={0: "negative", 1: "neutral", 2: "positive"},
                              label2id={"negative": 0, "neutral": 1, "positive": 2})
    return str(path), hf


@pytest.fixture(scope="module")
def reranker(tmp_path_factory):
    """An XLM-RoBERTa cross-encoder (one label), as bge-reranker-v2-m3."""
    path = tmp_path_factory.mktemp("tiny-xlmr-reranker")
    return str(path), save_tiny_classifier(path, "xlm_roberta", 1)


def post_to_server_app(path: str, posts: list) -> list[tuple[int, dict]]:
    # the tiny models' 64 positions; the chat form's test sends its own template
    return _post_to_server_app(path, posts, flags=("--max-model-len", "64", "--trust-request-chat-template"))


def _logits(hf, path, *texts) -> torch.Tensor:
    from transformers import AutoTokenizer
    enc = AutoTokenizer.from_pretrained(path)(*texts, return_tensors="pt")
    with torch.no_grad():
        return hf(**enc).logits[0]


def test_classify_json_equals_hf(sentiment):
    path, hf = sentiment
    answers = post_to_server_app(path, [
        ("/classify", {"model": path, "input": TEXTS}),
        ("/classify", {"input": TEXTS[0], "use_activation": False}),
        ("/classify", {"input": [[2, 5, 6, 7, 3]], "activation": False}),   # vLLM's older name; token ids
        ("/pooling", {"input": TEXTS[0]}),                                   # the model's own task: classify
        ("/classify", {"messages": [{"role": "user", "content": "w1 w2"}],
                       "chat_template": "[CLS] {% for m in messages %}{{ m['content'] }}{% endfor %} [SEP]"}),
    ])
    (status, body), (raw_status, raw), (ids_status, ids), (pool_status, pooled), (chat_status, chat) = answers
    assert status == 200 and body["object"] == "list" and body["id"].startswith("classify-")
    assert body["model"] == path and len(body["data"]) == 3
    labels = ["negative", "neutral", "positive"]
    for i, (text, item) in enumerate(zip(TEXTS, body["data"])):
        expected = torch.softmax(_logits(hf, path, text), -1)
        assert item["index"] == i and item["num_classes"] == 3
        assert torch.allclose(torch.tensor(item["probs"]), expected, atol=1e-5)
        assert item["label"] == labels[int(expected.argmax())]
    assert body["usage"]["prompt_tokens"] == body["usage"]["total_tokens"] == sum(len(t.split()) + 2 for t in TEXTS)
    assert raw_status == 200
    assert torch.allclose(torch.tensor(raw["data"][0]["probs"]), _logits(hf, path, TEXTS[0]), atol=1e-4)
    assert ids_status == 200 and ids["data"][0]["probs"] == pytest.approx(raw["data"][0]["probs"], abs=1e-5)
    assert pool_status == 200 and pooled["data"][0]["data"] == pytest.approx(body["data"][0]["probs"], abs=1e-5)
    # vLLM's chat form: the conversation rendered by the (request's) chat template into one prompt
    assert chat_status == 200, chat
    assert torch.allclose(torch.tensor(chat["data"][0]["probs"]), torch.softmax(_logits(hf, path, "w1 w2"), -1),
                          atol=1e-5)


def test_cross_encoder_score_and_rerank_equal_hf(reranker):
    path, hf = reranker
    expected = [float(torch.sigmoid(_logits(hf, path, QUERY, doc)[0])) for doc in DOCS]
    answers = post_to_server_app(path, [
        ("/score", {"model": path, "queries": QUERY, "documents": DOCS}),
        ("/v1/score", {"text_1": [QUERY, DOCS[0]], "text_2": [DOCS[0], DOCS[1]], "use_activation": False}),
        ("/rerank", {"query": QUERY, "documents": DOCS, "top_n": 2}),
        ("/v1/rerank", {"query": QUERY, "documents": DOCS, "return_documents": False}),
        ("/v2/rerank", {"query": QUERY, "documents": DOCS}),
        ("/classify", {"input": QUERY}),
    ])
    (status, score), (raw_status, raw), *reranks, (cls_status, classified) = answers
    assert status == 200 and [d["index"] for d in score["data"]] == [0, 1, 2, 3]
    assert [d["object"] for d in score["data"]] == ["score"] * 4
    assert [d["score"] for d in score["data"]] == pytest.approx(expected, abs=1e-5)
    assert len(set(round(s, 5) for s in expected)) == 4
    assert raw_status == 200
    assert [d["score"] for d in raw["data"]] == pytest.approx(
        [float(_logits(hf, path, QUERY, DOCS[0])[0]), float(_logits(hf, path, DOCS[0], DOCS[1])[0])], abs=1e-4)
    order = sorted(range(4), key=lambda i: expected[i], reverse=True)
    for (rerank_status, rerank), top in zip(reranks, (2, 4, 4)):
        assert rerank_status == 200 and [r["index"] for r in rerank["results"]] == order[:top]
        assert [r["relevance_score"] for r in rerank["results"]] == pytest.approx(
            [expected[i] for i in order[:top]], abs=1e-5)
    assert reranks[0][1]["results"][0]["document"] == {"text": DOCS[order[0]]}
    assert "document" not in reranks[1][1]["results"][0]
    # the pair's tokens: <s> q </s></s> d </s>
    assert score["usage"]["prompt_tokens"] == sum(3 + 4 + len(d.split()) for d in DOCS)
    assert cls_status == 200 and classified["data"][0]["num_classes"] == 1
    assert classified["data"][0]["label"] == "LABEL_0"


def test_what_the_model_does_not_do_is_a_400(sentiment, reranker):
    path, _ = sentiment
    long_text = " ".join(f"w{i % 100}" for i in range(300))
    answers = post_to_server_app(path, [
        ("/score", {"queries": "w1", "documents": ["w2"]}),
        ("/rerank", {"query": "w1", "documents": ["w2"]}),
        ("/v1/embeddings", {"input": "w1"}),
        ("/v1/completions", {"prompt": "w1"}),
        ("/classify", {"input": long_text}),
        ("/classify", {"input": []}),
        ("/classify", {}),
        ("/classify", {"input": "w1", "use_activation": "sometimes"}),
        ("/classify", {"input": "w1", "use_activation": True, "activation": False}),
        ("/pooling", {"input": "w1", "task": "embed"}),
        ("/classify", {"input": [[2, 500, 3]]}),
    ])
    messages = [(status, body["error"]["message"], body["error"]["param"]) for status, body in answers]
    assert all(status == 400 for status, _, _ in messages), messages
    assert "Scoring API is only enabled for num_labels == 1." in messages[0][1]
    assert "Scoring API is only enabled for num_labels == 1." in messages[1][1]
    assert "Embedding API is not supported by this model" in messages[2][1]
    assert "sequence classification" in messages[3][1] and "/classify" in messages[3][1]
    assert "maximum context length is 64 tokens" in messages[4][1] and messages[4][2] == "input_tokens"
    assert messages[5][2] == "input" and "input" in messages[6][1]
    assert "use_activation" in messages[7][1]
    assert "contradicts use_activation" in messages[8][1]
    assert messages[9][2] == "task" and "Embedding API is not supported" in messages[9][1]
    assert "out of vocabulary" in messages[10][1]
    # truncation of a too-long pair: the longer text first, within the limit
    path, _ = reranker
    (status, body), (bad_status, bad) = post_to_server_app(path, [
        ("/score", {"queries": QUERY, "documents": [long_text], "truncate_prompt_tokens": 32}),
        ("/score", {"queries": QUERY, "documents": [long_text]})])
    assert status == 200 and body["usage"]["prompt_tokens"] == 32
    assert bad_status == 400 and "maximum context length is 64 tokens" in bad["error"]["message"]


def test_embeddings_take_use_activation_as_normalize(tmp_path):
    # vLLM's newer name for an embedding's normalization: honoured, not ignored.
    save_tiny_encoder(tmp_path, "bert")
    prompt = ENCODER_PROMPTS[0]
    answers = _post_to_server_app(str(tmp_path), [
        ("/v1/embeddings", {"input": [prompt]}),
        ("/v1/embeddings", {"input": [prompt], "use_activation": False}),
        ("/pooling", {"input": [prompt], "use_activation": False}),
        ("/v1/embeddings", {"input": [prompt], "use_activation": False, "normalize": True})],
        flags=("--max-model-len", "64", "--skip-tokenizer-init"))
    norms = [float(torch.tensor(body["data"][0].get("embedding", body["data"][0].get("data"))).norm())
             for _, body in answers[:3]]
    assert [status for status, _ in answers[:3]] == [200, 200, 200]
    assert norms[0] == pytest.approx(1.0, abs=1e-5) and abs(norms[1] - 1) > 1e-2 and norms[2] == pytest.approx(norms[1])
    status, body = answers[3]
    assert status == 400 and body["error"]["param"] == "use_activation"


def test_chat_form_add_special_tokens_is_the_tokenizers_own(sentiment):
    """vLLM's chat-form pooling requests: the rendered conversation is tokenized without special tokens by default
    (the template holds them); add_special_tokens: true adds the tokenizer's own, [CLS] ... [SEP] for BERT."""
    path, hf = sentiment
    chat = {"messages": [{"role": "user", "content": "w1 w2"}],
            "chat_template": "{% for m in messages %}{{ m['content'] }}{% endfor %}"}
    answers = post_to_server_app(path, [
        ("/classify", chat),
        ("/classify", {**chat, "add_special_tokens": True}),
        ("/pooling", {**chat, "add_special_tokens": True, "use_activation": False}),
    ])
    (status, plain), (with_status, with_specials), (pool_status, pooled) = answers
    assert (status, with_status, pool_status) == (200, 200, 200), answers
    with torch.no_grad():
        bare = hf(torch.tensor([[5, 6]])).logits[0]          # w1 w2 alone
    assert plain["usage"]["prompt_tokens"] == 2
    assert torch.allclose(torch.tensor(plain["data"][0]["probs"]), torch.softmax(bare, -1), atol=1e-5)
    assert with_specials["usage"]["prompt_tokens"] == 4      # [CLS] w1 w2 [SEP]
    assert torch.allclose(torch.tensor(with_specials["data"][0]["probs"]),
                          torch.softmax(_logits(hf, path, "w1 w2"), -1), atol=1e-5)
    assert torch.allclose(torch.tensor(pooled["data"][0]["data"]), _logits(hf, path, "w1 w2"), atol=1e-4)


def test_text_input_add_special_tokens_false_tokenizes_without_them(sentiment):
    """vLLM's input form (/classify, /pooling, /v1/embeddings) adds the tokenizer's special tokens by default and
    leaves them out with add_special_tokens: false (the chat form's default is false). Before, the field was read
    for messages only: an input text always got [CLS] ... [SEP]."""
    path, hf = sentiment
    answers = post_to_server_app(path, [
        ("/classify", {"input": "w1 w2"}),
        ("/classify", {"input": "w1 w2", "add_special_tokens": False}),
        ("/pooling", {"input": ["w1 w2"], "add_special_tokens": False, "use_activation": False}),
    ])
    assert [status for status, _ in answers] == [200, 200, 200], answers
    (_, default), (_, bare), (_, pooled) = answers
    assert default["usage"]["prompt_tokens"] == 4            # [CLS] w1 w2 [SEP]
    assert bare["usage"]["prompt_tokens"] == 2 and pooled["usage"]["prompt_tokens"] == 2
    with torch.no_grad():
        logits = hf(torch.tensor([[5, 6]])).logits[0]        # w1 w2 alone
    assert torch.allclose(torch.tensor(bare["data"][0]["probs"]), torch.softmax(logits, -1), atol=1e-5)
    assert torch.allclose(torch.tensor(pooled["data"][0]["data"]), logits, atol=1e-4)


def test_pooling_response_ids_follow_request_id_and_x_request_id(reranker):
    """vLLM's rule for the response id, as chat and completions: "<prefix>-" then the X-Request-Id header, else the
    body's request_id (a field of vLLM's pooling requests, not an ignored extra), else a random id."""
    from app_client import run_on, serve_in_process
    path, _ = reranker
    calls = [("/classify", {"input": QUERY, "request_id": "cls-7"}), ("/pooling", {"input": QUERY, "request_id": "p"}),
             ("/score", {"queries": QUERY, "documents": DOCS[:2], "request_id": "s1"}),
             ("/rerank", {"query": QUERY, "documents": DOCS, "request_id": "r1"}),
             ("/v1/rerank", {"query": QUERY, "documents": DOCS}), ("/classify", {"input": QUERY, "request_id": "x\ny"})]

    async def script(client):
        answers = [await client.post(p, json=body) for p, body in calls]
        answers.append(await client.post("/score", json={"queries": QUERY, "documents": DOCS[:1], "request_id": "b"},
                                         headers={"X-Request-Id": "gateway-42"}))
        return answers
    with serve_in_process(path, "--max-model-len", "64") as (app, _):
        answers = run_on(app, script)
    ids = [r.json().get("id") for r in answers]
    assert [r.status_code for r in answers] == [200] * 5 + [400, 200]
    assert ids[:4] == ["classify-cls-7", "pool-p", "score-s1", "rerank-r1"]
    assert ids[4].startswith("rerank-") and len(ids[4]) > len("rerank-") and ids[6] == "score-gateway-42"
    assert answers[5].json()["error"]["param"] == "request_id"


def test_embeddings_of_a_batch_of_conversations(tmp_path):
    """vLLM 0.24's /v1/embeddings chat forms: ``messages`` holding several conversations, or ``input`` holding one
    conversation or several, give one embedding per conversation, each the one that conversation alone gives."""
    save_tiny_encoder(tmp_path, "bert")
    from tests.unit.tiny_models import save_word_tokenizer
    save_word_tokenizer(tmp_path, "bert")
    template = "[CLS] {% for m in messages %}{{ m['content'] }} {% endfor %}[SEP]"
    first, second = [{"role": "user", "content": "w1 w2"}], [{"role": "system", "content": "w7"},
                                                             {"role": "user", "content": "w3 w4 w5"}]
    ask = {"chat_template": template, "encoding_format": "float"}
    answers = _post_to_server_app(str(tmp_path), [
        ("/v1/embeddings", {**ask, "messages": first}), ("/v1/embeddings", {**ask, "messages": second}),
        ("/v1/embeddings", {**ask, "messages": [first, second]}),
        ("/v1/embeddings", {**ask, "input": [first, second]}), ("/v1/embeddings", {**ask, "input": second}),
        ("/v1/embeddings", {**ask, "messages": [first, []]}),
        ("/v1/embeddings", {**ask, "input": [[5, 6], [7]]})],
        flags=("--max-model-len", "64", "--trust-request-chat-template"))
    assert [status for status, _ in answers] == [200] * 5 + [400, 200], answers
    alone = [body["data"][0]["embedding"] for _, body in answers[:2]]
    for _, body in answers[2:4]:
        assert [d["index"] for d in body["data"]] == [0, 1]
        assert [d["embedding"] for d in body["data"]] == [pytest.approx(e, abs=1e-5) for e in alone]
        assert body["usage"]["prompt_tokens"] == 4 + 6         # [CLS] w1 w2 [SEP], [CLS] w7 w3 w4 w5 [SEP]
    assert answers[4][1]["data"][0]["embedding"] == pytest.approx(alone[1], abs=1e-5)
    assert "messages must contain at least one message" in answers[5][1]["error"]["message"]
    assert answers[6][1]["usage"]["prompt_tokens"] == 3       # token-id lists stay token ids


def test_embedding_model_scores_one_query_against_many_embedding_it_once(tmp_path):
    """/rerank and /score on an embedding model: the query is embedded once, not once per document (vLLM's and
    LLM.score's 1:N); the usage still counts its tokens with each pair, as vLLM's does."""
    from app_client import run_on, serve_in_process
    save_tiny_encoder(tmp_path, "bert")
    from tests.unit.tiny_models import save_word_tokenizer
    save_word_tokenizer(tmp_path, "bert")
    docs = ["w3 w4", "w1 w2 w3", "w9"]      # 4, 5 and 3 tokens with [CLS] / [SEP]; the query 4

    async def script(client):
        before = await client.get("/metrics")
        rerank = await client.post("/rerank", json={"query": "w1 w2", "documents": docs})
        after = await client.get("/metrics")
        pairwise = await client.post("/score", json={"text_1": ["w1 w2", "w5"], "text_2": docs[:2]})
        return before.text, rerank, after.text, pairwise

    def prompt_tokens(text):
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.split("{")[0].endswith(":prompt_tokens_total"))
    with serve_in_process(str(tmp_path), "--max-model-len", "64") as (app, _):
        before, rerank, after, pairwise = run_on(app, script)
    assert rerank.status_code == 200 and rerank.json()["usage"]["prompt_tokens"] == 3 * 4 + 4 + 5 + 3
    assert prompt_tokens(after) - prompt_tokens(before) == 4 + 4 + 5 + 3      # the engine ran the query once
    results = {r["index"]: r["relevance_score"] for r in rerank.json()["results"]}
    assert results[1] == max(results.values())            # the document that holds the query's words
    assert pairwise.status_code == 200 and pairwise.json()["usage"]["prompt_tokens"] == 4 + 4 + 3 + 5
