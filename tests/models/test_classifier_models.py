"""Sequence-classification models (cross-encoder rerankers, classifiers) against HF transformers on tiny random
checkpoints: ``LLM.classify`` probabilities and logits, ``LLM.score`` on a cross-encoder (the pair read as one prompt,
BERT's token types included), the activation rules, and the errors of the wrong API for the model."""
from __future__ import annotations

import json

import pytest
import torch

from pagedllm import LLM, ClassificationRequestOutput, PoolingParams, ScoringRequestOutput
from tests.unit.tiny_models import save_tiny_classifier, save_tiny_llama

TEXTS = ["w1 w2 w3", "w5", " ".join(f"w{i}" for i in range(40)), "w7 w70 w8 w9 w11 w12 w13"]
QUERY = "w1 w2 w3"
DOCS = ["w3 w4 w5 w6", "w1 w2 w3", "w90", " ".join(f"w{(7 * i) % 100}" for i in range(30))]
# (architecture, labels): encoders pool the [CLS] / <s> row, decoders the last token.
CLASSIFIERS = [("bert", 3), ("xlm_roberta", 2), ("roberta", 4), ("qwen2", 2), ("qwen3", 1), ("llama", 3)]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    made = {}

    def make(arch: str, num_labels: int, **config):
        key = (arch, num_labels, json.dumps(config, sort_keys=True))
        if key not in made:
            path = tmp_path_factory.mktemp(f"tiny-{arch}-{num_labels}")
            made[key] = (str(path), save_tiny_classifier(path, arch, num_labels, **config))
        return made[key]
    return make


def _word_ids(text: str) -> list[int]:
    """The XLM-R-shaped word tokenizer's ids of ``text`` (<s>=0, w<i> = 4 + i, </s>=2)."""
    return [0] + [4 + int(word[1:]) for word in text.split()] + [2]


def _hf_logits(hf, tok, *texts) -> torch.Tensor:
    enc = tok(*texts, return_tensors="pt")
    with torch.no_grad():
        return hf(**enc).logits[0]


@pytest.mark.parametrize("arch,num_labels", CLASSIFIERS, ids=[a for a, _ in CLASSIFIERS])
def test_classify_equals_hf(checkpoints, arch, num_labels):
    from transformers import AutoTokenizer
    path, hf = checkpoints(arch, num_labels)
    llm = LLM(path, dtype="float32")        # runner "auto": a *ForSequenceClassification is a pooling model
    config = llm.llm_engine.config
    assert config.runner_type == "pooling"
    assert config.pooling_tasks == (("classify", "score") if num_labels == 1 else ("classify",)) + ("token_classify",)
    tok = AutoTokenizer.from_pretrained(path)
    # Texts, tokenized by the checkpoint's tokenizer; the tiny Qwen checkpoints take token ids (tiny_models).
    prompts = TEXTS if not arch.startswith("qwen") else [{"prompt_token_ids": _word_ids(text)} for text in TEXTS]
    outputs = llm.classify(prompts, use_tqdm=False)
    logits = llm.classify(prompts, pooling_params=PoolingParams(use_activation=False), use_tqdm=False)
    for text, out, raw in zip(TEXTS, outputs, logits):
        ids = tok(text)["input_ids"] if not arch.startswith("qwen") else _word_ids(text)
        with torch.no_grad():
            expected = hf(torch.tensor([ids])).logits[0]
        assert isinstance(out, ClassificationRequestOutput)
        assert out.prompt_token_ids == ids
        assert out.outputs.num_classes == num_labels
        assert torch.allclose(torch.tensor(raw.outputs.probs), expected, atol=1e-4)
        activation = torch.sigmoid if num_labels == 1 else lambda x: torch.softmax(x, -1)
        assert torch.allclose(torch.tensor(out.outputs.probs), activation(expected), atol=1e-5)
    # the logits differ between texts (a real head on real rows, not a constant)
    assert len({round(o.outputs.probs[0], 4) for o in outputs}) == len(TEXTS)
    # encode with the classify task: the same probabilities, as a tensor
    encoded = llm.encode(prompts[:1], pooling_task="classify", use_tqdm=False)
    assert torch.allclose(encoded[0].outputs.data, torch.tensor(outputs[0].outputs.probs), atol=1e-6)


