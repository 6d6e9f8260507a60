"""Custom logits processors (vLLM v1's ``logits_processors`` engine argument, ``extra_args`` / ``vllm_xargs``):
the persistent-batch bookkeeping they rely on, their effect on tokens offline and served, and their errors."""
from __future__ import annotations

import random

import pytest

import logits_processor_examples as ex
from pagedllm import LLM, SamplingParams
from pagedllm.model.layers.logits_processors import MoveDirectionality, PersistentBatch
from pagedllm.v1.sample.logits_processor.builtin import process_dict_updates

VOCAB = 256


def test_persistent_batch_indices_follow_every_request():
    """Random steps of requests joining, leaving and skipping steps: a processor that replays each BatchUpdate
    (removed, added, moved, in that order) always knows which request each row is, and the batch stays dense."""
    class Row:
        def __init__(self, rid):
            self.req_id, self.token_ids, self.num_prompt_tokens = rid, [1, 2, 3], 2
            self.sampling_params, self.prompt_ids_known = SamplingParams(), True

    rng = random.Random(0)
    batch, mirror, helper_state = PersistentBatch(), {}, {}
    pool = [Row(f"r{i}") for i in range(12)]
    moves = 0
    for _ in range(200):
        rows = rng.sample(pool, rng.randint(0, len(pool)))
        update, order = batch.update(rows)
        if update is not None:
            for index in update.removed:
                mirror.pop(index)
            for index, params, prompt, output in update.added:
                mirror[index] = next(r.req_id for r in pool if r.sampling_params is params)
                assert prompt == [1, 2] and list(output) == [3]
                assert (len(output), output[0], output[-1], output[:1]) == (1, 3, 3, [3])
                with pytest.raises(IndexError):
                    output[1]
            for a, b, direction in update.moved:
                assert direction is MoveDirectionality.UNIDIRECTIONAL
                mirror[b] = mirror.pop(a)
                moves += 1
            assert update.batch_size == len(rows)
            assert not set(update.removed) & {a[0] for a in update.added}    # a reused index is an add only
        # vLLM's helper replays the same updates in its own order (adds, then removals, then moves).
        process_dict_updates(helper_state, update,
                             lambda params, _, __: next(r.req_id for r in pool if r.sampling_params is params))
        assert sorted(mirror) == list(range(len(rows)))          # dense indices 0 .. n-1
        assert {i: rows[order[i]].req_id for i in range(len(rows))} == mirror == helper_state
    assert moves > 0


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from tiny_models import save_tiny_llama
    path = tmp_path_factory.mktemp("tiny_llama_lp")
    save_tiny_llama(path, VOCAB, initializer_range=0.2)
    return str(path)


PROMPTS = [[5, 6, 7, 8], [9, 10, 11], [12, 13, 14, 15, 16], [20, 21], [30, 31, 32]]


def _greedy(max_tokens=8, **kwargs):
    return SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True, **kwargs)


def _ids(outs):
    return [list(o.outputs[0].token_ids) for o in outs]


def test_processors_change_only_the_requests_that_ask(model_dir):
    # async_scheduling: the processors must see each output token before the next step (so no async sampling).
    llm = LLM(model_dir, skip_tokenizer_init=True, dtype="float32", max_num_batched_tokens=8, async_scheduling=True,
              logits_processors=[ex.TargetToken, "logits_processor_examples.BanAfter",
                                 "logits_processor_examples:NoPromptTokens"])
    plain = _ids(llm.generate([{"prompt_token_ids": p} for p in PROMPTS], _greedy(), use_tqdm=False))
    banned = plain[3][2]
    params = [_greedy(extra_args={"target_token": 42}),
              _greedy(3),                                      # ends early: the batch condenses around it
              _greedy(6, extra_args={"target_token": 7}),
              _greedy(extra_args={"ban_after": [2, banned]}),
              _greedy(extra_args={"no_prompt_tokens": True})]
    got = _ids(llm.generate([{"prompt_token_ids": p} for p in PROMPTS], params, use_tqdm=False))
    assert got[0] == [42] * 8 and got[2] == [7] * 6
    assert got[1] == plain[1][:3]
    assert got[3][:2] == plain[3][:2] and banned not in got[3][2:]
    assert not set(got[4]) & set(PROMPTS[4])
    # Plain requests in the same engine afterwards: untouched.
    assert _ids(llm.generate([{"prompt_token_ids": p} for p in PROMPTS], _greedy(), use_tqdm=False)) == plain


