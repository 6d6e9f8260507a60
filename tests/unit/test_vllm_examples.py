"""vLLM's own example scripts (examples/basic/offline_inference, features/..., pooling/... of vLLM 0.24) with only the
package name changed: the modules they import exist at the same paths, and the calls they make (the parser built
from EngineArgs and handed to ``LLM(**vars(args))``, the helpers they print with) behave as in vLLM. The scripts
themselves are not copied here; each test makes the same calls."""
from __future__ import annotations

import gc
import weakref

from pagedllm import LLM, EngineArgs


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
            async for output in engine.generate(request_id="stream-example-1", prompt="In a galaxy far, far away",
                                                sampling_params=params):
                pieces.extend(len(c.token_ids) for c in output.outputs)
                if output.finished:
                    break
        finally:
            engine.shutdown()
        return pieces

    pieces = asyncio.run(stream())
    assert sum(pieces) == 6 and len(pieces) > 1      # new tokens only, in several deltas
