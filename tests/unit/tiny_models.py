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
