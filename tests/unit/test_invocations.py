"""vLLM's SageMaker entry point, POST /invocations: the body's shape picks the endpoint this model serves (chat or
completions for a generative model; rerank, score, the model's own pooling task or /pooling for an encoder), and
the answer equals that endpoint's; a body no endpoint takes is a 400 naming what was expected. In-process apps on
tiny random models."""
from __future__ import annotations

import pytest
from app_client import post_all, run_on, serve_in_process

from tests.unit.tiny_models import save_tiny_encoder, save_word_tokenizer

U = [{"role": "user", "content": "Hi there"}]


def _same_answer(direct, routed, where: str = "") -> None:
    """The same JSON but ids and timestamps; floats to 1e-5 (a pooling model's values carry the last bits of the
    batch each input ran in)."""
    if isinstance(direct, dict):
        skip = {"id", "created"}
        assert set(direct) - skip == set(routed) - skip, where
        for key in set(direct) - skip:
            _same_answer(direct[key], routed[key], f"{where}.{key}")
    elif isinstance(direct, list):
        assert len(direct) == len(routed), where
        for i, (d, r) in enumerate(zip(direct, routed)):
            _same_answer(d, r, f"{where}[{i}]")
    elif isinstance(direct, float):
        assert routed == pytest.approx(direct, abs=1e-5), where
    else:
        assert routed == direct, where


def test_generative_model_routes_chat_and_completions(tiny_llama_dir):
    chat = {"messages": U, "max_tokens": 4, "temperature": 0}
    completion = {"prompt": "Hello", "max_tokens": 4, "temperature": 0}
    with serve_in_process(tiny_llama_dir, "--max-model-len", "128") as (app, _):
        answers = post_all(app, [("/v1/chat/completions", chat), ("/invocations", chat),
                                 ("/v1/completions", completion), ("/invocations", completion),
                                 ("/invocations", {"input": "Hello"}),
                                 ("/invocations", {"messages": "not a list", "max_tokens": 2}),
                                 ("/invocations", [1, 2])])

        async def not_json(client):
            return await client.post("/invocations", content=b"{not json", headers={"content-type": "application/json"})
        broken = run_on(app, not_json)
    assert [a.status_code for a in answers[:4]] == [200] * 4
    assert answers[1].json()["object"] == "chat.completion" and answers[3].json()["object"] == "text_completion"
    _same_answer(answers[0].json(), answers[1].json())
    _same_answer(answers[2].json(), answers[3].json())
    no_handler, bad_field, a_list = answers[4], answers[5], answers[6]
    for r in (no_handler, a_list):
        assert r.status_code == 400 and r.json()["error"]["message"] == (
            "Cannot find suitable handler for request. Expected one of: ChatCompletionRequest, CompletionRequest")
    assert bad_field.status_code == 400 and "messages" in bad_field.json()["error"]["message"]    # chat's own error
    assert broken.status_code == 400 and "not valid JSON" in broken.json()["error"]["message"]


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny_bert_invocations")
    save_tiny_encoder(path, "bert")
    save_word_tokenizer(path, "bert")
    return str(path)


def test_embedding_model_routes_embeddings_score_rerank_and_pooling(encoder_dir):
    embed = {"input": ["w1 w2", "w3"]}
    score = {"text_1": "w1 w2", "text_2": ["w3", "w1 w2"]}
    rerank = {"query": "w1 w2", "documents": ["w3", "w1 w2"]}
    pooling = {"input": "w1 w2", "task": "token_embed"}
    pairs = [("/v1/embeddings", embed), ("/score", score), ("/rerank", rerank), ("/pooling", pooling)]
    with serve_in_process(encoder_dir, "--max-model-len", "64") as (app, _):
        answers = post_all(app, [call for path, body in pairs for call in ((path, body), ("/invocations", body))]
                           + [("/invocations", {"prompt": "w1"})])
    assert [a.status_code for a in answers[:8]] == [200] * 8, [a.text for a in answers[:8]]
    for direct, routed in zip(answers[0:8:2], answers[1:8:2]):
        _same_answer(direct.json(), routed.json())
    assert answers[1].json()["data"][0]["object"] == "embedding"
    assert "results" in answers[5].json()                           # rerank's answer
    assert answers[8].status_code == 400 and answers[8].json()["error"]["message"] == (
        "Cannot find suitable handler for request. Expected one of: RerankRequest, ScoreRequest, EmbeddingRequest")


def test_invocations_needs_the_api_key(tiny_llama_dir):
    """It answers chat and completions, so --api-key guards it as it guards /v1."""
    body = {"prompt": "Hello", "max_tokens": 1}
    with serve_in_process(tiny_llama_dir, "--max-model-len", "128", "--api-key", "k1") as (app, _):
        (without,) = post_all(app, [("/invocations", body)])
        (with_key,) = post_all(app, [("/invocations", body)], headers={"Authorization": "Bearer k1"})
        # vLLM's rule: the scheme in any case; a wrong key or scheme is the same 401.
        (lower,) = post_all(app, [("/v1/completions", body)], headers={"Authorization": "bearer k1"})
        (wrong,) = post_all(app, [("/v1/completions", body)], headers={"Authorization": "Bearer k2"})
        (basic,) = post_all(app, [("/v1/completions", body)], headers={"Authorization": "Basic k1"})
    assert without.status_code == 401 and with_key.status_code == 200 and lower.status_code == 200
    for refused in (without, wrong, basic):     # vLLM's 401 as it is: {"error": "Unauthorized"}, JSON, no challenge
        assert refused.status_code == 401 and refused.json() == {"error": "Unauthorized"}
        assert refused.headers["content-type"] == "application/json" and "www-authenticate" not in refused.headers
