"""AsyncLLMEngine in-process (engine thread mode): concurrent requests share steps, aborts free blocks, a bad request
fails alone, a failing step marks the engine dead. (The engine-process mode runs under every `pagedllm serve` test.)"""
from __future__ import annotations

import asyncio

import pytest

from pagedllm import EngineArgs, RequestOutputKind, SamplingParams
from pagedllm.engine.async_engine import AsyncLLMEngine, EngineDeadError

from server_utils import MAX_MODEL_LEN, MODEL


@pytest.fixture(scope="module")
def engine():
    eng = AsyncLLMEngine(EngineArgs(model=MODEL, max_model_len=MAX_MODEL_LEN, kv_cache_memory_gb=0.1),
                         log_requests=False)
    yield eng
    eng.shutdown()


def greedy(max_tokens: int, kind=RequestOutputKind.DELTA, **kw) -> SamplingParams:
    return SamplingParams(temperature=0.0, max_tokens=max_tokens, output_kind=kind, **kw)


async def collect(engine, prompt, params, rid) -> tuple[str, int]:
    text, n = "", 0
    async for out in engine.generate(prompt, params, rid):
        text += out.outputs[0].text
        n += len(out.outputs[0].token_ids)
    return text, n


def test_concurrent_generate_matches_alone(engine):
    prompts = ["The capital of France is", "One, two, three,", "def fibonacci(n):"]

    async def main():
        alone = [await collect(engine, p, greedy(8), f"alone-{i}") for i, p in enumerate(prompts)]
        together = await asyncio.gather(*[collect(engine, p, greedy(8), f"together-{i}")
                                          for i, p in enumerate(prompts)])
        return alone, together

    alone, together = asyncio.run(main())
    assert together == alone
    assert all(n == 8 for _, n in alone)


def test_output_kinds(engine):
    async def main():
        cumulative = [o async for o in engine.generate("Hello", greedy(5, RequestOutputKind.CUMULATIVE), "c")]
        final = [o async for o in engine.generate("Hello", greedy(5, RequestOutputKind.FINAL_ONLY), "f")]
        return cumulative, final

    cumulative, final = asyncio.run(main())
    assert len(final) == 1 and final[0].finished
    assert cumulative[-1].outputs[0].text == final[0].outputs[0].text
    assert len(cumulative[-1].outputs[0].token_ids) == 5


def test_bad_request_fails_alone(engine):
    async def main():
        good = asyncio.ensure_future(collect(engine, "Good morning", greedy(6), "good"))
        with pytest.raises(ValueError, match="out of vocabulary"):
            await engine.add_request("bad", {"prompt_token_ids": [10 ** 9]}, greedy(4))
        with pytest.raises(ValueError, match="top_p"):
            SamplingParams(top_p=0)
        return await good

    text, n = asyncio.run(main())
    assert n == 6 and text


def test_abort_frees_blocks(engine):
    idle = engine.snapshot.kv_usage

    async def wait_idle():
        for _ in range(200):
            await asyncio.sleep(0.05)
            if engine.snapshot.num_running == 0 and engine.num_in_flight() == 0:
                return

    async def main():
        got = 0
        async for out in engine.generate("Tell me a story.", greedy(300, ignore_eos=True), "long"):
            got += len(out.outputs[0].token_ids)
            if got >= 3:
                break                      # leaving the generator early aborts the request
        await wait_idle()
        assert engine.snapshot.num_running == 0
        stream = await engine.add_request("long2", "Tell me a story.", greedy(300, ignore_eos=True))
        await stream.__anext__()
        stream.abort()                     # a RequestStream used directly is aborted explicitly
        await wait_idle()

    asyncio.run(main())
    assert engine.snapshot.num_running == 0
    assert engine.snapshot.kv_usage == pytest.approx(idle)
    assert engine.engine.kv_cache.num_free_blocks == engine.engine.kv_cache.pool.num_blocks


def test_abort_from_another_task_ends_the_readers_loop(engine):
    """vLLM's AsyncLLM.abort(request_id) called by another task (a cancel endpoint, a watchdog): the reader's
    ``async for`` gets a last output, finished with finish_reason "abort" and the tokens so far, and ends; it used
    to wait forever."""
    async def read(rid, kind):
        outs = []
        async for out in engine.generate("Tell me a story.", greedy(300, kind, ignore_eos=True), rid):
            outs.append(out)
        return outs

    async def main():
        readers = [asyncio.create_task(read(f"cancelled-{kind.name}", kind))
                   for kind in (RequestOutputKind.CUMULATIVE, RequestOutputKind.DELTA)]
        for _ in range(200):
            await asyncio.sleep(0.05)
            if engine.snapshot.num_running == 2:
                break
        await asyncio.sleep(0.3)
        await engine.abort([f"cancelled-{kind.name}" for kind in (RequestOutputKind.CUMULATIVE,
                                                                   RequestOutputKind.DELTA)])
        return await asyncio.wait_for(asyncio.gather(*readers), timeout=30)

    cumulative, delta = asyncio.run(main())
    for outs in (cumulative, delta):
        assert outs[-1].finished and outs[-1].outputs[0].finish_reason == "abort"
        assert not any(o.finished for o in outs[:-1])
    assert 0 < len(cumulative[-1].outputs[0].token_ids) < 300
    assert sum(len(o.outputs[0].token_ids) for o in delta) < 300


def test_step_failure_marks_engine_dead(engine, monkeypatch):
    """Last in this module: it kills the engine."""
    runner = engine.engine.runner

    def broken(*args, **kwargs):
        raise RuntimeError("simulated CUDA error")

    async def main():
        asyncio.get_running_loop()
        await engine.check_health()
        monkeypatch.setattr(runner, "launch", broken)
        with pytest.raises(EngineDeadError, match="simulated CUDA error"):
            await collect(engine, "Hello", greedy(4), "doomed")
        with pytest.raises(EngineDeadError):
            await engine.check_health()
        with pytest.raises(EngineDeadError):
            await engine.add_request("late", "Hello", greedy(2))

    asyncio.run(main())
    assert engine.errored
