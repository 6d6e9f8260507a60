"""Where a served run's engine-process time goes, from a step trace.

    PAGEDLLM_STEP_TRACE=/tmp/steps.jsonl pagedllm serve ...      # or any server run with the variable set
    python benchmarks/serve_step_trace.py /tmp/steps.jsonl [--skip-idle-s 1.0]

Each line of the trace is one engine-process iteration (see ``_StepTrace`` in pagedllm/engine/async_engine.py).
Prints, per band of running requests: how many steps, the wall time between consecutive steps, and its parts
(idle gap, applying arrived messages, the step itself, sending outputs); the share of steps that carried prompt
tokens; and the tokens per second the engine produced while busy. A step wall far above the offline step time at
the same batch size points at the engine process; a batch that stays below the client's concurrency points at the
server side (requests reach the engine late).
"""
from __future__ import annotations

import argparse
import json

import numpy as np

BANDS = [(1, 1), (2, 15), (16, 47), (48, 79), (80, 95), (96, 100), (101, 10 ** 9)]


def load(path: str) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def summarize(rows: list[dict], skip_idle_s: float) -> str:
    # Drop the idle stretches (start-up warm-up request, the end): a gap longer than skip_idle_s starts a new run.
    rows = [r for r in rows if r["gap"] < skip_idle_s * 1e3]
    if len(rows) < 2:
        return "fewer than two busy steps in the trace"
    t = np.array([r["t"] for r in rows])
    wall = np.diff(t) * 1e3                       # ms from this step's start to the next one's
    rows = rows[:-1]
    lines = [f"{len(rows)} steps, {sum(r['gen_tokens'] for r in rows)} generated tokens, "
             f"{sum(r['prompt_tokens'] for r in rows)} prompt tokens, busy {wall.sum() / 1e3:.2f} s "
             f"-> {sum(r['gen_tokens'] for r in rows) / (wall.sum() / 1e3):.0f} gen tok/s",
             f"{'running':>9} {'steps':>6} {'wall ms':>8} {'gap':>6} {'msgs':>6} {'step':>6} {'send':>6} "
             f"{'w/ prompt':>9} {'prompt tok':>10} {'wall no-prompt':>14}"]
    running = np.array([r["running"] for r in rows])
    for lo, hi in BANDS:
        idx = np.nonzero((running >= lo) & (running <= hi))[0]
        if not len(idx):
            continue
        sel = [rows[i] for i in idx]
        col = lambda k: np.mean([r[k] for r in sel])   # noqa: E731
        has_prompt = np.array([r["prompt_tokens"] > 0 for r in sel])
        no_prompt_wall = wall[idx][~has_prompt]
        band = f"{lo}-{hi}" if hi < 10 ** 9 else f"{lo}+"
        lines.append(f"{band:>9} {len(idx):>6} {wall[idx].mean():>8.2f} {col('gap'):>6.2f} {col('msgs'):>6.2f} "
                     f"{col('step'):>6.2f} {col('send'):>6.2f} {has_prompt.mean():>9.0%} "
                     f"{col('prompt_tokens'):>10.1f} "
                     f"{(no_prompt_wall.mean() if len(no_prompt_wall) else float('nan')):>14.2f}")
    lines.append(f"running requests per step: median {np.median(running):.0f}, mean {running.mean():.1f}")
    lines += by_next_prompt(rows)
    return "\n".join(lines)


# Bands of the prompt tokens of the step a row launches (with ~100 decodes beside them, the piecewise graphs' default
# 512-token cap falls inside the third band).
NEXT_PROMPT_BANDS = [(0, 0), (1, 256), (257, 512), (513, 1024), (1025, 2048), (2049, 10 ** 9)]


def by_next_prompt(rows: list[dict]) -> list[str]:
    """A row's ``step`` time against the prompt tokens of the NEXT row. With async scheduling a row launches the step
    it schedules and waits for the one before, and its token counts are the finished step's: the step a row launched
    is the next row's. Session 38 (docs/perf.md) found the ITL P99's rows this way: those launching eager steps of
    more than 512 tokens."""
    if len(rows) < 2:
        return []
    step = np.array([r["step"] for r in rows[:-1]])
    nxt = np.array([r["prompt_tokens"] for r in rows[1:]])
    lines = ["by the next row's prompt tokens (the step this row launched):",
             f"{'prompt tok':>12} {'rows':>6} {'step median':>12} {'p90':>7} {'> 20 ms':>8}"]
    for lo, hi in NEXT_PROMPT_BANDS:
        sel = step[(nxt >= lo) & (nxt <= hi)]
        if len(sel):
            band = f"{lo}-{hi}" if hi < 10 ** 9 else f"{lo}+"
            lines.append(f"{band:>12} {len(sel):>6} {np.median(sel):>12.1f} {np.percentile(sel, 90):>7.1f} "
                         f"{np.mean(sel > 20):>8.0%}")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("trace")
    ap.add_argument("--skip-idle-s", type=float, default=1.0)
    args = ap.parse_args()
    print(summarize(load(args.trace), args.skip_idle_s))


if __name__ == "__main__":
    main()
