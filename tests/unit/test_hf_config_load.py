"""Loading a checkpoint's HF config (model/hf_configs.load_hf_config): the same config as transformers' AutoConfig,
without transformers generating the config class's docstring while it loads (on transformers 5.17 that imported
~1,700 modules, seconds of every engine start), and transformers left as it was afterwards."""
from __future__ import annotations

import importlib
import json
import subprocess
import sys

from transformers import AutoConfig

from pagedllm.model import hf_configs

QWEN2 = {"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"], "hidden_size": 64, "intermediate_size": 128,
         "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 256,
         "max_position_embeddings": 512, "rope_theta": 10000.0, "tie_word_embeddings": True}


def test_config_equals_autoconfig_and_the_docstring_hook_is_restored(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(QWEN2))
    module = importlib.import_module("transformers.utils.auto_docstring")
    before = module.auto_class_docstring
    ours = hf_configs.load_hf_config(str(tmp_path))
    assert module.auto_class_docstring is before
    assert type(ours).__name__ == "Qwen2Config"
    assert ours.to_dict() == AutoConfig.from_pretrained(str(tmp_path)).to_dict()


def test_the_hook_is_bypassed_only_inside_and_restored_on_error():
    module = importlib.import_module("transformers.utils.auto_docstring")
    before = module.auto_class_docstring

    class Probe:
        """unchanged"""
    try:
        with hf_configs._config_docstrings_not_generated():
            assert module.auto_class_docstring(Probe, checkpoint="x") is Probe
            assert Probe.__doc__ == "unchanged"
            raise KeyError("boom")
    except KeyError:
        pass
    assert module.auto_class_docstring is before


def test_a_fresh_process_loads_a_qwen2_config_without_the_model_mappings(tmp_path):
    """What the engine process does at start: the auto *model* mappings (and what they pull in) stay unimported."""
    (tmp_path / "config.json").write_text(json.dumps(QWEN2))
    code = ("import sys; from pagedllm.model.hf_configs import load_hf_config; "
            f"c = load_hf_config({str(tmp_path)!r}); "
            "print(c.num_key_value_heads, 'transformers.models.auto.modeling_auto' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["2", "False"]


def test_hf_config_path_config_format_and_model_impl(tiny_llama_dir, tmp_path):
    """vLLM's hf_config_path: the model's weights under another folder's config.json (here one that sets a shorter
    max_position_embeddings, which max_model_len follows); config_format / model_impl take the values that mean
    what pagedllm does, and the others are errors that say why."""
    import argparse

    import pytest

    from pagedllm import LLM
    from pagedllm.config import EngineArgs
    config = json.loads((__import__("pathlib").Path(tiny_llama_dir) / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps(dict(config, max_position_embeddings=48)))
    kw = dict(skip_tokenizer_init=True, dtype="float32", kv_cache_memory_gb=0.01)
    assert LLM(tiny_llama_dir, **kw).llm_engine.model_config.max_model_len == config["max_position_embeddings"]
    llm = LLM(tiny_llama_dir, hf_config_path=str(tmp_path), config_format="hf", model_impl="vllm", **kw)
    assert llm.llm_engine.model_config.max_model_len == 48
    with pytest.raises(ValueError, match="hf_config_path='.*empty.*': no config.json"):
        (tmp_path / "empty").mkdir()
        LLM(tiny_llama_dir, hf_config_path=str(tmp_path / "empty"), **kw)
    with pytest.raises(ValueError, match="config_format='mistral' is not supported"):
        LLM(tiny_llama_dir, config_format="mistral", **kw)
    with pytest.raises(ValueError, match="model_impl='transformers' .* is not supported"):
        LLM(tiny_llama_dir, model_impl="transformers", **kw)
    parser = EngineArgs.add_cli_args(argparse.ArgumentParser())
    args = EngineArgs.from_cli_args(parser.parse_args(["--hf-config-path", "x", "--config-format", "hf",
                                                       "--model-impl", "vllm"]))
    assert (args.hf_config_path, args.config_format, args.model_impl) == ("x", "hf", "vllm")
