"""Per-token pooling against HF transformers on tiny random checkpoints: reward models (Qwen2ForRewardModel, Qwen2.5-
Math's remote code, rebuilt here as Qwen2Model + its published MLP head; Qwen2ForProcessRewardModel), token
classifiers (BertForTokenClassification), ``token_embed`` on an embedding model and ``token_classify`` on a sequence
classifier: ``LLM.reward`` / ``LLM.encode(pooling_task=...)`` and /pooling, one row per prompt token."""
from __future__ import annotations

import pytest
import torch

from pagedllm import LLM, PoolingParams, PoolingRequestOutput
from tests.unit.app_client import post_to_server_app
from tests.unit.tiny_models import save_tiny_classifier, save_tiny_encoder, save_word_tokenizer

PROMPTS = [[0, 5, 17, 42, 9, 2], [0] + [(7 * i + 3) % 100 + 4 for i in range(30)] + [2], [0, 7, 2]]


class RewardReference(torch.nn.Module):
    """Qwen's modeling_qwen2_rm.py / the PRM's: Qwen2Model, then Linear -> ReLU -> Linear on every token."""

    def __init__(self, cfg, num_labels: int):
        super().__init__()
        import transformers
        self.model = transformers.Qwen2Model(cfg)
        self.score = torch.nn.Sequential(torch.nn.Linear(cfg.hidden_size, cfg.hidden_size), torch.nn.ReLU(),
                                         torch.nn.Linear(cfg.hidden_size, num_labels))

    @torch.no_grad()
    def forward(self, ids: list[int]) -> torch.Tensor:
        return self.score(self.model(torch.tensor([ids])).last_hidden_state)[0]


@pytest.fixture(scope="module")
def reward_model(tmp_path_factory):
    def make(arch: str, num_labels: int):
        import transformers
        from safetensors.torch import save_file
        path = tmp_path_factory.mktemp(arch)
        cfg = transformers.Qwen2Config(vocab_size=104, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                       num_key_value_heads=2, intermediate_size=128, max_position_embeddings=512,
                                       initializer_range=0.2, architectures=[arch])
        torch.manual_seed(0)
        ref = RewardReference(cfg, num_labels).eval()
        for p in ref.score.parameters():     # HF's init leaves biases at zero: give them values to check
            torch.nn.init.normal_(p, std=0.3)
        cfg.save_pretrained(path)
        save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(path / "model.safetensors"))
        return str(path), ref
    return make


def test_qwen2_reward_model_rewards_every_token(reward_model):
    path, ref = reward_model("Qwen2ForRewardModel", 1)
    llm = LLM(path, dtype="float32", skip_tokenizer_init=True)     # runner "auto": a reward model pools
    config = llm.llm_engine.config
    assert config.runner_type == "pooling" and config.pooling_tasks == ("token_classify",)
    prompts = [{"prompt_token_ids": ids} for ids in PROMPTS]
    rewards = llm.reward(prompts, use_tqdm=False)
    logits = llm.reward(prompts, pooling_params=PoolingParams(use_activation=False), use_tqdm=False)
    for ids, out, raw in zip(PROMPTS, rewards, logits):
        expected = ref(ids)
        assert isinstance(out, PoolingRequestOutput) and out.prompt_token_ids == ids
        assert tuple(out.outputs.data.shape) == (len(ids), 1)
        assert torch.allclose(raw.outputs.data, expected, atol=1e-4)
        assert torch.allclose(out.outputs.data, torch.sigmoid(expected), atol=1e-5)   # one label: its sigmoid
    assert raw.outputs.data.std() > 0.05      # real per-token values, not a constant
    # encode's own task on it, and vLLM's convert="reward" spelling of the same model
    (encoded,) = llm.encode(prompts[:1], use_tqdm=False)
    assert torch.equal(encoded.outputs.data, rewards[0].outputs.data)
    assert LLM(path, dtype="float32", skip_tokenizer_init=True, convert="reward").llm_engine.config.pooling_tasks == \
        ("token_classify",)
    with pytest.raises(ValueError, match="Task classify is not supported by this model: it has a head on every "
                                         "token"):
        llm.classify(prompts, use_tqdm=False)
    with pytest.raises(ValueError, match="Task embed is not supported by this model"):
        llm.embed(prompts, use_tqdm=False)


def test_process_reward_model_softmax_per_token(reward_model):
    path, ref = reward_model("Qwen2ForProcessRewardModel", 2)
    llm = LLM(path, dtype="float32", skip_tokenizer_init=True)
    (out,) = llm.reward([{"prompt_token_ids": PROMPTS[1]}], use_tqdm=False)
    assert tuple(out.outputs.data.shape) == (len(PROMPTS[1]), 2)
    assert torch.allclose(out.outputs.data, torch.softmax(ref(PROMPTS[1]), -1), atol=1e-5)


