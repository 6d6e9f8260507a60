"""Tiny random HF models for the unit tests (imported by the test modules)."""
import torch


def save_tiny_llama(path, vocab_size: int, seed: int = 0, **config):
    """A tiny random fp32 Llama (2 layers, GQA 4/2) saved to ``path``; returns the HF model (the reference)."""
    import transformers
    settings = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=2, vocab_size=vocab_size, max_position_embeddings=512, tie_word_embeddings=False)
    cfg = transformers.LlamaConfig(**{**settings, **config})    # the caller's settings override the defaults
    torch.manual_seed(seed)
    hf = transformers.LlamaForCausalLM(cfg).eval()
    hf.save_pretrained(path)
    return hf


def save_tiny_chatglm(path, vocab_size: int, num_layers: int = 2, seed: int = 0) -> None:
    """A tiny random ChatGLM2 checkpoint (THUDM's config.json and tensor names, fused query_key_value with 2
    multi-query KV groups for 4 heads, fused dense_h_to_4h; tests/models/test_chatglm.py checks it against a
    plain-torch reference) saved to ``path``."""
    import json

    from safetensors.torch import save_file

    from tests.models.test_chatglm import CHATGLM2, random_weights
    cfg = dict(CHATGLM2, padded_vocab_size=vocab_size, num_layers=num_layers)
    with open(f"{path}/config.json", "w") as f:
        json.dump(cfg, f)
    save_file(random_weights(cfg, seed=seed), f"{path}/model.safetensors")


def save_tiny_encoder(path, arch: str, num_layers: int = 2, seed: int = 0):
    """A tiny random BERT ("bert": 2 token types) or XLM-RoBERTa ("xlm_roberta": 1 token type, positions after the
    padding index) encoder, 64 positions of input, saved to ``path``; returns the HF model."""
    import transformers
    config_class, model_class, positions = {
        "bert": (transformers.BertConfig, transformers.BertModel, 64),
        "xlm_roberta": (transformers.XLMRobertaConfig, transformers.XLMRobertaModel, 66)}[arch]
    cfg = config_class(vocab_size=104, hidden_size=64, num_hidden_layers=num_layers, num_attention_heads=4,
                       intermediate_size=128, max_position_embeddings=positions, pad_token_id=1,
                       type_vocab_size=1 if arch == "xlm_roberta" else 2)
    torch.manual_seed(seed)
    hf = model_class(cfg).eval()
    hf.save_pretrained(path)
    return hf


# Prompts for those encoders (<s>/[CLS]-like 0 first, 2 last; lengths 6, 42, 3 and 50): several per step, so the
# padded bidirectional attention runs.
ENCODER_PROMPTS = [[0, 5, 17, 42, 9, 2], [0] + [(7 * i + 3) % 100 + 4 for i in range(40)] + [2], [0, 7, 2],
                   [0] + list(range(4, 52)) + [2]]


