"""Session 33: what `pagedllm serve` does between its engine core's answer and serving, timed in the server
process: ``[S33_OFF=...] python server_phases.py [serve flags]`` (S33_OFF as serve_ab.py) prints the seconds of
EngineCoreClient.start (the wait for the core), build_engine, build_app, the freeze before serving, and
"answer->serve" (start's return to the event loop's start), then exits without serving. Port 8134."""
import importlib
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
importlib.import_module("serve_ab")     # applies S33_OFF
from pagedllm.engine import core_client  # noqa: E402
from pagedllm.entrypoints.openai import api_server  # noqa: E402

times: dict[str, float] = {}


def _timed(owner, name: str, label: str) -> None:
    real = getattr(owner, name)

    def timed(*args, **kwargs):
        t = time.perf_counter()
        result = real(*args, **kwargs)
        times[label], times[label + " end"] = time.perf_counter() - t, time.perf_counter()
        return result
    setattr(owner, name, timed)


_timed(core_client.EngineCoreClient, "start", "start")
_timed(api_server, "build_engine", "build_engine")
_timed(api_server, "build_app", "build_app")
_timed(api_server, "freeze_gc_heap", "freeze before serving")


def _report_instead_of_serving(coro) -> None:
    coro.close()
    print({k: round(v, 3) for k, v in times.items() if not k.endswith(" end")},
          "answer->serve", round(time.perf_counter() - times["start end"], 3), flush=True)


api_server.run_event_loop = _report_instead_of_serving
if __name__ == "__main__":
    from pagedllm.entrypoints.cli import main
    sys.argv = ["pagedllm", "serve", "--port", "8134", *sys.argv[1:]]
    main()
