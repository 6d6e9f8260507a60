"""Session 33: `pagedllm serve ...` with start-up changes switched off, for A/B starts to /health.
``S33_OFF=tokenizers python serve_ab.py serve [flags]``: EarlyTokenizers.load stubbed (the server loads its tokenizers
after the core's answer, as before). ``S33_OFF=freeze``: the engine core freezes its heap before it answers, as
before. ``S33_OFF=serverfreeze``: the API server collects and freezes its heap only before serving, as before, not
also while the engine core builds. ``S33_OFF=gcpause``: gc_heap.collections_paused, park_start_up_heap and
gc.disable() do nothing (collections run through the imports and the config, as before). Several:
``S33_OFF=tokenizers,freeze``. No S33_OFF: the committed code."""
import os
import sys

off = os.environ.get("S33_OFF", "")
if "tokenizers" in off:
    from pagedllm.engine.input_processor import EarlyTokenizers
    EarlyTokenizers.load = lambda self, core_answered: None
if "freeze" in off:
    # The freeze back before the answer: run when run_engine_core builds its CoreReady (the ready_at stamp is taken
    # just before, so the timeline counts it in the hand-over); the call after the send does nothing.
    from pagedllm.engine import core
    freeze, ready = core.freeze_gc_heap, core.CoreReady

    def _frozen_ready(info):
        freeze("engine core")
        return ready(info)
    core.freeze_gc_heap, core.CoreReady = (lambda process: 0), _frozen_ready
if "gcpause" in off:     # also in a spawned engine process: it runs this file's top level as __mp_main__
    import contextlib
    import gc

    from pagedllm import gc_heap
    gc_heap.collections_paused = contextlib.nullcontext
    gc_heap.park_start_up_heap = lambda: None
    gc.disable = lambda: None
if "serverfreeze" in off:
    from pagedllm.entrypoints.openai import api_server
    _build_engine = api_server.build_engine
    api_server.build_engine = lambda args, prestarted=None, while_building=None: _build_engine(args, prestarted)

if __name__ == "__main__":
    from pagedllm.entrypoints.cli import main
    sys.exit(main())
