"""Session 33: the API server's engine build (AsyncLLMEngine with an engine-core process, as `pagedllm serve`
builds it), timed from its start and from the core's answer to its end: what the server still does after the core is
ready. ``python frontend_ready.py early|late [model]``: ``late`` stubs EarlyTokenizers.load (the tokenizers then load
after the core's answer, as before session 33). Fork start (the CPU default); OMP_NUM_THREADS=1."""
import sys
import time

from pagedllm.config import EngineArgs
from pagedllm.engine import async_engine, core_client
from pagedllm.engine.input_processor import EarlyTokenizers

mode = sys.argv[1]
model = sys.argv[2] if len(sys.argv) > 2 else "HuggingFaceTB/SmolLM2-135M-Instruct"
if mode == "late":
    EarlyTokenizers.load = lambda self, core_answered: None
answered = {}
real_start = core_client.EngineCoreClient.start


def timed_start(self, *a, **k):
    info = real_start(self, *a, **k)
    answered["t"] = time.perf_counter()
    return info


core_client.EngineCoreClient.start = timed_start
t0 = time.perf_counter()
engine = async_engine.AsyncLLMEngine(EngineArgs(model=model, max_model_len=512, kv_cache_memory_gb=0.1),
                                     engine_process=True, log_requests=False)
t1 = time.perf_counter()
print(f"{mode}: engine built in {t1 - t0:.3f} s, {t1 - answered['t']:.3f} s of it after the core's answer", flush=True)
engine.shutdown()