@pytest.mark.parametrize("arch", ["bert", "xlm_roberta", "llama"])
def test_cross_encoder_score_equals_hf_on_the_pair(checkpoints, arch):
    """One label: classify is its sigmoid, and score reads (query, document) as one prompt the tokenizer joins
    (BERT: [CLS] q [SEP] d [SEP] with token types 1 on d; XLM-R: <s> q </s></s> d </s>)."""
    from transformers import AutoTokenizer
    path, hf = checkpoints(arch, 1)
    llm = LLM(path, dtype="float32")
    assert llm.llm_engine.config.pooling_tasks == ("classify", "score", "token_classify")
    tok = AutoTokenizer.from_pretrained(path)
    scores = llm.score(QUERY, DOCS, use_tqdm=False)
    for doc, out in zip(DOCS, scores):
        assert isinstance(out, ScoringRequestOutput)
        assert out.prompt_token_ids == tok(QUERY, doc)["input_ids"]
        assert out.outputs.score == pytest.approx(float(torch.sigmoid(_hf_logits(hf, tok, QUERY, doc)[0])), abs=1e-5)
    assert len({round(s.outputs.score, 5) for s in scores}) == len(DOCS)
    # pairwise lists, raw logits, and truncation of the longer text first (the tokenizer's longest_first)
    pairwise = llm.score([QUERY, DOCS[0]], [DOCS[3], DOCS[1]], pooling_params=PoolingParams(use_activation=False),
                         truncate_prompt_tokens=16, use_tqdm=False)
    for (q, d), out in zip([(QUERY, DOCS[3]), (DOCS[0], DOCS[1])], pairwise):
        enc = tok(q, d, truncation=True, max_length=16, return_tensors="pt")
        assert out.prompt_token_ids == enc["input_ids"][0].tolist() and len(out.prompt_token_ids) <= 16
        with torch.no_grad():
            assert out.outputs.score == pytest.approx(float(hf(**enc).logits[0, 0]), abs=1e-4)
    if arch == "bert":      # token types matter: the same ids with type 0 everywhere score differently
        ids = tok(QUERY, DOCS[0])["input_ids"]
        flat = llm.encode([{"prompt_token_ids": ids}], pooling_task="score", use_tqdm=False)[0]
        assert abs(float(flat.outputs.data[0]) - scores[0].outputs.score) > 1e-4
        typed = llm.encode([{"prompt_token_ids": ids, "token_type_ids": tok(QUERY, DOCS[0])["token_type_ids"]}],
                           pooling_task="score", use_tqdm=False)[0]
        assert float(typed.outputs.data[0]) == pytest.approx(scores[0].outputs.score, abs=1e-6)


def test_llm_as_reranker_concatenates_the_pair(checkpoints):
    # use_sep_token: false (vLLM's "LLM as reranker" config): query + document tokenized as one text.
    from transformers import AutoTokenizer
    path, hf = checkpoints("llama", 1, use_sep_token=False)
    tok = AutoTokenizer.from_pretrained(path)
    (out,) = LLM(path, dtype="float32").score("w1 w2 ", "w3 w4", use_tqdm=False)
    assert out.prompt_token_ids == tok("w1 w2 w3 w4")["input_ids"] != tok("w1 w2 ", "w3 w4")["input_ids"]
    assert out.outputs.score == pytest.approx(float(torch.sigmoid(_hf_logits(hf, tok, "w1 w2 w3 w4")[0])), abs=1e-5)