def save_word_tokenizer(path, kind: str) -> None:
    """A tiny fast tokenizer over whitespace words w0..w99 (ids 4..103) that joins a text pair as the real one of
    ``kind`` does. "bert": [PAD]=0 [UNK]=1 [CLS]=2 [SEP]=3, ``[CLS] a [SEP] b [SEP]`` with token types 0 then 1;
    "xlm_roberta": <s>=0 <pad>=1 </s>=2 <unk>=3, ``<s> a </s></s> b </s>`` and no token types."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast
    if kind == "bert":
        specials = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3}
        single, pair = "[CLS] $A [SEP]", "[CLS] $A [SEP] $B:1 [SEP]:1"
        names = dict(pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]",
                     model_input_names=["input_ids", "token_type_ids", "attention_mask"])
    else:
        specials = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
        single, pair = "<s> $A </s>", "<s> $A </s> </s> $B </s>"
        names = dict(bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>", cls_token="<s>",
                     sep_token="</s>", model_input_names=["input_ids", "attention_mask"])
    vocab = {**specials, **{f"w{i}": 4 + i for i in range(100)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token=names["unk_token"]))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    cls, sep = names["cls_token"], names["sep_token"]
    tok.post_processor = processors.TemplateProcessing(single=single, pair=pair,
                                                       special_tokens=[(cls, vocab[cls]), (sep, vocab[sep])])
    PreTrainedTokenizerFast(tokenizer_object=tok, **names).save_pretrained(str(path))


def save_tiny_classifier(path, arch: str, num_labels: int, seed: int = 0, **config):
    """A tiny random ``*ForSequenceClassification`` ("bert", "xlm_roberta", "roberta", "qwen2", "qwen3", "llama") with
    ``num_labels`` labels, saved to ``path`` with ``save_word_tokenizer``'s tokenizer (BERT's for "bert", XLM-R's
    for the others; transformers loads Qwen2's own tokenizer class over it, so give Qwen models token ids); returns the
    HF model (the reference). initializer_range 0.2 spreads the logits apart."""
    import transformers
    encoder = dict(vocab_size=104, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128)
    decoder = dict(encoder, num_key_value_heads=2, max_position_embeddings=512, pad_token_id=1)
    config_class, model_class, settings = {
        "bert": ("BertConfig", "BertForSequenceClassification", dict(encoder, max_position_embeddings=64,
                                                                      pad_token_id=0)),
        "xlm_roberta": ("XLMRobertaConfig", "XLMRobertaForSequenceClassification",
                        dict(encoder, max_position_embeddings=66, type_vocab_size=1, pad_token_id=1)),
        "roberta": ("RobertaConfig", "RobertaForSequenceClassification",
                    dict(encoder, max_position_embeddings=66, type_vocab_size=1, pad_token_id=1)),
        "qwen2": ("Qwen2Config", "Qwen2ForSequenceClassification", decoder),
        "qwen3": ("Qwen3Config", "Qwen3ForSequenceClassification", dict(decoder, head_dim=16)),
        "llama": ("LlamaConfig", "LlamaForSequenceClassification", decoder)}[arch]
    cfg = getattr(transformers, config_class)(**{**settings, "num_labels": num_labels, "initializer_range": 0.2,
                                                 **config})
    torch.manual_seed(seed)
    hf = getattr(transformers, model_class)(cfg).eval()
    hf.save_pretrained(path)
    save_word_tokenizer(path, "bert" if arch == "bert" else "xlm_roberta")
    return hf


def save_st_dense_model(root):
    """A tiny XLM-RoBERTa saved by sentence-transformers under ``root / "st"`` with mean pooling, two Dense modules
    (64 -> 32 Tanh with a bias, 32 -> 16 without; LaBSE / embeddinggemma's shape) and Normalize, its Pooling config
    rewritten in sentence-transformers v6's form ({"pooling_mode": "mean"}). Returns that folder. Used by
    tests/models/test_embedding_models.py and benchmarks/gpu_session39/st_dense_build.py (the same model on a GPU)."""
    import json
    import pathlib

    import transformers
    from sentence_transformers import SentenceTransformer, models
    root = pathlib.Path(root)
    cfg = transformers.XLMRobertaConfig(vocab_size=104, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                        intermediate_size=128, max_position_embeddings=66, type_vocab_size=1,
                                        pad_token_id=1, bos_token_id=0, eos_token_id=2)
    torch.manual_seed(0)
    transformers.XLMRobertaModel(cfg).save_pretrained(root / "hf")
    save_word_tokenizer(root / "hf", "xlm_roberta")
    st = SentenceTransformer(modules=[
        models.Transformer(str(root / "hf")), models.Pooling(64, "mean"),
        models.Dense(64, 32, activation_function=torch.nn.Tanh()),
        models.Dense(32, 16, bias=False, activation_function=torch.nn.Identity()), models.Normalize()], device="cpu")
    path = root / "st"
    st.save(str(path))
    (path / "1_Pooling" / "config.json").write_text(json.dumps(     # version 6's form, whatever version saved it
        {"embedding_dimension": 64, "pooling_mode": "mean", "include_prompt": True}))
    return path
