"""The engine-core process freezes its start-up heap out of the garbage collector (pagedllm/gc_heap.py); an engine
built inside the caller's process does not freeze the caller's heap."""
import gc
import threading
import weakref

import pytest
import torch

from tiny_models import save_tiny_llama
from pagedllm.config import EngineArgs
from pagedllm.engine.core import run_engine_core
from pagedllm.engine.core_client import _queue_pair
from pagedllm.engine.messages import CoreReady, Shutdown, UtilityCall, UtilityResult


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny_llama")
    save_tiny_llama(path, 128)
    return str(path)


def _build_core(model_dir: str, freeze_heap: bool):
    """Runs run_engine_core as the engine-core process would (in a thread here); returns the core, its thread and
    the front end's end of the transport."""
    torch.set_num_threads(1)
    front, core_end = _queue_pair()
    built = {}
    args = EngineArgs(model=model_dir, skip_tokenizer_init=True, dtype="float32", max_model_len=64,
                      kv_cache_memory_gb=0.002)
    thread = threading.Thread(target=run_engine_core, args=(args, core_end),
                              kwargs=dict(freeze_heap=freeze_heap, on_built=lambda core: built.setdefault("core", core)),
                              daemon=True)
    thread.start()
    msg = front.recv()
    assert isinstance(msg, CoreReady), msg
    front.send(UtilityCall(0, "is_sleeping"))     # answered in the core's loop: after the freeze that follows CoreReady
    answer = front.recv()
    assert isinstance(answer, UtilityResult) and answer.value is False, answer
    return built["core"], thread, front


def _stop(thread, front):
    front.send(Shutdown())
    thread.join(30)
    assert not thread.is_alive()


def test_engine_core_process_freezes_its_kv_blocks_out_of_the_collector(model_dir):
    gc.unfreeze()
    try:
        core, thread, front = _build_core(model_dir, freeze_heap=True)
        try:
            blocks = core.kv_cache.pool.blocks
            assert len(blocks) >= 100
            assert gc.get_freeze_count() >= len(blocks)
            tracked = {id(o) for o in gc.get_objects()}          # generations 0-2: what a collection walks
            assert id(blocks[0]) not in tracked and id(blocks[-1]) not in tracked
        finally:
            _stop(thread, front)
    finally:
        gc.unfreeze()        # give the test process's heap back to the collector


class _Node:
    pass


def test_engine_core_process_collects_again_once_built(model_dir):
    """Its imports and config run without collections and what they made is parked, frozen as it is
    (gc_heap.park_start_up_heap); once the core has answered, the collector is on and the parked garbage was
    collected by the freeze."""
    gc.unfreeze()
    gc.disable()             # the cycle below cannot be collected before run_engine_core parks it
    node = _Node()
    node.self = node
    parked_garbage = weakref.ref(node)
    del node
    try:
        core, thread, front = _build_core(model_dir, freeze_heap=True)
        try:
            assert gc.isenabled()
            assert parked_garbage() is None
        finally:
            _stop(thread, front)
    finally:
        gc.enable()
        gc.unfreeze()


def test_engine_built_in_the_callers_process_leaves_its_heap_alone(model_dir):
    gc.unfreeze()
    core, thread, front = _build_core(model_dir, freeze_heap=False)
    try:
        assert gc.get_freeze_count() == 0
        assert id(core.kv_cache.pool.blocks[0]) in {id(o) for o in gc.get_objects()}
    finally:
        _stop(thread, front)
