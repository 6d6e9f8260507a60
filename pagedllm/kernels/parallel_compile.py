"""Build the Triton kernel variants of a warm-up on a thread pool instead of one after the other (cold start).

On a cold Triton cache the start-up builds ~14 variants one at a time inside the warm-up forwards: 6.5 s of a 26.6 s
cold start on the H200 host (docs/perf.md, session 9). On the 2-core CPU VM two threads compiled our kernels for
sm_90 1.4x faster than one (~60% of a compile runs without the GIL: ptxas, parts of the MLIR pipeline), so 14
threads should take those 6.5 s to ~2.8 s.

``compile_ahead(warm_up, workers)`` runs ``warm_up`` once "dry": Triton calls its ``jit_cache_hook`` before building
any variant not in its cache; the hook here records the variant's specialisation data and answers True, which makes
the launch return without building or running it (that kernel's outputs keep whatever their buffers held: the
warm-up must read nothing back that steers the host -- ours are forwards over host-made inputs). Then every recorded
variant is built with ``JITFunction.preload`` under Triton's ``AsyncCompileMode`` on a thread pool, which also puts
them in the in-process cache, and the caller runs the real warm-up, which finds them all built.

On by default on the GPU with up to 16 threads (``PAGEDLLM_COMPILE_THREADS``; 0 = one by one). Measured on the H200
(docs/perf.md, session 10): cold ``serve`` 7B to /health 14.9 / 16.8 s with 16 threads against 18.0 / 22.4 s one by
one (memory profile + warm-up 4.6 / 5.5 s against 7.0 / 8.1 s); tests/gpu/test_parallel_compile.py passed there.

Two more costs of a cold start sat on its critical path, one after the other (py-spy of a cold 7B ``serve`` on an
H100, docs/perf.md session 27), and are taken off it too unless ``PAGEDLLM_TRITON_PREP=0``:

- Each kernel's C launcher: Triton builds it with gcc at the kernel's first launch (``CompiledKernel._init_handles``),
  ~0.25 s each, 1.6 s in all inside the real warm-up. Here each built variant's launcher is built on the pool as soon
  as the variant is (gcc caches it in the Triton cache by its source), so the first launches only load it.
- Triton's source hash (``triton_key``: every compile's cache key hashes Triton's compiler sources and libtriton,
  0.6 s) and its CUDA helper module (``CudaUtils``, another gcc build, 0.3 s), paid by the first compile and the first
  launch: ``prepare_triton_in_background`` starts both on a thread when the engine begins reading its config
  (transformers, 2-3 s); hashing, file reads and gcc hold no GIL.

Queuing each variant as the dry pass meets it, instead of after it, was tried (session 28, H100): /health 17.2-19.6 s
against 16.6-17.1 s, the dry pass 1.6-2.0 -> 4.4-4.8 s (the builds' threads slow the pass that feeds them); removed.
"""
from __future__ import annotations

import contextlib
import logging
import threading
import time
from typing import Callable, Iterator

logger = logging.getLogger(__name__)

_prep: threading.Thread | None = None


def prepare_triton_in_background() -> None:
    """Start (once per process) the Triton set-up that needs no GPU: import it, hash its sources, build its CUDA
    helper module. Best effort: a failure here is met again, and reported, where Triton is first used."""
    global _prep
    from pagedllm import envs
    if _prep is not None or not envs.PAGEDLLM_TRITON_PREP:
        return
    _prep = threading.Thread(target=_prepare_triton, name="pagedllm-triton-prep", daemon=True)
    _prep.start()


def _prepare_triton() -> None:
    try:
        from triton.runtime.cache import triton_key
        triton_key()                   # lru-cached: the first compile's get_cache_key finds it
        from triton.backends.nvidia.driver import CudaUtils
        CudaUtils()                    # gcc-built into the Triton cache; the driver's own CudaUtils() loads it
    except Exception as e:  # noqa: BLE001 - an optimisation only
        logger.debug("Preparing Triton ahead failed (it is done where Triton is first used): %r", e)


def wait_for_triton_prep() -> None:
    """Before the first Triton launch: let the preparation finish rather than repeat it."""
    if _prep is not None:
        _prep.join(timeout=120)


