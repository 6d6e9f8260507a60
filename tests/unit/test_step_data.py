"""The engine -> worker hand-off is data: the scheduler's diffs (pagedllm/step_data.py) are enough for a worker that
has never seen the engine's Request objects, and a running request's diff stays small whatever its context."""
from __future__ import annotations

import pickle
import re

import pytest
import torch

from pagedllm import LLM, SamplingParams, StructuredOutputsParams
from pagedllm.engine.kv_cache import KVCacheManager
from pagedllm.engine.request import Request
from pagedllm.engine.scheduler import Scheduler
from pagedllm.step_data import ModelRunnerOutput
from pagedllm.worker.model_runner import ModelRunner
from tiny_models import save_tiny_llama

BS = 4


def make_request(rid, prompt, **kw):
    return Request(rid, prompt, SamplingParams(max_tokens=kw.pop("max_tokens", 50), **kw), eos_token_ids={0})


def run_step(sched, token=7):
    out = sched.schedule()
    sampled = {rid: token for rid in out.num_scheduled_tokens if rid not in out.partial_req_ids}
    sched.update_from_output(out, ModelRunnerOutput(sampled=sampled))
    return out


def test_diffs_new_then_cached_then_finished():
    sched = Scheduler(KVCacheManager(16, BS), max_num_seqs=8, max_num_batched_tokens=64, max_model_len=256)
    a = make_request("a", [1, 2, 3, 4, 5])             # 5 tokens: 2 blocks
    sched.add_request(a)
    out = run_step(sched)
    assert [n.req_id for n in out.new_requests] == ["a"] and out.new_block_ids == {} and out.resumed_requests == {}
    new = out.new_requests[0]
    assert new.prompt_token_ids == [1, 2, 3, 4, 5] and new.block_ids == a.block_ids and new.num_computed_tokens == 0
    assert out.num_scheduled_tokens == {"a": 5} and out.partial_req_ids == set()
    out = run_step(sched)                              # token 6 of 8 in block 2: no new block
    assert out.new_requests == [] and out.num_scheduled_tokens == {"a": 1}   # a running request: its id, 1 token
    assert out.new_block_ids == {} and out.resumed_requests == {}
    run_step(sched)
    run_step(sched)                                    # the 9th token opens a 3rd block
    out = run_step(sched)
    assert out.new_block_ids == {"a": [a.block_ids[2]]}
    sched.finish_requests(["a"], type(a.status).FINISHED_ABORTED)
    out = sched.schedule()                             # nothing to run, but the workers must drop "a"
    assert out.is_empty and out.finished_req_ids == {"a"}
    assert sched.schedule().finished_req_ids == set()  # said once


def test_resumed_request_resends_its_block_table_and_token_count():
    sched = Scheduler(KVCacheManager(4, BS), max_num_seqs=8, max_num_batched_tokens=64, max_model_len=256)
    a, b = make_request("a", list(range(1, 9))), make_request("b", list(range(20, 28)))
    sched.add_request(a)
    sched.add_request(b)
    run_step(sched)                                    # 4 blocks used, 9 tokens each
    out = run_step(sched)                              # b is preempted to give a its 3rd block
    assert out.preempted_req_ids == {"b"}
    sched.finish_requests(["a"], type(a.status).FINISHED_STOPPED)
    out = run_step(sched)
    assert out.new_requests == [] and list(out.num_scheduled_tokens) == ["b"]
    resumed = out.resumed_requests["b"]
    assert resumed.num_tokens == 9
    assert resumed.block_ids == b.block_ids            # the whole new table
    assert resumed.num_computed_tokens == 4            # its first block hit the prefix cache


@pytest.fixture(scope="module")
def model_dir(tokenizer, tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny_llama_step_data")
    save_tiny_llama(path, len(tokenizer), seed=5, bos_token_id=1, eos_token_id=2)
    tokenizer.save_pretrained(path)
    return str(path)


def test_a_fresh_worker_replays_the_recorded_steps(model_dir):
    """Record every step's SchedulerOutput (pickled, as a broadcast to another rank would carry it) and what the
    worker sampled, in a run with chunked prefill, a preemption, seeded n > 1 sampling, penalties and a
    constrained request (its GrammarOutput, handed to ``finish`` after the launch, pickled too); a second
    ModelRunner, built from the config alone, replays the pickled steps and samples the same tokens."""
    llm = LLM(model_dir, dtype="float32", seed=0, max_model_len=64, max_num_batched_tokens=24, block_size=4,
              num_gpu_blocks_override=18, enable_prefix_caching=False)
    engine = llm.llm_engine
    runner = engine.runner
    recorded: list[tuple[bytes, bytes | None, dict | None]] = []
    launch, finish = runner.launch, runner.finish

    def record_launch(sched):
        recorded.append((pickle.dumps(sched), None, None))
        return launch(sched)

    def record_finish(step, grammar=None):
        result = finish(step, grammar=grammar)
        recorded[-1] = (recorded[-1][0], pickle.dumps(grammar), dict(result.sampled))
        return result
    runner.launch, runner.finish = record_launch, record_finish
    prompts = ["The capital of France is", "Once upon a time, in a small village far away, there lived",
               "1, 2, 3, 4,", "def fibonacci(n):", "A code:"]
    params = [SamplingParams(temperature=0, max_tokens=20, ignore_eos=True),
              SamplingParams(temperature=0.9, n=2, seed=11, max_tokens=16, ignore_eos=True),
              SamplingParams(temperature=0.7, seed=3, max_tokens=18, repetition_penalty=1.3, ignore_eos=True),
              SamplingParams(temperature=0, max_tokens=12, min_tokens=6, ignore_eos=False),
              SamplingParams(temperature=0.8, seed=5, max_tokens=12,
                             structured_outputs=StructuredOutputsParams(regex="[A-Z]{3}-[0-9]{4}"))]
    outputs = llm.generate(prompts, params, use_tqdm=False)
    assert re.fullmatch("[A-Z]{3}-[0-9]{4}", outputs[-1].outputs[0].text)
    assert any(pickle.loads(grammar) is not None for _, grammar, _ in recorded)
    assert engine.scheduler.num_preemptions > 0
    assert sum(len(c.token_ids) for o in outputs for c in o.outputs) > 0

    torch.manual_seed(123)        # the replaying worker must not depend on the global random state
    fresh = ModelRunner(engine.config)
    fresh.allocate_kv_cache(engine.core.num_blocks)
    for blob, grammar, sampled in recorded:
        step = fresh.launch(pickle.loads(blob))
        assert fresh.finish(step, grammar=pickle.loads(grammar)).sampled == sampled


def test_a_decode_steps_diff_does_not_grow_with_the_context():
    sizes = {}
    for prompt_len in (8, 200):
        sched = Scheduler(KVCacheManager(256, BS), max_num_seqs=8, max_num_batched_tokens=512, max_model_len=1024)
        for i in range(4):
            sched.add_request(make_request(f"r{i}", list(range(1, prompt_len + 1))))
        first = run_step(sched)
        run_step(sched)
        decode = run_step(sched)
        assert decode.new_requests == [] and decode.total_num_scheduled_tokens == 4
        sizes[prompt_len] = (len(pickle.dumps(first)), len(pickle.dumps(decode)))
    assert sizes[200][0] > sizes[8][0] + 4 * 150        # the prompt travels once, with the new request ...
    assert sizes[200][1] == sizes[8][1]                 # ... and a decode step's diff is the same size after it
