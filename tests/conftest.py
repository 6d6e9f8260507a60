"""Loaded by pytest before any test module: ``import pagedllm`` first, so that it sets OMP_WAIT_POLICY=PASSIVE before
a test module's ``import torch`` loads the OpenMP runtime (spinning OpenMP threads slow a shared CI machine down
several times, docs/perf.md issue 19)."""
import pagedllm  # noqa: F401


def pytest_runtest_logreport(report):
    """A failure's reason, printed when it happens (not only in the summary at the end): CI shows the tail of a
    run's output, and a run stopped at its time limit prints no summary at all (session 34's CI run: 92% done,
    hundreds of F and E, not one reason)."""
    if not report.failed:
        return
    text = report.longreprtext.strip().splitlines() if report.longrepr else []
    errors = [line[1:].strip() for line in text if line.startswith("E ") and line[1:].strip()] or text[-1:]
    # the first "E" line is the error's message; the last, where a subprocess log is quoted, its own last error
    reason = errors[0][:200] + (f" ... {errors[-1][:200]}" if len(errors) > 1 else "") if errors else ""
    print(f"\n!! {report.outcome.upper()} {report.nodeid} ({report.when}): {reason}", flush=True)