def test_activation_follows_the_checkpoint_config(checkpoints):
    # A sentence-transformers CrossEncoder saved with an Identity activation: score gives the raw logit (as vLLM),
    # classify still its sigmoid.
    identity = {"activation_fn": "torch.nn.modules.linear.Identity"}
    path, hf = checkpoints("xlm_roberta", 1, sentence_transformers=identity)
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(path)
    llm = LLM(path, dtype="float32")
    logit = _hf_logits(hf, tok, QUERY, DOCS[0])[0]
    assert llm.score(QUERY, DOCS[0], use_tqdm=False)[0].outputs.score == pytest.approx(float(logit), abs=1e-4)
    assert llm.classify(TEXTS[0], use_tqdm=False)[0].outputs.probs[0] == pytest.approx(
        float(torch.sigmoid(_hf_logits(hf, tok, TEXTS[0])[0])), abs=1e-5)
    # HF's problem_type: multi-label -> a sigmoid per label; regression -> the logits.
    for problem_type, activation in (("multi_label_classification", torch.sigmoid), ("regression", lambda x: x)):
        path, hf = checkpoints("bert", 3, problem_type=problem_type)
        probs = LLM(path, dtype="float32").classify(TEXTS[0], use_tqdm=False)[0].outputs.probs
        assert torch.allclose(torch.tensor(probs), activation(_hf_logits(hf, AutoTokenizer.from_pretrained(path),
                                                                         TEXTS[0])), atol=1e-4)


def test_wrong_api_for_a_classifier_is_vllms_error(checkpoints):
    path, _ = checkpoints("bert", 3)
    llm = LLM(path, dtype="float32")
    with pytest.raises(ValueError, match="Scoring API is only enabled for num_labels == 1."):
        llm.score("w1", "w2", use_tqdm=False)
    with pytest.raises(ValueError, match="Embedding API is not supported by this model"):
        llm.embed(TEXTS, use_tqdm=False)
    with pytest.raises(ValueError, match=r"LLM.encode\(\) without pooling_task='classify' is not supported"):
        llm.encode(TEXTS, use_tqdm=False)
    with pytest.raises(ValueError, match=r"Task classify only supports \['use_activation'\] parameters, does not "
                                         r"support \['dimensions'\]"):
        llm.classify(TEXTS, pooling_params=PoolingParams(dimensions=2), use_tqdm=False)
    with pytest.raises(ValueError, match=r"LLM.generate\(\) is only supported for generative models: this is a "
                                         r"pooling \(sequence classification\) model"):
        llm.generate("w1", use_tqdm=False)
    with pytest.raises(ValueError, match=r"no language-model head \(a sequence classifier\)"):
        LLM(path, runner="generate")
    # vLLM's older spellings of the classifier's use_activation
    with_old = llm.classify(TEXTS[:1], pooling_params=PoolingParams(activation=False), use_tqdm=False)
    raw = llm.classify(TEXTS[:1], pooling_params=PoolingParams(use_activation=False), use_tqdm=False)
    assert with_old[0].outputs.probs == raw[0].outputs.probs and abs(sum(raw[0].outputs.probs) - 1) > 1e-3


@pytest.mark.parametrize("spelling", [{"runner": "pooling"}, {"task": "classify"}, {"task": "score"},
                                      {"convert": "classify"}, {"runner": "pooling", "convert": "classify"}])
def test_runner_task_and_convert_spellings(checkpoints, spelling):
    path, _ = checkpoints("xlm_roberta", 1)
    llm = LLM(path, dtype="float32", **spelling)
    assert llm.llm_engine.config.pooling_tasks == ("classify", "score", "token_classify")
    assert len(llm.classify(TEXTS[:2], use_tqdm=False)) == 2


