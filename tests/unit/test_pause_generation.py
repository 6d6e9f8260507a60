"""``AsyncLLMEngine.pause_generation`` / ``resume_generation`` / ``is_paused``: vLLM's pause around a weight update
(an RL trainer pauses, loads new weights through collective_rpc, resumes). Requests in flight are aborted (mode
"abort", finish_reason "abort"), finished first ("wait") or frozen and continued after the resume ("keep", the same
tokens as an unpaused run); requests that arrive while paused start after the resume. Tiny random Llama on the CPU."""
from __future__ import annotations

import asyncio

import pytest
import torch

from pagedllm import AsyncEngineArgs, AsyncLLMEngine, SamplingParams

torch.set_num_threads(1)

PROMPT = {"prompt_token_ids": [5, 17, 300, 42, 7]}
LONG = SamplingParams(temperature=0.0, max_tokens=300, ignore_eos=True)
SHORT = SamplingParams(temperature=0.0, max_tokens=4, ignore_eos=True)


@pytest.fixture(scope="module")
def engine(tiny_llama_dir):
    engine = AsyncLLMEngine.from_engine_args(AsyncEngineArgs(model=tiny_llama_dir, max_model_len=512,
                                                             kv_cache_memory_gb=0.02), log_requests=False)
    yield engine
    engine.shutdown()


def start(engine, request_id: str, params: SamplingParams) -> tuple[asyncio.Task, list]:
    """A task reading the request's outputs into the list it returns."""
    seen: list = []

    async def consume():
        async for out in engine.generate(PROMPT, params, request_id):
            seen.append(out)
    return asyncio.create_task(consume()), seen


async def until(condition, timeout: float = 30.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.005)


def tokens(seen: list) -> list[int]:
    return list(seen[-1].outputs[0].token_ids) if seen else []


def test_keep_freezes_and_resume_continues(engine):
    async def main():
        ref_task, ref = start(engine, "reference", LONG)
        await ref_task
        task, seen = start(engine, "kept", LONG)
        await until(lambda: seen)
        assert await engine.is_paused() is False
        await engine.pause_generation(mode="keep")          # clear_cache: the kept request's KV is recomputed
        assert await engine.is_paused() is True
        await asyncio.sleep(0.1)
        frozen = len(tokens(seen))
        late_task, late = start(engine, "late", SHORT)
        await asyncio.sleep(0.3)
        assert len(tokens(seen)) == frozen < LONG.max_tokens and not late      # nothing scheduled while paused
        await engine.resume_generation()
        assert await engine.is_paused() is False
        await asyncio.wait_for(asyncio.gather(task, late_task), 60)
        return tokens(ref), seen[-1], late[-1]

    ref, kept, late = asyncio.run(main())
    assert list(kept.outputs[0].token_ids) == ref and kept.outputs[0].finish_reason == "length"
    assert list(late.outputs[0].token_ids) == ref[:SHORT.max_tokens]


def test_abort_ends_requests_in_flight(engine):
    async def main():
        task, seen = start(engine, "aborted", LONG)
        await until(lambda: seen)
        await engine.pause_generation()                     # mode="abort"
        await asyncio.wait_for(task, 10)
        late_task, late = start(engine, "after-abort", SHORT)
        await asyncio.sleep(0.2)
        assert not late
        await engine.resume_generation()
        await asyncio.wait_for(late_task, 30)
        return seen[-1], late[-1]

    aborted, late = asyncio.run(main())
    assert aborted.finished and aborted.outputs[0].finish_reason == "abort"
    assert len(aborted.outputs[0].token_ids) < LONG.max_tokens
    assert late.outputs[0].finish_reason == "length" and len(late.outputs[0].token_ids) == SHORT.max_tokens


def test_wait_lets_requests_in_flight_finish(engine):
    params = SamplingParams(temperature=0.0, max_tokens=40, ignore_eos=True)

    async def main():
        task, seen = start(engine, "waited", params)
        await until(lambda: seen)
        with pytest.warns(DeprecationWarning, match="wait_for_inflight_requests"):
            await engine.pause_generation(wait_for_inflight_requests=True)     # vLLM's older mode="wait"
        await asyncio.wait_for(task, 10)
        done = seen[-1]
        late_task, late = start(engine, "after-wait", SHORT)
        await asyncio.sleep(0.2)
        assert not late and await engine.is_paused()
        await engine.resume_generation()
        await asyncio.wait_for(late_task, 30)
        return done, late[-1]

    done, late = asyncio.run(main())
    assert done.outputs[0].finish_reason == "length" and len(done.outputs[0].token_ids) == 40
    assert len(late.outputs[0].token_ids) == SHORT.max_tokens


def test_bad_mode(engine):
    with pytest.raises(ValueError, match="mode='later': pause_generation's mode is one of abort, wait, keep"):
        asyncio.run(engine.pause_generation(mode="later"))
