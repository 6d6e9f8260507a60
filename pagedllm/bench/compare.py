"""`pagedllm bench compare RESULT.json...`: saved benchmark results side by side in one table (and one picture).

Reads `bench serve --save-result` files, `bench throughput --output-json` and `bench latency --output-json` files.
"""
from __future__ import annotations

import argparse
import json
import os
import re
from typing import Any

# Rows in this order first; any other numeric key follows in first-seen order.
PREFERRED_ORDER = (
    "completed", "failed", "duration", "total_input_tokens", "total_output_tokens",
    "request_throughput", "request_goodput", "output_throughput", "total_token_throughput",
    "max_output_tokens_per_s", "max_concurrent_requests",
    "num_requests", "elapsed_time", "requests_per_second", "tokens_per_second", "output_tokens_per_second",
    "total_num_tokens", "total_prompt_tokens",
    "avg_latency", "std_latency",
)
SKIPPED_KEYS = {"burstiness", "num_prompts", "max_concurrency"}
INTEGER_KEYS = {"completed", "failed", "total_input_tokens", "total_output_tokens", "max_concurrent_requests",
                "num_requests", "total_num_tokens", "total_prompt_tokens"}


def add_cli_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("results", nargs="+", help="Result JSON files to compare.")
    parser.add_argument("--labels", nargs="+", default=None, help="Column names (default: label or file name).")
    parser.add_argument("--plot", type=str, default=None, metavar="FILE.png", help="Also draw them into one PNG.")
    return parser


def flatten_metrics(result: dict[str, Any]) -> dict[str, float]:
    """The numeric, comparable values of one result file (latency percentiles become p{N}_latency)."""
    flat: dict[str, float] = {}
    for key, value in result.items():
        if key in SKIPPED_KEYS or isinstance(value, bool):
            continue
        if isinstance(value, (int, float)):
            flat[key] = float(value)
        elif key == "percentiles" and isinstance(value, dict):
            for p, v in value.items():
                flat[f"p{p}_latency"] = float(v)
    return flat


def result_label(result: dict[str, Any], path: str) -> str:
    name = os.path.splitext(os.path.basename(path))[0]
    return str(result.get("label") or name)


def _ordered_keys(metrics: list[dict[str, float]]) -> list[str]:
    """Summary keys in PREFERRED_ORDER, then per latency metric mean/median/std/percentiles, then the rest."""
    seen: list[str] = []
    for m in metrics:
        seen += [k for k in m if k not in seen]
    keys = [k for k in PREFERRED_ORDER if k in seen]
    for metric in ("ttft", "tpot", "itl", "e2el", "latency"):
        suffix = f"_{metric}_ms" if metric != "latency" else "_latency"
        family = [k for k in seen if k.endswith(suffix) and k not in keys]
        head = [k for k in (f"mean{suffix}", f"median{suffix}", f"std{suffix}") if k in family]
        tail = sorted((k for k in family if k not in head and re.fullmatch(r"p[\d.]+", k[: -len(suffix)])),
                      key=lambda k: float(k[1: -len(suffix)]))
        keys += head + tail
    return keys + [k for k in seen if k not in keys]


def format_table(labels: list[str], metrics: list[dict[str, float]]) -> str:
    keys = _ordered_keys(metrics)
    name_width = max([len("metric")] + [len(k) for k in keys]) + 2
    col_width = max([14] + [len(label) + 2 for label in labels])
    lines = ["metric".ljust(name_width) + "".join(label.rjust(col_width) for label in labels)]
    lines.append("-" * len(lines[0]))
    for key in keys:
        cells = []
        for m in metrics:
            value = m.get(key)
            if value is None:
                cells.append("-".rjust(col_width))
            elif key in INTEGER_KEYS and float(value).is_integer():
                cells.append(f"{int(value)}".rjust(col_width))
            else:
                cells.append(f"{value:.2f}".rjust(col_width))
        lines.append(key.ljust(name_width) + "".join(cells))
    return "\n".join(lines)


def main(args: argparse.Namespace) -> str:
    results = []
    for path in args.results:
        with open(path) as f:
            results.append(json.load(f))
    if args.labels is not None and len(args.labels) != len(results):
        raise ValueError(f"--labels got {len(args.labels)} names for {len(results)} result files.")
    labels = list(args.labels) if args.labels else [result_label(r, p) for r, p in zip(results, args.results)]
    if len(set(labels)) != len(labels):  # same label twice: tell the columns apart by file name
        labels = [f"{label} ({os.path.basename(p)})" for label, p in zip(labels, args.results)]
    metrics = [flatten_metrics(r) for r in results]
    table = format_table(labels, metrics)
    print(table)
    if args.plot:
        from pagedllm.bench.plot import plot_comparison
        plot_comparison(labels, metrics, args.plot)
        print(f"Saved the plot to {args.plot}")
    return table