def test_convert_that_needs_a_new_head_is_a_clear_error(checkpoints, tmp_path):
    path, _ = checkpoints("xlm_roberta", 1)
    with pytest.raises(ValueError, match="converting it into an embedding model .* is not supported yet"):
        LLM(path, convert="embed")
    save_tiny_llama(tmp_path, 104)
    for spelling in ({"convert": "classify"}, {"task": "score"}):
        with pytest.raises(ValueError, match=r"needs a sequence-classification checkpoint .* converting a model into "
                                             r"a classifier with a new head is not supported yet"):
            LLM(str(tmp_path), skip_tokenizer_init=True, **spelling)
    with pytest.raises(ValueError, match="convert='reward' runs a reward checkpoint"):
        LLM(str(tmp_path), skip_tokenizer_init=True, convert="reward")
    with pytest.raises(ValueError, match="task='embed' contradicts convert='classify'"):
        LLM(str(tmp_path), skip_tokenizer_init=True, task="embed", convert="classify")
    # an embedding model asked to classify
    embedder = LLM(str(tmp_path), skip_tokenizer_init=True, runner="pooling")
    with pytest.raises(ValueError, match="Classification API is not supported by this model"):
        embedder.classify([{"prompt_token_ids": [1, 2]}], use_tqdm=False)


@pytest.fixture(scope="module")
def causal_qwen3(tmp_path_factory):
    """A tiny random Qwen3ForCausalLM with the word tokenizer (w<i> = 4 + i): a stand-in for Qwen3-Reranker."""
    import transformers

    from tests.unit.tiny_models import save_word_tokenizer
    path = tmp_path_factory.mktemp("tiny-qwen3-causal")
    cfg = transformers.Qwen3Config(vocab_size=104, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, intermediate_size=128, head_dim=16,
                                   max_position_embeddings=512, tie_word_embeddings=False, initializer_range=0.2)
    torch.manual_seed(0)
    hf = transformers.Qwen3ForCausalLM(cfg).eval()
    hf.save_pretrained(path)
    save_word_tokenizer(path, "xlm_roberta")
    return str(path), hf


# Qwen3-Reranker's tutorial recipe, with the tiny vocabulary's "no" / "yes" (ids 9 and 13).
QWEN3_RERANKER = {"architectures": ["Qwen3ForSequenceClassification"], "classifier_from_token": ["w5", "w9"],
                  "is_original_qwen3_reranker": True}


def _yes_probability(hf, ids: list[int]) -> float:
    """The causal LM's reading: softmax over the last position's [no, yes] logits, P(yes)."""
    with torch.no_grad():
        logits = hf(torch.tensor([ids])).logits[0, -1]
    return float(torch.log_softmax(logits[[9, 13]], dim=-1).exp()[1])


@pytest.mark.parametrize("spelling", [{"runner": "pooling", "hf_overrides": QWEN3_RERANKER},
                                      {"task": "score", "hf_overrides": QWEN3_RERANKER},
                                      {"convert": "classify", "hf_overrides": {
                                          "classifier_from_token": ["w5", "w9"], "method": "from_2_way_softmax"}}],
                         ids=["runner", "task", "convert"])
def test_causal_lm_as_reranker_from_its_yes_no_logits(causal_qwen3, spelling):
    """vLLM's online conversion: the score head is lm_head[yes] - lm_head[no], one label, so the score is the
    causal LM's P(yes) over {no, yes}; the pair is joined without a separator (the prompt template holds it)."""
    path, hf = causal_qwen3
    llm = LLM(path, dtype="float32", **spelling)
    config = llm.llm_engine.config
    assert config.pooling_tasks == ("classify", "score", "token_classify") and config.hf_config.num_labels == 1
    scores = llm.score("w1 w2 w3 ", ["w4 w5", "w9 w9 w8", "w70 w71 w72 w73"], use_tqdm=False)
    for doc, out in zip(["w4 w5", "w9 w9 w8", "w70 w71 w72 w73"], scores):
        assert out.prompt_token_ids == _word_ids("w1 w2 w3 " + doc)
        assert out.outputs.score == pytest.approx(_yes_probability(hf, out.prompt_token_ids), abs=1e-5)
    assert len({round(s.outputs.score, 5) for s in scores}) == 3
    (probs,) = llm.classify([{"prompt_token_ids": [0, 20, 30, 2]}], use_tqdm=False)
    assert probs.outputs.probs[0] == pytest.approx(_yes_probability(hf, [0, 20, 30, 2]), abs=1e-5)


