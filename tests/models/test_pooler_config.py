"""vLLM's ``pooler_config`` (``LLM(pooler_config=PoolerConfig(...) or {...})``, ``--pooler-config JSON``) against
HF / torch references on tiny random checkpoints: the pooling type over the architecture's default and over the
checkpoint's sentence-transformers config, the normalize / activation default, a classifier's logit calibration,
STEP pooling of a process reward model, the CLI forms, and the errors for what does not apply."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from pagedllm import LLM, PoolingParams
from pagedllm.config import EngineArgs, FlexibleArgumentParser, PoolerConfig
from tests.models.test_token_pooling_models import RewardReference
from tests.unit.app_client import post_to_server_app
from tests.unit.tiny_models import save_tiny_classifier, save_tiny_llama, save_word_tokenizer

PROMPTS = [[5, 17, 42, 9, 100], [7], list(range(1, 40))]


@pytest.fixture(scope="module")
def tiny_qwen3_model(tmp_path_factory):
    """A bare Qwen3Model (how Qwen3-Embedding is saved): a pooling model, LAST by default."""
    import transformers
    cfg = transformers.Qwen3Config(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, head_dim=16, vocab_size=256, max_position_embeddings=512)
    torch.manual_seed(0)
    hf = transformers.Qwen3Model(cfg).eval()
    path = tmp_path_factory.mktemp("tiny-qwen3-model")
    hf.save_pretrained(path)
    return str(path), hf


def _hidden(hf, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return hf(torch.tensor([ids])).last_hidden_state[0]


@pytest.mark.parametrize("pooler_config", [PoolerConfig(pooling_type="MEAN", use_activation=False),
                                           {"pooling_type": "MEAN", "normalize": False},
                                           {"seq_pooling_type": "MEAN", "use_activation": False}],
                         ids=["object", "dict-normalize", "seq_pooling_type"])
def test_mean_pooling_without_normalize_on_a_decoder(tiny_qwen3_model, pooler_config):
    path, hf = tiny_qwen3_model
    llm = LLM(path, skip_tokenizer_init=True, dtype="float32", pooler_config=pooler_config)
    outputs = llm.embed([{"prompt_token_ids": p} for p in PROMPTS], use_tqdm=False)
    for ids, out in zip(PROMPTS, outputs):
        assert torch.allclose(torch.tensor(out.outputs.embedding), _hidden(hf, ids).mean(0), atol=1e-4)
    # A request's own normalize still wins over the configured default.
    (normed,) = llm.embed([{"prompt_token_ids": PROMPTS[0]}], PoolingParams(normalize=True), use_tqdm=False)
    assert torch.allclose(torch.tensor(normed.outputs.embedding), F.normalize(_hidden(hf, PROMPTS[0]).mean(0), dim=-1),
                          atol=1e-4)


def test_default_dimensions_of_a_matryoshka_model(tiny_qwen3_model):
    path, hf = tiny_qwen3_model
    llm = LLM(path, skip_tokenizer_init=True, dtype="float32", hf_overrides={"matryoshka_dimensions": [16, 32]},
              pooler_config={"dimensions": 16})
    last = _hidden(hf, PROMPTS[0])[-1]
    (out,) = llm.embed([{"prompt_token_ids": PROMPTS[0]}], use_tqdm=False)
    assert torch.allclose(torch.tensor(out.outputs.embedding), F.normalize(last[:16], dim=-1), atol=1e-4)
    (out,) = llm.embed([{"prompt_token_ids": PROMPTS[0]}], PoolingParams(dimensions=32), use_tqdm=False)
    assert torch.allclose(torch.tensor(out.outputs.embedding), F.normalize(last[:32], dim=-1), atol=1e-4)
    with pytest.raises(ValueError, match=__import__("re").escape("only supports [16, 32] matryoshka dimensions")):
        LLM(path, skip_tokenizer_init=True, dtype="float32", hf_overrides={"matryoshka_dimensions": [16, 32]},
            pooler_config={"dimensions": 8})


def test_override_wins_over_the_sentence_transformers_config(tmp_path):
    """A checkpoint that says mean pooling + Normalize: pooler_config's CLS replaces the pooling and keeps the
    Normalize; use_activation=False drops the Normalize and keeps the mean."""
    import transformers
    cfg = transformers.XLMRobertaConfig(vocab_size=104, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                        intermediate_size=128, max_position_embeddings=66, type_vocab_size=1,
                                        pad_token_id=1, bos_token_id=0, eos_token_id=2)
    torch.manual_seed(0)
    hf = transformers.XLMRobertaModel(cfg).eval()
    hf.save_pretrained(tmp_path)
    save_word_tokenizer(tmp_path, "xlm_roberta")
    (tmp_path / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}]))
    (tmp_path / "1_Pooling").mkdir()
    (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_mean_tokens": True}))
    text = "w1 w2 w3 w40 w7"
    ids = [0, 5, 6, 7, 44, 11, 2]
    hidden = _hidden(hf, ids)

    def embed(**kwargs) -> torch.Tensor:
        (out,) = LLM(str(tmp_path), dtype="float32", **kwargs).embed([text], use_tqdm=False)
        assert out.prompt_token_ids == ids
        return torch.tensor(out.outputs.embedding)

    assert torch.allclose(embed(), F.normalize(hidden.mean(0), dim=-1), atol=1e-4)      # the checkpoint's own
    assert torch.allclose(embed(pooler_config={"pooling_type": "CLS"}), F.normalize(hidden[0], dim=-1), atol=1e-4)
    assert torch.allclose(embed(pooler_config={"use_activation": False}), hidden.mean(0), atol=1e-4)
    assert torch.allclose(embed(pooler_config={"pooling_type": "LAST", "use_activation": False}), hidden[-1],
                          atol=1e-4)


def test_classifier_activation_default_and_logit_calibration(tmp_path):
    hf = save_tiny_classifier(tmp_path, "qwen2", 3)
    ids = [0, 9, 23, 41, 2]
    with torch.no_grad():
        hidden = hf.model(torch.tensor([ids])).last_hidden_state[0]
        last, mean = hf.score(hidden[-1]), hf.score(hidden.mean(0))
    raw = LLM(str(tmp_path), dtype="float32", pooler_config={"use_activation": False})
    (out,) = raw.classify([{"prompt_token_ids": ids}], use_tqdm=False)
    assert torch.allclose(torch.tensor(out.outputs.probs), last, atol=1e-4)        # logits: no softmax by default
    (asked,) = raw.classify([{"prompt_token_ids": ids}], pooling_params=PoolingParams(use_activation=True),
                            use_tqdm=False)
    assert torch.allclose(torch.tensor(asked.outputs.probs), torch.softmax(last, -1), atol=1e-5)
    # vLLM's Platt scaling, activation((logit - logit_mean) / logit_sigma); logit_bias is its older logit_mean.
    for calibration in ({"logit_mean": 0.5, "logit_sigma": 2.0}, {"logit_bias": 0.5, "logit_scale": 0.5}):
        llm = LLM(str(tmp_path), dtype="float32", pooler_config=calibration)
        (out,) = llm.classify([{"prompt_token_ids": ids}], use_tqdm=False)
        assert torch.allclose(torch.tensor(out.outputs.probs), torch.softmax((last - 0.5) / 2.0, -1), atol=1e-5)
    # MEAN pooling on a decoder classifier: the head on the mean of the rows.
    llm = LLM(str(tmp_path), dtype="float32", pooler_config={"pooling_type": "MEAN"})
    (out,) = llm.classify([{"prompt_token_ids": ids}], use_tqdm=False)
    assert torch.allclose(torch.tensor(out.outputs.probs), torch.softmax(mean, -1), atol=1e-5)


def test_step_pooling_of_a_process_reward_model(tmp_path):
    """Qwen2ForProcessRewardModel pools STEP by default (vLLM): with step_tag_id only the rows of that token, and
    with returned_token_ids only those columns (in that order), then the softmax."""
    import transformers
    from safetensors.torch import save_file
    cfg = transformers.Qwen2Config(vocab_size=104, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, intermediate_size=128, max_position_embeddings=512,
                                   initializer_range=0.2, architectures=["Qwen2ForProcessRewardModel"])
    torch.manual_seed(0)
    ref = RewardReference(cfg, 2).eval()
    for p in ref.score.parameters():
        torch.nn.init.normal_(p, std=0.3)
    cfg.save_pretrained(tmp_path)
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(tmp_path / "model.safetensors"))
    step = 9
    prompts = [[0, 5, step, 42, 17, step, 2], [0, 7, 2], [0, step, 3, step, 8, step, 2]]
    llm = LLM(str(tmp_path), dtype="float32", skip_tokenizer_init=True,
              pooler_config={"step_tag_id": step, "returned_token_ids": [1, 0]})
    outputs = llm.reward([{"prompt_token_ids": p} for p in prompts], use_tqdm=False)
    for ids, out in zip(prompts, outputs):
        logits = ref(ids)[:, [1, 0]][torch.tensor(ids) == step]
        assert tuple(out.outputs.data.shape) == (ids.count(step), 2)
        assert torch.allclose(out.outputs.data, torch.softmax(logits, -1), atol=1e-5)
    # A request's own step_tag_id / returned_token_ids (vLLM's PoolingParams fields) win over pooler_config's.
    (out,) = llm.reward([{"prompt_token_ids": prompts[2]}], pooling_params=PoolingParams(returned_token_ids=[0, 1]),
                        use_tqdm=False)
    assert torch.allclose(out.outputs.data, torch.softmax(ref(prompts[2])[torch.tensor(prompts[2]) == step], -1),
                          atol=1e-5)
    plain = LLM(str(tmp_path), dtype="float32", skip_tokenizer_init=True)        # no pooler_config: STEP, all rows
    (out,) = plain.reward([{"prompt_token_ids": prompts[0]}], pooling_params=PoolingParams(step_tag_id=42),
                          use_tqdm=False)
    assert torch.allclose(out.outputs.data, torch.softmax(ref(prompts[0])[3:4], -1), atol=1e-5)
    with pytest.raises(ValueError, match=r"returned_token_ids \[2\] are out of range: this model's per-token rows "
                                         r"have 2 columns"):
        plain.reward([{"prompt_token_ids": prompts[0]}], pooling_params=PoolingParams(returned_token_ids=[2]),
                     use_tqdm=False)
    with pytest.raises(ValueError, match="pooler_config pooling_type='MEAN' pools a sequence into one vector; this "
                                         "model has a head on every token"):
        LLM(str(tmp_path), dtype="float32", skip_tokenizer_init=True, pooler_config={"pooling_type": "MEAN"})
    # pooling_type ALL: every row again, both columns.
    llm = LLM(str(tmp_path), dtype="float32", skip_tokenizer_init=True, pooler_config={"pooling_type": "ALL"})
    (out,) = llm.reward([{"prompt_token_ids": prompts[0]}], use_tqdm=False)
    assert torch.allclose(out.outputs.data, torch.softmax(ref(prompts[0]), -1), atol=1e-5)


def test_cli_forms():
    parser = EngineArgs.add_cli_args(FlexibleArgumentParser())
    args = EngineArgs.from_cli_args(parser.parse_args(
        ["--pooler-config", '{"pooling_type": "MEAN", "normalize": false}']))
    assert isinstance(args.pooler_config, PoolerConfig)
    assert (args.pooler_config.seq_pooling_type, args.pooler_config.use_activation) == ("MEAN", False)
    args = EngineArgs.from_cli_args(parser.parse_args(["--pooler-config.pooling_type", "CLS",
                                                       "--pooler_config.dimensions", "32"]))
    assert (args.pooler_config.seq_pooling_type, args.pooler_config.dimensions) == ("CLS", 32)


def test_served_with_pooler_config(tiny_qwen3_model):
    path, hf = tiny_qwen3_model
    ((status, body),) = post_to_server_app(path, [("/v1/embeddings", {"input": [PROMPTS[0]]})], flags=(
        "--skip-tokenizer-init", "--pooler-config", '{"pooling_type": "MEAN", "use_activation": false}'))
    assert status == 200
    assert torch.allclose(torch.tensor(body["data"][0]["embedding"]), _hidden(hf, PROMPTS[0]).mean(0), atol=1e-4)


@pytest.mark.parametrize("pooler_config,message", [
    ({"pooling_typ": "MEAN"}, "Unknown pooler_config field(s): pooling_typ; PoolerConfig's fields are task, "),
    ({"pooling_type": "MAX"}, "pooler_config pooling_type must be one of CLS, LAST, MEAN, ALL, STEP, got 'MAX'"),
    ({"pooling_type": "MEAN", "seq_pooling_type": "CLS"}, "Cannot set both `pooling_type` and `seq_pooling_type`"),
    ({"use_activation": True, "normalize": False}, "pooler_config normalize=False contradicts use_activation=True"),
    ({"logit_mean": 1.0, "logit_bias": 1.0}, "Cannot set both `logit_bias` and `logit_mean`"),
    ({"logit_sigma": 0}, "logit_sigma cannot be 0"),
    ({"enable_chunked_processing": 1}, "pooler_config enable_chunked_processing must be true or false"),
    ({"max_embed_len": 4096}, "pooler_config max_embed_len applies with enable_chunked_processing=true"),
    ({"task": "encode"}, "pooler_config task must be one of embed, classify, score, token_embed, token_classify, "
                         "got 'encode'"),
    ({"dimensions": 0}, "pooler_config dimensions must be greater than 0"),
    ({"returned_token_ids": "1,2"}, "pooler_config returned_token_ids must be a list of token ids"),
    ("[1]", "pooler_config must be a PoolerConfig or a dict of its fields, got list"),
])
def test_invalid_pooler_config_is_a_clear_error(pooler_config, message):
    with pytest.raises(ValueError, match=__import__("re").escape(message)):
        EngineArgs(pooler_config=pooler_config)


def test_fields_that_do_not_apply_to_the_model(tiny_qwen3_model, tmp_path):
    path, _ = tiny_qwen3_model
    for pooler_config, message in [
            ({"dimensions": 32}, 'Model "' + path + '" does not support matryoshka representation'),
            ({"logit_mean": 1.0}, "pooler_config logit_mean applies to sequence classification models only"),
            ({"step_tag_id": 9}, "pooler_config step_tag_id applies to STEP pooling only")]:
        with pytest.raises(ValueError, match=__import__("re").escape(message)):
            LLM(path, skip_tokenizer_init=True, dtype="float32", pooler_config=pooler_config)
    embedder = LLM(path, skip_tokenizer_init=True, dtype="float32")      # pools ALL: step fields are vLLM's error
    with pytest.raises(ValueError, match=__import__("re").escape(
            "Task token_embed only supports ['dimensions', 'use_activation'] parameters, does not support "
            "['step_tag_id'] parameters")):
        embedder.encode([{"prompt_token_ids": [1, 2]}], pooling_params=PoolingParams(step_tag_id=2),
                        pooling_task="token_embed", use_tqdm=False)
    save_tiny_classifier(tmp_path, "qwen2", 2)
    with pytest.raises(ValueError, match="pooler_config dimensions applies to embedding models only"):
        LLM(str(tmp_path), dtype="float32", pooler_config={"dimensions": 32})
    save_tiny_llama(tmp_path / "generator", 128)
    with pytest.raises(ValueError, match="pooler_config applies to pooling models only"):
        LLM(str(tmp_path / "generator"), skip_tokenizer_init=True, pooler_config={"pooling_type": "MEAN"})
    # vLLM 0.12 removed override_pooler_config: the error says what replaced it.
    with pytest.raises(TypeError, match="override_pooler_config: vLLM removed it in 0.12: pooler_config"):
        LLM(path, override_pooler_config={"pooling_type": "MEAN"})