def test_vllms_example_processor_as_written(model_dir):
    """vLLM's custom.py example (process_dict_updates, VllmConfig): half the requests forced to their target."""
    llm = LLM(model_dir, skip_tokenizer_init=True, dtype="float32", logits_processors=[ex.DummyLogitsProcessor])
    # target_token 0 is a state like any other (vLLM's helper keeps every state but None)
    params = [_greedy(6, extra_args={"target_token": 128 % VOCAB}), _greedy(6),
              _greedy(6, extra_args={"target_token": 67}), _greedy(6), _greedy(6, extra_args={"target_token": 0})]
    got = _ids(llm.generate([{"prompt_token_ids": p} for p in PROMPTS], params, use_tqdm=False))
    plain = _ids(llm.generate([{"prompt_token_ids": p} for p in PROMPTS], _greedy(6), use_tqdm=False))
    assert got[0] == [128 % VOCAB] * 6 and got[2] == [67] * 6 and got[4] == [0] * 6
    assert (got[1], got[3]) == (plain[1], plain[3])


def test_argmax_invariant_processors_run_for_random_rows_only(model_dir):
    ex.CountCalls.rows_seen = 0
    llm = LLM(model_dir, skip_tokenizer_init=True, dtype="float32", logits_processors=[ex.CountCalls])
    llm.generate([{"prompt_token_ids": p} for p in PROMPTS], _greedy(4), use_tqdm=False)
    assert ex.CountCalls.rows_seen == 0
    llm.generate([{"prompt_token_ids": PROMPTS[0]}], SamplingParams(temperature=0.8, seed=1, max_tokens=4),
                 use_tqdm=False)
    assert ex.CountCalls.rows_seen == 4


def test_errors(model_dir):
    with pytest.raises(ValueError, match="not a subclass of LogitsProcessor"):
        LLM(model_dir, skip_tokenizer_init=True, dtype="float32", logits_processors=[dict])
    with pytest.raises(ValueError, match="could not be loaded"):
        LLM(model_dir, skip_tokenizer_init=True, dtype="float32", logits_processors=["no_such_module.Proc"])
    with pytest.raises(ValueError, match="not supported when speculative decoding is enabled"):
        LLM(model_dir, skip_tokenizer_init=True, dtype="float32", logits_processors=[ex.TargetToken],
            speculative_config={"method": "ngram", "num_speculative_tokens": 2, "prompt_lookup_max": 2})
    with pytest.raises(ValueError, match="AdapterLogitsProcessor"):
        SamplingParams(logits_processors=[lambda ids, row: row])
    plain = LLM(model_dir, skip_tokenizer_init=True, dtype="float32")
    with pytest.raises(ValueError, match="extra_args .* are read by custom logits processors"):
        plain.generate({"prompt_token_ids": [1, 2]}, _greedy(extra_args={"target_token": 3}), use_tqdm=False)
    llm = LLM(model_dir, skip_tokenizer_init=True, dtype="float32", logits_processors=[ex.TargetToken])
    with pytest.raises(ValueError, match="target_token must be an int"):      # the class's validate_params
        llm.generate({"prompt_token_ids": [1, 2]}, _greedy(extra_args={"target_token": "x"}), use_tqdm=False)
    assert _ids(llm.generate({"prompt_token_ids": [1, 2]}, _greedy(3, extra_args={"target_token": 9}),
                             use_tqdm=False)) == [[9, 9, 9]]


def test_served_with_vllm_xargs(tiny_llama_dir):
    from app_client import post_all, serve_in_process
    body = {"prompt": "Hello there", "max_tokens": 4, "temperature": 0, "ignore_eos": True, "return_token_ids": True}
    with serve_in_process(tiny_llama_dir, "--logits-processors", "logits_processor_examples.TargetToken") as (app, _):
        forced, bad, chat = post_all(app, [
            ("/v1/completions", {**body, "vllm_xargs": {"target_token": 17}}),
            ("/v1/completions", {**body, "vllm_xargs": {"target_token": "x"}}),
            ("/v1/chat/completions", {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3,
                                      "temperature": 0, "ignore_eos": True, "vllm_xargs": {"target_token": 17},
                                      "return_token_ids": True}),
        ])
    assert forced.status_code == 200 and forced.json()["choices"][0]["token_ids"] == [17] * 4
    assert bad.status_code == 400 and "target_token must be an int" in bad.json()["error"]["message"]
    assert chat.status_code == 200 and chat.json()["choices"][0]["token_ids"] == [17] * 3