def test_causal_lm_classifier_from_tokens_no_post_processing(causal_qwen3):
    # bge-reranker-v2-gemma's recipe: each token's LM-head row is one label's logit, as is.
    path, hf = causal_qwen3
    llm = LLM(path, dtype="float32", runner="pooling", hf_overrides={
        "architectures": ["Qwen3ForSequenceClassification"], "classifier_from_token": ["w5", "w9", "w1"],
        "method": "no_post_processing"})
    (out,) = llm.classify([{"prompt_token_ids": [0, 20, 30, 2]}], pooling_params=PoolingParams(use_activation=False),
                          use_tqdm=False)
    with torch.no_grad():
        expected = hf(torch.tensor([[0, 20, 30, 2]])).logits[0, -1, [9, 13, 5]]
    assert torch.allclose(torch.tensor(out.outputs.probs), expected, atol=1e-4)


def test_causal_lm_classifier_from_tokens_errors(causal_qwen3):
    path, _ = causal_qwen3
    arch = {"architectures": ["Qwen3ForSequenceClassification"]}
    with pytest.raises(ValueError, match=r"classifier_from_token needs hf_overrides 'method' in "
                                         r"\['from_2_way_softmax', 'no_post_processing'\]"):
        LLM(path, runner="pooling", hf_overrides={**arch, "classifier_from_token": ["w5", "w9"]})
    with pytest.raises(ValueError, match="method='from_2_way_softmax' needs two classifier_from_token"):
        LLM(path, runner="pooling", hf_overrides={**QWEN3_RERANKER, "classifier_from_token": ["w5"]})
    with pytest.raises(ValueError, match=r"classifier_from_token \['nope'\] are not tokens of the model's tokenizer"):
        LLM(path, runner="pooling", hf_overrides={**QWEN3_RERANKER, "classifier_from_token": ["w5", "nope"]})
    with pytest.raises(ValueError, match=r"give hf_overrides 'architectures' a \*ForSequenceClassification"):
        LLM(path, runner="pooling", hf_overrides={"classifier_from_token": ["w5", "w9"],
                                                  "method": "from_2_way_softmax"})


