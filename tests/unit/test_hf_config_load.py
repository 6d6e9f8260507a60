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
