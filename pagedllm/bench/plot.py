"""Pictures of benchmark results (matplotlib, Agg backend; `pip install matplotlib`)."""
from __future__ import annotations

import math
import re
from typing import Any, Sequence

import numpy as np


def _pyplot():
    try:
        import matplotlib
    except ImportError as exc:
        raise ImportError("--plot needs matplotlib: pip install matplotlib") from exc
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    return plt


def _hist(ax, values_ms: Sequence[float], title: str, color: str) -> None:
    data = np.asarray(values_ms, dtype=np.float64)
    if data.size == 0:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
        ax.set_title(title)
        return
    shown = data[data <= np.percentile(data, 99.5)] if data.size > 20 else data
    ax.hist(shown, bins=min(60, max(10, int(math.sqrt(data.size)) * 2)), color=color, alpha=0.8)
    for value, style, name in ((np.mean(data), "-", "mean"), (np.median(data), "--", "median"),
                               (np.percentile(data, 99), ":", "P99")):
        ax.axvline(value, color="black", linestyle=style, linewidth=1, label=f"{name} {value:.2f}")
    ax.set_title(title)
    ax.set_xlabel("ms")
    ax.set_ylabel("count")
    ax.legend(fontsize=7)


def token_timeline(result: dict[str, Any], bin_s: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(bin starts s, output tokens/s per bin, mean requests in flight per bin) from the per-request arrays.
    A request's ``output_len`` tokens are spread evenly over its streamed chunks."""
    starts, ttfts, itls = result["start_times"], result["ttfts"], result["itls"]
    e2els, out_lens, errors = result["latencies"], result["output_lens"], result["errors"]
    end = max((s + e for s, e, err in zip(starts, e2els, errors) if not err), default=0.0)
    nbins = max(1, int(math.ceil(end / bin_s)))
    tokens = np.zeros(nbins)
    inflight = np.zeros(nbins)
    for s, ttft, gaps, e2el, n_out, err in zip(starts, ttfts, itls, e2els, out_lens, errors):
        if err:
            continue
        times = s + ttft + np.concatenate([[0.0], np.cumsum(gaps)])
        idx = np.minimum((times / bin_s).astype(int), nbins - 1)
        np.add.at(tokens, idx, n_out / len(times))
        edges = np.arange(nbins) * bin_s   # time-weighted share of each bin this request was in flight
        inflight += np.clip(np.minimum(edges + bin_s, s + e2el) - np.maximum(edges, s), 0.0, None) / bin_s
    return np.arange(nbins) * bin_s, tokens / bin_s, inflight


def plot_serve_result(result: dict[str, Any], path: str) -> None:
    """TTFT / TPOT / ITL histograms and output tokens/s (with requests in flight) over time, one PNG."""
    plt = _pyplot()
    ok = [not e for e in result["errors"]]
    ttft_ms = [t * 1e3 for t, good in zip(result["ttfts"], ok) if good]
    tpot_ms = [(e - t) * 1e3 / (n - 1) for t, e, n, good in
               zip(result["ttfts"], result["latencies"], result["output_lens"], ok) if good and n > 1]
    itl_ms = [g * 1e3 for gaps, good in zip(result["itls"], ok) if good for g in gaps]

    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    _hist(axes[0][0], ttft_ms, "Time to first token", "tab:blue")
    _hist(axes[0][1], tpot_ms, "Time per output token (excl. 1st)", "tab:orange")
    _hist(axes[1][0], itl_ms, "Inter-token latency", "tab:green")

    ax = axes[1][1]
    duration = float(result.get("duration") or 1.0)
    bin_s = max(0.05, duration / 60)
    t, tok_s, inflight = token_timeline(result, bin_s)
    ax.plot(t, tok_s, color="tab:red", drawstyle="steps-post", label="output tok/s")
    ax.set_xlabel("time since start (s)")
    ax.set_ylabel("output tokens/s", color="tab:red")
    ax.set_title(f"Output tokens/s over time (bins of {bin_s:.2f} s)")
    ax2 = ax.twinx()
    ax2.plot(t, inflight, color="tab:gray", drawstyle="steps-post", alpha=0.7, label="requests in flight")
    ax2.set_ylabel("requests in flight", color="tab:gray")

    rate = result.get("request_rate")
    fig.suptitle(f"{result.get('label', result.get('backend', ''))} · {result.get('model_id', '')} · "
                 f"{result.get('completed', 0)} requests · rate {rate} · "
                 f"concurrency {result.get('max_concurrency')} · "
                 f"{result.get('output_throughput', 0.0):.1f} output tok/s")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_dataset_stats(result: dict[str, Any], path: str) -> None:
    """vLLM's --plot-dataset-stats figure: prompt, output and total token histograms, and each request's prompt and
    output tokens stacked."""
    plt = _pyplot()
    prompt = list(result["input_lens"])
    output = list(result["output_lens"])
    total = [a + b for a, b in zip(prompt, output)]
    fig, axes = plt.subplots(2, 2, figsize=(14, 10))
    for ax, values, name, color in ((axes[0][0], prompt, "Prompt Tokens", "steelblue"),
                                    (axes[0][1], output, "Output Tokens", "coral"),
                                    (axes[1][0], total, "Total Tokens (Prompt + Output)", "mediumseagreen")):
        ax.hist(values, bins=30, color=color, edgecolor="black", alpha=0.7)
        ax.set_xlabel(name)
        ax.set_ylabel("Frequency")
        ax.set_title(f"{name.split(' (')[0]} Distribution")
        ax.grid(True, alpha=0.3)
    ax = axes[1][1]
    ids = list(range(len(prompt)))
    ax.bar(ids, prompt, label="Prompt Tokens", color="steelblue", alpha=0.7)
    ax.bar(ids, output, bottom=prompt, label="Output Tokens", color="coral", alpha=0.7)
    ax.set_xlabel("Request ID")
    ax.set_ylabel("Tokens")
    ax.set_title("Tokens per Request (Stacked)")
    ax.legend()
    ax.grid(True, alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path, dpi=150, bbox_inches="tight")
    plt.close(fig)


_TIMELINE_COLORS = ("#636EFA", "#109618", "#FF7F0E", "#D62728")    # TTFT, then the three ITL bands (vLLM's)


def write_timeline_html(result: dict[str, Any], path: str, itl_thresholds_s: Sequence[float]) -> int:
    """vLLM's --plot-timeline page, drawn as SVG (no plotly needed): one row per successful request, its TTFT then
    one segment per inter-token gap coloured by --timeline-itl-thresholds; hovering a segment shows its times and
    the request's token counts. Returns the number of rows."""
    import html
    low, high = itl_thresholds_s
    labels = ("TTFT", f"ITL < {low * 1e3:.0f}ms", f"{low * 1e3:.0f}ms \u2264 ITL < {high * 1e3:.0f}ms",
              f"ITL \u2265 {high * 1e3:.0f}ms")
    rows = [(i, s, t, gaps, e2el, n_in, n_out) for i, (s, t, gaps, e2el, n_in, n_out, err) in enumerate(zip(
        result["start_times"], result["ttfts"], result["itls"], result["latencies"], result["input_lens"],
        result["output_lens"], result["errors"])) if not err]
    t0 = min((r[1] for r in rows), default=0.0)
    end = max((r[1] + r[4] for r in rows), default=1.0) - t0 or 1.0
    width, row_h, left = 1000.0, 16, 70
    scale = width / end
    parts = []
    for y, (i, start, ttft, gaps, e2el, n_in, n_out) in enumerate(rows):
        top = 30 + y * row_h
        parts.append(f'<text x="{left - 6}" y="{top + 11}" text-anchor="end">Req {i}</text>')
        segments = [(start - t0, ttft, 0)]
        at = start - t0 + ttft
        for gap in gaps:
            segments.append((at, gap, 1 if gap < low else 2 if gap < high else 3))
            at += gap
        for seg_start, length, kind in segments:
            tip = (f"Req {i} {labels[kind]}: {seg_start:.3f}s to {seg_start + length:.3f}s ({length:.3f}s); "
                   f"request {start - t0:.3f}s to {start - t0 + e2el:.3f}s, prompt tokens {n_in}, output tokens "
                   f"{n_out}")
            parts.append(f'<rect x="{left + seg_start * scale:.2f}" y="{top}" width="{max(length * scale, 0.5):.2f}" '
                         f'height="{row_h - 3}" fill="{_TIMELINE_COLORS[kind]}"><title>{html.escape(tip)}</title>'
                         f'</rect>')
    legend = "".join(f'<span style="color:{c}">&#9632;</span> {html.escape(label)} &nbsp; '
                     for c, label in zip(_TIMELINE_COLORS, labels))
    height = 40 + len(rows) * row_h
    page = (f'<!DOCTYPE html><html><head><meta charset="utf-8"><title>Request timeline</title></head>'
            f'<body style="font-family:sans-serif;font-size:12px"><h3>Request timeline ({len(rows)} requests, '
            f'{end:.3f} s; hover a segment for its times)</h3><p>{legend}</p>'
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{left + width + 20:.0f}" height="{height}" '
            f'font-size="10">{"".join(parts)}</svg></body></html>\n')
    with open(path, "w", encoding="utf-8") as f:
        f.write(page)
    return len(rows)


# ---- comparison -------------------------------------------------------------------------------------------------
COMPARE_GROUPS = (
    ("Token throughput (tok/s)", re.compile(r"^(output_throughput|total_token_throughput|max_output_tokens_per_s|"
                                            r"tokens_per_second|output_tokens_per_second)$")),
    ("Request throughput (req/s)", re.compile(r"^(request_throughput|request_goodput|requests_per_second)$")),
    ("TTFT (ms)", re.compile(r"^(mean|median|p[\d.]+)_ttft_ms$")),
    ("TPOT (ms)", re.compile(r"^(mean|median|p[\d.]+)_tpot_ms$")),
    ("ITL (ms)", re.compile(r"^(mean|median|p[\d.]+)_itl_ms$")),
    ("E2EL (ms)", re.compile(r"^(mean|median|p[\d.]+)_e2el_ms$")),
    ("Latency (s)", re.compile(r"^(avg_latency|p[\d.]+_latency)$")),
)


def plot_comparison(labels: Sequence[str], metrics: Sequence[dict[str, float]], path: str) -> None:
    """Grouped bars, one panel per metric family present in any result, one bar colour per result."""
    plt = _pyplot()
    panels = []
    for title, pattern in COMPARE_GROUPS:
        keys = []
        for m in metrics:
            keys += [k for k in m if pattern.match(k) and k not in keys]
        keys.sort(key=_bar_order)
        if keys:
            panels.append((title, keys))
    if not panels:
        raise ValueError("None of the results has a metric to plot.")
    cols = min(3, len(panels))
    rows = int(math.ceil(len(panels) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(5.5 * cols, 4.2 * rows), squeeze=False)
    width = 0.8 / max(1, len(metrics))
    for i, (title, keys) in enumerate(panels):
        ax = axes[i // cols][i % cols]
        x = np.arange(len(keys))
        for j, (label, m) in enumerate(zip(labels, metrics)):
            values = [m.get(k, np.nan) for k in keys]
            ax.bar(x + (j - (len(metrics) - 1) / 2) * width, values, width, label=label)
        ax.set_xticks(x)
        ax.set_xticklabels([_short_name(k) for k in keys], rotation=30, ha="right", fontsize=8)
        ax.set_title(title)
        ax.grid(axis="y", alpha=0.3)
        if i == 0:
            ax.legend(fontsize=8)
    for k in range(len(panels), rows * cols):
        axes[k // cols][k % cols].axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _bar_order(key: str) -> tuple[int, float]:
    """Throughputs keep their order; then mean, median, and percentiles by value."""
    name = _short_name(key)
    if name in ("mean", "avg_latency"):
        return (1, 0.0)
    if name == "median":
        return (2, 0.0)
    match = re.fullmatch(r"p([\d.]+)", name)
    return (3, float(match.group(1))) if match else (0, 0.0)


def _short_name(key: str) -> str:
    for suffix in ("_ttft_ms", "_tpot_ms", "_itl_ms", "_e2el_ms", "_latency"):
        if key.endswith(suffix):
            return key[: -len(suffix)]
    return key