def test_tokenization_kwargs_as_vllm_reads_them(checkpoints, tmp_path):
    """LLM.classify / score / embed / encode take vLLM's tokenization_kwargs: truncation + max_length truncate (the
    tokenizer's way, [CLS] ... [SEP] kept), max_length alone is a limit, add_special_tokens=False drops [CLS] /
    [SEP], do_lower_case lowers the text; a key vLLM would ignore is an error."""
    from transformers import AutoTokenizer

    from tests.unit.tiny_models import save_tiny_encoder, save_word_tokenizer
    path, hf = checkpoints("bert", 3)
    tok = AutoTokenizer.from_pretrained(path)
    llm = LLM(path, dtype="float32")
    long_text = " ".join(f"w{i}" for i in range(30))
    (cut,) = llm.classify(long_text, tokenization_kwargs={"truncation": True, "max_length": 8}, use_tqdm=False)
    assert cut.prompt_token_ids == tok(long_text, truncation=True, max_length=8)["input_ids"]
    assert len(cut.prompt_token_ids) == 8 and cut.prompt_token_ids[-1] == 3
    assert torch.allclose(torch.tensor(cut.outputs.probs), torch.softmax(hf(torch.tensor(
        [cut.prompt_token_ids])).logits[0].detach(), -1), atol=1e-5)
    (bare,) = llm.classify("w1 w2", tokenization_kwargs={"add_special_tokens": False}, use_tqdm=False)
    assert bare.prompt_token_ids == [5, 6]
    with torch.no_grad():
        assert torch.allclose(torch.tensor(bare.outputs.probs), torch.softmax(hf(torch.tensor([[5, 6]])).logits[0],
                                                                              -1), atol=1e-5)
    (lower,) = llm.classify("W1 W2", tokenization_kwargs={"do_lower_case": True}, use_tqdm=False)
    assert lower.prompt_token_ids == [2, 5, 6, 3]
    # the truncate_prompt_tokens argument wins over the key (vLLM merges it over tokenization_kwargs)
    (arg,) = llm.classify(long_text, truncate_prompt_tokens=5, tokenization_kwargs={"truncate_prompt_tokens": 9},
                          use_tqdm=False)
    assert len(arg.prompt_token_ids) == 5
    with pytest.raises(ValueError, match="The prompt has 32 tokens, more than tokenization_kwargs max_length=8; "
                                         "add truncation=True"):
        llm.classify(long_text, tokenization_kwargs={"max_length": 8}, use_tqdm=False)
    with pytest.raises(ValueError, match=r"tokenization_kwargs \['padding'\] are not supported by pagedllm"):
        llm.classify("w1", tokenization_kwargs={"padding": "max_length"}, use_tqdm=False)
    with pytest.raises(ValueError, match="tokenization_kwargs truncation must be"):
        llm.classify("w1", tokenization_kwargs={"truncation": "only_second"}, use_tqdm=False)
    # a cross-encoder's pair, truncated the tokenizer's way
    path, hf = checkpoints("bert", 1)
    tok = AutoTokenizer.from_pretrained(path)
    (pair,) = LLM(path, dtype="float32").score(QUERY, long_text, tokenization_kwargs={"truncation": True,
                                                                                       "max_length": 12},
                                               use_tqdm=False)
    enc = tok(QUERY, long_text, truncation=True, max_length=12, return_tensors="pt")
    assert pair.prompt_token_ids == enc["input_ids"][0].tolist()
    with torch.no_grad():
        assert pair.outputs.score == pytest.approx(float(torch.sigmoid(hf(**enc).logits[0, 0])), abs=1e-5)
    # an embedding model: embed and encode
    save_tiny_encoder(tmp_path, "bert")
    save_word_tokenizer(tmp_path, "bert")
    embedder = LLM(str(tmp_path), dtype="float32")
    (emb,) = embedder.embed(long_text, tokenization_kwargs={"truncation": True, "max_length": 6}, use_tqdm=False)
    (same,) = embedder.embed({"prompt_token_ids": [2, 4, 5, 6, 7, 3]}, use_tqdm=False)
    assert emb.prompt_token_ids == [2, 4, 5, 6, 7, 3] and emb.outputs.embedding == pytest.approx(
        same.outputs.embedding, abs=1e-6)
    (enc_out,) = embedder.encode("w1 w2", tokenization_kwargs={"add_special_tokens": False}, use_tqdm=False)
    assert enc_out.prompt_token_ids == [5, 6]


def test_causal_lm_as_reranker_served(causal_qwen3):
    # vllm serve Qwen/Qwen3-Reranker-0.6B --runner pooling --hf_overrides '{...}', then /rerank and /score.
    from tests.unit.app_client import post_to_server_app
    path, hf = causal_qwen3
    docs = ["w4 w5", "w9 w9 w8", "w70 w71"]
    (status, rerank), (score_status, score) = post_to_server_app(path, [
        ("/rerank", {"query": "w1 w2 ", "documents": docs}),
        ("/score", {"text_1": "w1 w2 ", "text_2": docs[0]})],
        flags=("--runner", "pooling", "--hf_overrides", json.dumps(QWEN3_RERANKER)))
    expected = [_yes_probability(hf, _word_ids("w1 w2 " + doc)) for doc in docs]
    assert status == 200, rerank
    assert [r["index"] for r in rerank["results"]] == sorted(range(3), key=lambda i: -expected[i])
    assert [r["relevance_score"] for r in rerank["results"]] == pytest.approx(sorted(expected, reverse=True), abs=1e-5)
    assert score_status == 200 and score["data"][0]["score"] == pytest.approx(expected[0], abs=1e-5)
