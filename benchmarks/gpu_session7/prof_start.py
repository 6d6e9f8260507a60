"""Where the served start-up goes: cProfile of the engine config (as the engine process builds it) and of the
front end's build_engine (main thread), on the GPU host. python3 prof_start.py config|frontend MODEL_DIR"""
import cProfile, pstats, sys, time
mode, d = sys.argv[1], sys.argv[2]
t = time.perf_counter()
import pagedllm.entrypoints.cli  # noqa
print(f"{mode}: import pagedllm.entrypoints.cli {time.perf_counter() - t:.2f} s", flush=True)
pr = cProfile.Profile()
if mode == "config":
    from pagedllm.config import EngineArgs
    from pagedllm.engine.core import create_engine_config
    pr.enable(); t = time.perf_counter()
    create_engine_config(EngineArgs(model=d, load_format="dummy", skip_tokenizer_init=True, max_model_len=4096,
                                    dtype="bfloat16"))
    pr.disable(); print(f"config {time.perf_counter() - t:.2f} s")
else:
    from pagedllm.entrypoints.openai.api_server import build_engine, make_arg_parser
    from pagedllm.entrypoints.openai.cli_args import finalize_args
    args = finalize_args(make_arg_parser().parse_args([d, "--load-format", "dummy", "--skip-tokenizer-init",
                                                       "--max-model-len", "4096", "--dtype", "bfloat16"]))
    pr.enable(); t = time.perf_counter()
    engine, _, _ = build_engine(args)
    pr.disable(); print(f"build_engine {time.perf_counter() - t:.2f} s")
    engine.shutdown()
pstats.Stats(pr).sort_stats("cumtime").print_stats(35)
