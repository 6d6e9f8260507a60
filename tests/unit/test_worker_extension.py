"""vLLM's ``worker_extension_cls`` with ``collective_rpc``: an RLHF trainer's weight update sent to every worker by
checkpoint name, after which greedy tokens equal HF transformers' with the updated weights (one process, and
tensor parallel over 2 CPU ranks); and the settings' errors."""
from __future__ import annotations

import pytest
import torch

from pagedllm import LLM, SamplingParams
from tiny_models import save_tiny_llama

VOCAB = 256
PROMPTS = [[5, 17, 33, 2 + 7, 101], [9, 9, 48, 200]]
GREEDY = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)


@torch.no_grad()
def _hf_greedy(hf, prompt: list[int], steps: int = 8) -> list[int]:
    ids = list(prompt)
    for _ in range(steps):
        ids.append(int(hf(torch.tensor([ids])).logits[0, -1].argmax()))
    return ids[len(prompt):]


def _tokens(llm: LLM) -> list[list[int]]:
    outs = llm.generate([{"prompt_token_ids": p} for p in PROMPTS], GREEDY, use_tqdm=False)
    return [list(o.outputs[0].token_ids) for o in outs]


@pytest.mark.parametrize("tp,tied", [(1, False), (2, False), (1, True)], ids=["tp1", "tp2", "tied-embeddings"])
def test_collective_rpc_weight_update_through_the_extension(tmp_path, tp, tied):
    hf = save_tiny_llama(tmp_path, VOCAB, tie_word_embeddings=tied)
    llm = LLM(model=str(tmp_path), skip_tokenizer_init=True, dtype="float32", max_model_len=64,
              kv_cache_memory_gb=0.01, tensor_parallel_size=tp,
              worker_extension_cls="rlhf_worker_extension.WeightSync")
    before = _tokens(llm)
    assert before == [_hf_greedy(hf, p) for p in PROMPTS]
    assert llm.collective_rpc("runner_class_name") == ["ModelRunnerWithWeightSync"] * tp     # one reply a rank
    # The trainer's step: new values for a packed (q_proj, into qkv) and a plain (down_proj) weight, and the LM head
    # (or the embedding tied to it): on the CPU the head keeps a oneDNN copy made at the first forward.
    torch.manual_seed(1)
    head = "model.embed_tokens.weight" if tied else "lm_head.weight"
    updated = {"model.layers.0.self_attn.q_proj.weight": torch.randn(64, 64) * 0.5,
               "model.layers.1.mlp.down_proj.weight": torch.randn(64, 128) * 4.0,
               head: torch.randn(VOCAB, 64) * 0.1}
    state = hf.state_dict()
    with torch.no_grad():
        for name, tensor in updated.items():
            state[name].copy_(tensor)
    for name, tensor in updated.items():
        assert llm.collective_rpc("update_weight", args=(name, tensor)) == [None] * tp
    llm.reset_prefix_cache()
    after = _tokens(llm)
    assert after == [_hf_greedy(hf, p) for p in PROMPTS]
    assert after != before                      # the update reached the model


def test_worker_extension_errors(tmp_path):
    save_tiny_llama(tmp_path, VOCAB)

    def build(path):
        return LLM(model=str(tmp_path), skip_tokenizer_init=True, dtype="float32", max_model_len=64,
                   kv_cache_memory_gb=0.01, worker_extension_cls=path)
    with pytest.raises(ValueError, match="worker_extension_cls='rlhf_worker_extension.Clashing' defines get_model, "
                                         "which the worker already has"):
        build("rlhf_worker_extension.Clashing")
    with pytest.raises(ValueError, match="worker_extension_cls='no_such_module_xyz.Ext': No module named 'no_such_module_xyz'"):
        build("no_such_module_xyz.Ext")
    with pytest.raises(ValueError, match="worker_extension_cls='Ext': give its import path, module.name"):
        build("Ext")
    with pytest.raises(ValueError, match="collective_rpc: the worker has no method 'update_weight'"):
        build("").collective_rpc("update_weight", args=("x", torch.zeros(1)))


def test_a_checkpoint_missing_a_weight_is_still_an_error(tmp_path):
    """load_weights takes some tensors only (the update above); a checkpoint must still fill every parameter."""
    from safetensors.torch import load_file, save_file
    save_tiny_llama(tmp_path, VOCAB)
    (shard,) = tmp_path.glob("*.safetensors")
    tensors = load_file(shard)
    del tensors["model.layers.1.mlp.down_proj.weight"]
    save_file(tensors, shard, metadata={"format": "pt"})
    with pytest.raises(ValueError, match="Checkpoint is missing weights for: model.layers.1.mlp.down_proj.weight"):
        LLM(model=str(tmp_path), skip_tokenizer_init=True, dtype="float32", max_model_len=64, kv_cache_memory_gb=0.01)


def test_updating_a_quantized_layer_is_an_error():
    """The bundled GGUF in bfloat16 keeps its int4 blocks in the kernels' layout: a dense tensor loaded into one
    would be garbage, so it is refused by name; a dense layer of the same model (the norms) still updates."""
    llm = LLM(model="HuggingFaceTB/SmolLM2-135M-Instruct", dtype="bfloat16", max_model_len=64,
              kv_cache_memory_gb=0.01, worker_extension_cls="rlhf_worker_extension.WeightSync")
    with pytest.raises(ValueError, match="'model.layers.0.mlp.down_proj.weight' is a weight of a quantized layer"):
        llm.collective_rpc("update_weight", args=("model.layers.0.mlp.down_proj.weight", torch.zeros(576, 1536)))
    assert llm.collective_rpc("update_weight", args=("model.norm.weight", torch.ones(576))) == [None]