class _LauncherBuilds:
    """Each compiled variant's C launcher built on the pool right after the variant (one per distinct signature)."""

    def __init__(self, pool):
        self.pool = pool
        self.cond = threading.Condition()
        self.pending = 0            # compiles whose done-callback has not run yet
        self.builds: dict = {}      # launcher key -> its build's future

    def after(self, future_kernel) -> None:
        future = getattr(future_kernel, "future", None)      # triton's FutureKernel under AsyncCompileMode
        if future is None:
            return
        with self.cond:
            self.pending += 1
        future.add_done_callback(self._compiled)

    def _compiled(self, future) -> None:
        try:
            if not future.cancelled() and future.exception() is None:
                kernel = future.result()
                src = kernel.src
                # What a launcher's C source depends on (triton's make_launcher): the signature, the constants and
                # the tensor descriptors; a repeat would only build the same file again.
                key = (repr(sorted(src.signature.items())), repr(sorted(getattr(src, "constants", {}).items())),
                       repr(getattr(kernel.metadata, "tensordesc_meta", None)))
                with self.cond:
                    if key not in self.builds:
                        self.builds[key] = self.pool.submit(_build_launcher, kernel)
        except RuntimeError:       # the pool shut down early (a build raised): the first launch builds it
            pass
        finally:
            with self.cond:
                self.pending -= 1
                self.cond.notify_all()

    def wait(self) -> int:
        """Wait for every launcher build (a set_result notifies waiters before it runs the callbacks, so first wait
        for the callbacks themselves); returns how many were built."""
        with self.cond:
            self.cond.wait_for(lambda: self.pending == 0)
        for build in self.builds.values():
            build.exception()      # a failed build is left to the first launch, which raises it there
        return len(self.builds)


def _build_launcher(kernel) -> None:
    from triton.runtime.driver import driver
    launcher_cls = getattr(driver.active, "launcher_cls", None)
    if launcher_cls is not None:
        launcher_cls(kernel.src, kernel.metadata)


@contextlib.contextmanager
def unbuilt_variants_skipped(runtime=None) -> Iterator[list[str] | None]:
    """Inside, a launch of a Triton kernel variant that this process has not built (or loaded) yet neither builds
    nor runs it; its kernel's name is appended to the yielded list. Lets a CUDA-graph capture go without warm-up
    forwards (once start-up has built every variant): a capture that met such a launch lacks that kernel, so the
    caller drops it, warms up (which builds the variant) and captures again. Yields None where Triton has no
    ``jit_cache_hook`` (< 3.4): the caller must warm up first. ``runtime``: Triton's ``knobs.runtime`` (tests)."""
    if runtime is None:
        try:
            from triton import knobs
        except ImportError:
            yield None
            return
        runtime = knobs.runtime
    if not hasattr(runtime, "jit_cache_hook"):
        yield None
        return
    missed: list[str] = []

    def skip(*, fn=None, **_):
        missed.append(getattr(fn, "name", None) or "?")
        return True          # neither build nor launch it

    previous = runtime.jit_cache_hook
    runtime.jit_cache_hook = skip
    try:
        yield missed
    finally:
        runtime.jit_cache_hook = previous


def compile_ahead(warm_up: Callable[[], None], workers: int) -> tuple[int, float]:
    """Run ``warm_up`` dry and build the Triton variants it meets on ``workers`` threads after it; returns how many
    and the seconds spent waiting for them after the dry pass."""
    try:
        from triton import knobs
        from triton.runtime._async_compile import AsyncCompileMode
    except ImportError:      # a Triton without the hooks (< 3.4): the warm-up builds them one by one
        return 0, 0.0
    runtime = knobs.runtime
    if not hasattr(runtime, "jit_cache_hook"):
        return 0, 0.0
    from concurrent.futures import ThreadPoolExecutor

    from pagedllm import envs
    from pagedllm.kernels import late_compiles
    from triton.runtime import _async_compile
    recorded: dict[tuple[int, str], tuple] = {}

    def record(*, fn, compile, **_):
        data = compile["specialization_data"]
        recorded.setdefault((id(fn.jit_function), data), (fn.jit_function, data))
        return True          # neither build nor launch it now

    launchers = 0
    t0 = time.perf_counter()
    previous = runtime.jit_cache_hook
    runtime.jit_cache_hook = record
    try:
        warm_up()
    finally:
        runtime.jit_cache_hook = previous
    t1 = time.perf_counter()
    late_compiles.building_ahead(True)
    try:
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="pagedllm-triton") as pool:
            builds = _LauncherBuilds(pool) if envs.PAGEDLLM_TRITON_PREP else None
            # ignore_errors: a variant that fails to build is left out of the cache, so the real warm-up builds it
            # one by one and raises its error there, as without this pass. Triton's exit would otherwise raise
            # before clearing its process-wide active mode, and every later engine built in this process would
            # fail with "Another AsyncCompileMode is already active" (seen on an H100 in session 25's tests).
            mode = AsyncCompileMode(pool, ignore_errors=True)
            try:
                with mode:            # its exit waits for every build and caches it
                    for jit_function, data in recorded.values():
                        future_kernel = jit_function.preload(data)     # under the mode: queued on the pool
                        if builds is not None:
                            builds.after(future_kernel)
            finally:
                if _async_compile.active_mode.get() is mode:     # preload itself raised inside the mode
                    _async_compile.active_mode.set(None)
            if builds is not None:
                launchers = builds.wait()
    finally:
        late_compiles.building_ahead(False)
    took = time.perf_counter() - t1
    logger.info("Built %d Triton kernel variants%s on %d threads in %.1f s (dry warm-up %.1f s)", len(recorded),
                f" and {launchers} launchers" if launchers else "", workers, took, t1 - t0)
    return len(recorded), took
