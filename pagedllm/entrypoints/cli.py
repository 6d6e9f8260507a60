"""The ``pagedllm`` command: ``pagedllm serve [MODEL] [flags]``, ``pagedllm chat`` / ``pagedllm complete`` (clients
of a running server), ``pagedllm run-batch``, ``pagedllm bench ...``, ``pagedllm collect-env``, ``pagedllm --version``.

``serve`` takes vLLM's flags (frontend flags plus every engine argument in kebab-case), so a ``vllm serve`` command
line works with ``vllm`` replaced by ``pagedllm``.
"""
from __future__ import annotations

import argparse
import logging
import sys

import pagedllm

logger = logging.getLogger("pagedllm.cli")

_DESCRIPTION = "pagedllm CLI: a vLLM-compatible LLM inference and serving engine."
_SERVE_HELP = "Start the pagedllm OpenAI Compatible API server."
# vLLM's epilog of its commands' help, for our --help=KEYWORD (config.FlexibleArgumentParser.format_help).
_SUBCOMMAND_HELP_TIP = ("For full list:            pagedllm {command} --help=all\n"
                        "For a section:            pagedllm {command} --help=ModelConfig    (case-insensitive)\n"
                        "For a flag:               pagedllm {command} --help=max-model-len  (_ or - accepted)\n"
                        "To list the sections:     pagedllm {command} --help=listgroup\n")


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults shown; the epilog's lines kept."""


def _serve(args: argparse.Namespace, prestarted=None) -> int:
    from pagedllm.entrypoints.openai.api_server import run_server
    from pagedllm.entrypoints.openai.cli_args import finalize_args

    try:
        args = finalize_args(args)
    except ValueError as e:
        sys.exit(f"error: {e}")
    return run_server(args, prestarted)


def _add_serve_parser(subparsers) -> None:
    from pagedllm.entrypoints.openai.cli_args import make_serve_parser

    serve = subparsers.add_parser(
        "serve", help=_SERVE_HELP, description=_SERVE_HELP,
        usage="pagedllm serve [model_tag] [options]", epilog=_SUBCOMMAND_HELP_TIP.format(command="serve"),
        formatter_class=_HelpFormatter)
    make_serve_parser(serve, model_positional=True)
    serve.set_defaults(dispatch=_serve)


def _add_bench_parser(subparsers) -> None:
    """``pagedllm bench`` lives in pagedllm.bench.cli; a missing or broken module must not break ``serve``."""
    try:
        from pagedllm.bench.cli import add_bench_parser
    except Exception as e:   # noqa: BLE001 - ImportError or anything the module raises on import
        reason = f"{type(e).__name__}: {e}"
        bench = subparsers.add_parser("bench", help="Benchmarks (unavailable here).", add_help=False)
        bench.add_argument("rest", nargs=argparse.REMAINDER)
        bench.set_defaults(dispatch=lambda _: sys.exit(f"pagedllm bench is unavailable: {reason}"))
        return
    try:
        add_bench_parser(subparsers)
    except Exception as e:   # noqa: BLE001
        logger.warning("Could not register `pagedllm bench`: %s", e)


def make_parser() -> argparse.ArgumentParser:
    from pagedllm.config import FlexibleArgumentParser

    parser = FlexibleArgumentParser(prog="pagedllm", description=_DESCRIPTION,
                                     epilog="For the options of a command: pagedllm <command> --help. "
                                            "Start a server with: pagedllm serve HuggingFaceTB/SmolLM2-135M-Instruct")
    parser.add_argument("-v", "--version", action="version", version=pagedllm.__version__)
    subparsers = parser.add_subparsers(title="commands", dest="subcommand",
                                       metavar="{serve,chat,complete,run-batch,bench,collect-env}", required=False)
    _add_serve_parser(subparsers)
    from pagedllm.entrypoints.cli_client import add_client_parsers
    add_client_parsers(subparsers)
    _add_bench_parser(subparsers)
    run_batch = subparsers.add_parser(
        "run-batch", help="Run a file of OpenAI batch requests offline.", usage="pagedllm run-batch -i FILE -o FILE "
        "[--model MODEL] [options]", description="Run a file of OpenAI batch requests (one JSON line each: "
        "custom_id, method, url, body) through the server's endpoints, offline, and write one result line each.")
    from pagedllm.entrypoints.openai.run_batch import make_run_batch_parser
    make_run_batch_parser(run_batch)
    run_batch.set_defaults(dispatch=_run_batch)
    collect_env = subparsers.add_parser("collect-env", help="Print versions, hardware and settings for a bug report.",
                                        description="Print versions, hardware and settings for a bug report.")
    collect_env.set_defaults(dispatch=_collect_env)
    return parser


def _run_batch(args: argparse.Namespace) -> int:
    from pagedllm.entrypoints.openai.run_batch import run_batch
    return run_batch(args)


def _collect_env(args: argparse.Namespace) -> int:
    from pagedllm.entrypoints.collect_env import run_collect_env
    return run_collect_env(args)


def main(argv: list[str] | None = None) -> None:
    from pagedllm.entrypoints import early_engine

    argv = sys.argv[1:] if argv is None else list(argv)
    # Before torch and the server's imports: `serve` on a GPU host starts building its engine now.
    prestarted = early_engine.start(argv, make_parser)
    parser = make_parser()
    args = parser.parse_args(argv)
    if prestarted is not None and getattr(args, "dispatch", None) is _serve:
        args.dispatch = lambda a: _serve(a, prestarted)
    dispatch = getattr(args, "dispatch", None)
    if dispatch is None:
        # The bench module may register its own handler under another attribute name.
        for name in ("func", "dispatch_function", "handler"):
            if callable(getattr(args, name, None)):
                dispatch = getattr(args, name)
                break
    if dispatch is None:
        # A bare `pagedllm`: the help, exit 0 (vLLM's main() prints its help and returns).
        parser.print_help()
        sys.exit(0)
    result = dispatch(args)
    if isinstance(result, int):
        sys.exit(result)


if __name__ == "__main__":
    main()
