"""µs per call of ``fn()`` after 5 warm-up calls (the session-10 CPU probes' one timer)."""
import time


def us_per_call(fn, n: int = 200) -> float:
    for _ in range(5):
        fn()
    t = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t) / n * 1e6
