"""vLLM's weight-reading options: safetensors_load_strategy (lazy memory maps, eager whole-file reads) and
pt_load_map_location (torch.load's map_location for *.bin / *.pt checkpoints)."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from pagedllm import LLM, SamplingParams
from pagedllm.model.weight_files import iterate_pt, iterate_safetensors

GREEDY = SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from tiny_models import save_tiny_llama
    path = tmp_path_factory.mktemp("tiny_llama_loading")
    save_tiny_llama(path, 128, initializer_range=0.2)
    return path


def test_eager_and_lazy_safetensors_give_the_same_tensors_and_tokens(model_dir):
    lazy = dict(iterate_safetensors(str(model_dir), strategy="lazy"))
    eager = dict(iterate_safetensors(str(model_dir), strategy="eager", skip_prefixes=("model.layers.1.",)))
    assert set(eager) == {n for n in lazy if not n.startswith("model.layers.1.")}
    assert all(torch.equal(eager[n], lazy[n]) for n in eager)
    outs = [LLM(str(model_dir), skip_tokenizer_init=True, dtype="float32", safetensors_load_strategy=s)
            .generate({"prompt_token_ids": [3, 4, 5]}, GREEDY, use_tqdm=False)[0].outputs[0].token_ids
            for s in ("lazy", "eager")]
    assert outs[0] == outs[1]
    with pytest.raises(ValueError, match="safetensors_load_strategy must be one of"):
        LLM(str(model_dir), skip_tokenizer_init=True, safetensors_load_strategy="torchao")


def test_pt_checkpoint_honours_map_location(model_dir, tmp_path):
    import shutil
    shutil.copy(model_dir / "config.json", tmp_path / "config.json")
    torch.save(load_file(str(model_dir / "model.safetensors")), tmp_path / "pytorch_model.bin")
    # map_location reaches torch.load: "meta" gives shape-only tensors, a dict remaps the saved device.
    assert {t.device.type for _, t in iterate_pt(str(tmp_path), map_location="meta")} == {"meta"}
    assert {t.device.type for _, t in iterate_pt(str(tmp_path), map_location={"cpu": "meta"})} == {"meta"}
    by_pt = LLM(str(tmp_path), skip_tokenizer_init=True, dtype="float32", load_format="pt",
                pt_load_map_location={"cuda:0": "cpu"})
    by_st = LLM(str(model_dir), skip_tokenizer_init=True, dtype="float32")
    assert [o.outputs[0].token_ids for o in by_pt.generate({"prompt_token_ids": [3, 4, 5]}, GREEDY, use_tqdm=False)] \
        == [o.outputs[0].token_ids for o in by_st.generate({"prompt_token_ids": [3, 4, 5]}, GREEDY, use_tqdm=False)]