def test_reward_model_over_pooling_route(reward_model):
    path, ref = reward_model("Qwen2ForRewardModel", 1)
    answers = post_to_server_app(path, [
        ("/pooling", {"input": PROMPTS[:2]}),
        ("/pooling", {"input": PROMPTS[2], "task": "token_classify", "use_activation": False}),
        ("/classify", {"input": PROMPTS[2]}),
        ("/pooling", {"input": PROMPTS[2], "task": "embed"}),
        ("/v1/completions", {"prompt": PROMPTS[2]})], flags=("--skip-tokenizer-init",))
    (status, body), (raw_status, raw), (cls_status, cls), (embed_status, embed), (gen_status, gen) = answers
    assert gen_status == 400 and "token classification / reward" in gen["error"]["message"]
    assert status == 200 and body["object"] == "list" and [d["object"] for d in body["data"]] == ["pooling"] * 2
    for ids, item in zip(PROMPTS, body["data"]):
        assert torch.allclose(torch.tensor(item["data"]), torch.sigmoid(ref(ids)), atol=1e-5)
    assert body["usage"]["prompt_tokens"] == len(PROMPTS[0]) + len(PROMPTS[1])
    assert raw_status == 200 and torch.allclose(torch.tensor(raw["data"][0]["data"]), ref(PROMPTS[2]), atol=1e-4)
    assert cls_status == 400 and "has a head on every token" in cls["error"]["message"]
    assert embed_status == 400 and embed["error"]["param"] == "task"


def test_bert_token_classifier_equals_hf(tmp_path):
    import transformers
    cfg = transformers.BertConfig(vocab_size=104, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=128, max_position_embeddings=64, num_labels=5,
                                  initializer_range=0.2, id2label={i: f"T{i}" for i in range(5)})
    torch.manual_seed(0)
    hf = transformers.BertForTokenClassification(cfg).eval()
    hf.save_pretrained(tmp_path)
    save_word_tokenizer(tmp_path, "bert")
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path)
    llm = LLM(str(tmp_path), dtype="float32")
    assert llm.llm_engine.config.pooling_tasks == ("token_classify",)
    texts = ["w1 w2 w3", " ".join(f"w{i}" for i in range(25))]
    outputs = llm.encode(texts, pooling_task="token_classify", use_tqdm=False)
    for text, out in zip(texts, outputs):
        enc = tok(text, return_tensors="pt")
        with torch.no_grad():
            logits = hf(**enc).logits[0]
        assert out.prompt_token_ids == enc["input_ids"][0].tolist()
        assert torch.allclose(out.outputs.data, torch.softmax(logits, -1), atol=1e-5)
    # per-token label argmax, as an NER pipeline reads it
    assert outputs[1].outputs.data.argmax(-1).tolist() == hf(**tok(texts[1], return_tensors="pt")).logits[0].argmax(
        -1).tolist()


def test_token_embed_on_an_embedding_model(tmp_path):
    """Multi-vector retrieval (ColBERT-style): every token's hidden state, each L2-normalized (vLLM's token_embed);
    normalize=False / use_activation false gives them raw; the one-vector tasks still work in the same batch."""
    hf = save_tiny_encoder(tmp_path, "bert")
    llm = LLM(str(tmp_path), dtype="float32", skip_tokenizer_init=True)
    assert "token_embed" in llm.llm_engine.config.pooling_tasks
    prompts = [{"prompt_token_ids": ids} for ids in PROMPTS]
    outputs = llm.encode(prompts, pooling_task="token_embed", use_tqdm=False)
    raw = llm.encode(prompts[:1], pooling_params=PoolingParams(normalize=False), pooling_task="token_embed",
                     use_tqdm=False)[0]
    for ids, out in zip(PROMPTS, outputs):
        with torch.no_grad():
            hidden = hf(torch.tensor([ids])).last_hidden_state[0]
        assert tuple(out.outputs.data.shape) == (len(ids), 64)
        assert torch.allclose(out.outputs.data, torch.nn.functional.normalize(hidden, dim=-1), atol=1e-5)
    with torch.no_grad():
        assert torch.allclose(raw.outputs.data, hf(torch.tensor([PROMPTS[0]])).last_hidden_state[0], atol=1e-4)
    with pytest.raises(ValueError, match="Task token_classify is not supported by this model: it is an embedding "
                                         "model"):
        llm.encode(prompts, pooling_task="token_classify", use_tqdm=False)
    (status, body), = post_to_server_app(str(tmp_path), [
        ("/pooling", {"input": [PROMPTS[2]], "task": "token_embed"})],
        flags=("--skip-tokenizer-init", "--max-model-len", "64"))
    assert status == 200 and torch.allclose(torch.tensor(body["data"][0]["data"]), outputs[2].outputs.data,
                                            atol=1e-6)


def test_token_classify_on_a_sequence_classifier(tmp_path):
    # vLLM's sequence classifiers also run their head on every token (token_classify).
    hf = save_tiny_classifier(tmp_path, "qwen2", 3)
    llm = LLM(str(tmp_path), dtype="float32", skip_tokenizer_init=True)
    (out,) = llm.encode([{"prompt_token_ids": PROMPTS[1]}], pooling_task="token_classify", use_tqdm=False)
    with torch.no_grad():
        logits = hf.score(hf.model(torch.tensor([PROMPTS[1]])).last_hidden_state)[0]
    assert torch.allclose(out.outputs.data, torch.softmax(logits, -1), atol=1e-5)
    # its last row is the sequence's classification
    (cls,) = llm.classify([{"prompt_token_ids": PROMPTS[1]}], use_tqdm=False)
    assert torch.allclose(out.outputs.data[-1], torch.tensor(cls.outputs.probs), atol=1e-6)
    # vLLM's LLM.reward is token_classify: the same rows
    (reward,) = llm.reward([{"prompt_token_ids": PROMPTS[1]}], use_tqdm=False)
    assert torch.equal(reward.outputs.data, out.outputs.data)

