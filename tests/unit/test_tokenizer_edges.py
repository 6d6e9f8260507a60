"""Tokenizer edges a vLLM user meets: a tokenizer folder or generation config that does not fit the model's vocabulary
(added tokens the embedding lacks, an EOS id past it), on a tiny random Llama with the SmolLM2 tokenizer."""
from __future__ import annotations

import copy
import json
import shutil


def test_bad_word_outside_the_models_vocabulary_is_a_400_and_the_server_lives(tiny_llama_dir, tokenizer, tmp_path):
    """A bad word whose token the model's embedding lacks (--tokenizer with an added token) is vLLM's ValueError
    naming the vocabulary size: a 400, and the next request runs. Before, the sampler's step indexed past the logits
    (IndexError) and the engine died: 503 for that request and every later one."""
    from app_client import post_all, serve_in_process
    tok = copy.deepcopy(tokenizer)
    tok.add_tokens(["<extra>"], special_tokens=True)
    tok.save_pretrained(tmp_path)
    with serve_in_process(tiny_llama_dir, "--tokenizer", str(tmp_path)) as (app, _):
        bad, after = post_all(app, [("/v1/completions", {"prompt": "Hello", "max_tokens": 2, "bad_words": ["<extra>"]}),
                                    ("/v1/completions", {"prompt": "Hello", "max_tokens": 2})])
    assert bad.status_code == 400, bad.text
    assert bad.json()["error"]["message"] == (
        f"The model vocabulary size is {len(tokenizer)}, but the following tokens were specified as bad: "
        f"[{len(tokenizer)}]. All token id values should be integers satisfying: "
        f"0 <= token_id <= {len(tokenizer) - 1}.")
    assert after.status_code == 200 and after.json()["usage"]["completion_tokens"] == 2


def test_generation_config_eos_id_past_the_vocabulary_does_not_kill_the_engine(tiny_llama_dir, tokenizer, tmp_path):
    """A generation_config.json EOS id the model's vocabulary lacks stops nothing and min_tokens runs; before, the
    min_tokens mask indexed past the logits and the step's IndexError took the engine down."""
    from pagedllm import LLM, SamplingParams
    shutil.copytree(tiny_llama_dir, tmp_path / "m")
    with open(tmp_path / "m" / "generation_config.json", "w") as f:
        json.dump({"eos_token_id": [2, len(tokenizer) + 100]}, f)
    llm = LLM(model=str(tmp_path / "m"), max_model_len=64, kv_cache_memory_gb=0.01)
    out = llm.generate("Hello", SamplingParams(temperature=0.0, max_tokens=3, min_tokens=2, ignore_eos=False),
                       use_tqdm=False)[0].outputs[0]
    assert len(out.token_ids) >= 2 and 2 not in out.token_ids[:2]
