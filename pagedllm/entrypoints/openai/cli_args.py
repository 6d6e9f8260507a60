"""Flags of ``pagedllm serve`` (vLLM's frontend flags) on top of every engine argument."""
from __future__ import annotations

import argparse
import json
import logging
import os

from pagedllm import envs
from pagedllm.config import EngineArgs, json_arg, verify_engine_args
from pagedllm.sampling_params import MAX_N
from pagedllm.usage.usage_lib import UsageContext

logger = logging.getLogger("pagedllm.entrypoints.openai.cli_args")

DEFAULT_MAX_N = 128             # OpenAI's limit on n
DEFAULT_MAX_PROMPTS = 2048      # OpenAI's limit on the inputs of one embeddings request
# The default of --max-request-body-bytes: far above any prompt a served context holds as JSON (128k token ids are
# about 1 MB), far below what would hurt the server to buffer. Here, not in server_guards, so that parsing a
# command line (also in the early engine process, entrypoints/early_engine.py) does not import FastAPI.
DEFAULT_MAX_REQUEST_BODY_BYTES = 32 * 1024 * 1024


def _json_list(text: str) -> list[str]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return [text]
    return value if isinstance(value, list) else [str(value)]


# vLLM's on/off flags that shape responses: (flag, help).
_RESPONSE_FLAGS = (
    ("--enable-request-id-headers", "Add an X-Request-Id header to every response (the request's own X-Request-Id if "
                                    "it sent one, which also names chat and completion requests, else a random id)."),
    ("--enable-server-load-tracking", "Count the requests in flight on the model routes; GET /load reports the "
                                      "count ({\"server_load\": N}, always 0 without this flag)."),
    ("--enable-force-include-usage", "Every stream carries usage, on each chunk and in a final usage chunk, "
                                     "whatever the request's stream_options."),
    ("--return-tokens-as-token-ids", 'Logprob tokens as "token_id:{id}" strings (tokens that are not valid text '
                                     "stay identifiable); a request's return_tokens_as_token_ids overrides it."),
    ("--enable-prompt-tokens-details", "usage.prompt_tokens_details.cached_tokens: the prompt tokens a prefix-cache "
                                       "hit supplied (null when none, as vLLM)."),
)


def add_frontend_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    g = parser.add_argument_group("Frontend")     # vLLM's title (serve --help=Frontend)
    g.add_argument("--host", type=str, default=None, help="Host name to listen on; None = all interfaces.")
    g.add_argument("--port", type=int, default=8000, help="Port number.")
    g.add_argument("--uds", type=str, default=None,
                   help="Unix domain socket path to serve on. If set, --host and --port are ignored.")
    g.add_argument("--uvicorn-log-level", type=str, default="info",
                   choices=["debug", "info", "warning", "error", "critical", "trace"], help="Log level for uvicorn.")
    g.add_argument("--disable-uvicorn-access-log", action="store_true", help="Disable uvicorn's access log.")
    g.add_argument("--disable-access-log-for-endpoints", type=str, default=None,
                   help="Comma-separated paths whose requests stay out of uvicorn's access log, e.g. "
                        "\"/health,/metrics,/ping\" (the others are still logged).")
    g.add_argument("--log-config-file", type=str, default=None,
                   help="A logging config JSON file (logging.config.dictConfig's schema) applied at start-up, for "
                        "uvicorn's loggers and pagedllm's alike.")
    g.add_argument("--allow-credentials", action="store_true", help="Allow credentials (CORS).")
    g.add_argument("--allowed-origins", type=_json_list, default=["*"], help="Allowed origins (a JSON list).")
    g.add_argument("--allowed-methods", type=_json_list, default=["*"], help="Allowed methods (JSON list).")
    g.add_argument("--allowed-headers", type=_json_list, default=["*"], help="Allowed headers (JSON list).")
    g.add_argument("--api-key", type=str, nargs="+", default=None,
                   help="If provided, the server requires one of these keys in the Authorization header (Bearer) "
                        "for /v1/* (env PAGEDLLM_API_KEY gives one key).")
    g.add_argument("--served-model-name", type=str, nargs="+", default=None,
                   help="Model name(s) used in the API; the first is echoed in responses. None = the model path.")
    g.add_argument("--chat-template", type=str, default=None,
                   help="Chat template: a file path or the template itself. None = the tokenizer's.")
    g.add_argument("--default-chat-template-kwargs", type=json_arg, default=None,
                   help="JSON keyword arguments for every chat template render (chat, /tokenize, embeddings), "
                        "under a request's own chat_template_kwargs, e.g. '{\"enable_thinking\": false}'.")
    g.add_argument("--trust-request-chat-template", action="store_true",
                   help="Allow a chat_template in requests (chat, /tokenize, embeddings). Off by default: a template "
                        "is code; when allowed it runs sandboxed, within a time and an output-size limit.")
    g.add_argument("--chat-template-content-format", type=str, default="auto", choices=["auto", "string", "openai"],
                   help="How message content is given to the template (text-only models: always a string).")
    g.add_argument("--lora-modules", type=_lora_module, nargs="+", default=None, metavar="NAME=PATH",
                   help="LoRA adapters to serve (with --enable-lora): name=path, or JSON '{\"name\": ..., "
                        "\"path\": ..., \"base_model_name\": ...}'. A request's \"model\" picks one by name.")
    g.add_argument("--response-role", type=str, default="assistant",
                   help="Role name returned when add_generation_prompt is true.")
    g.add_argument("--ssl-keyfile", type=str, default=None, help="SSL key file.")
    g.add_argument("--ssl-certfile", type=str, default=None, help="SSL certificate file.")
    g.add_argument("--ssl-ca-certs", type=str, default=None, help="CA certificates file.")
    g.add_argument("--ssl-cert-reqs", type=int, default=0, help="Whether client certificates are required.")
    g.add_argument("--ssl-ciphers", type=str, default=None,
                   help="SSL cipher suites for HTTPS (TLS 1.2 and below), e.g. "
                        "'ECDHE-RSA-AES256-GCM-SHA384:ECDHE-RSA-CHACHA20-POLY1305'. None = uvicorn's default.")
    g.add_argument("--root-path", type=str, default=None, help="FastAPI root_path when behind a path-based proxy.")
    g.add_argument("--middleware", type=str, action="extend", nargs="+", default=[],
                   help="An ASGI middleware to add to the app, as an import path (module.name); repeatable. A class "
                        "is added with app.add_middleware(), an async function with @app.middleware('http'). They "
                        "run before the server's own (CORS, API key, ...), the last given first.")
    g.add_argument("--disable-log-requests", action="store_true", default=None,
                   help="Deprecated (vLLM's old flag): requests are not logged unless --enable-log-requests.")
    g.add_argument("--enable-log-requests", action="store_true", default=None,
                   help="Log each request (its prompt and sampling params) at INFO. Off by default: prompts are "
                        "user data.")
    g.add_argument("--enable-log-outputs", action="store_true",
                   help="With --enable-log-requests: log each chat / completion response's output text and finish "
                        "reason at INFO (its token ids at DEBUG); streams log each delta and the whole text at the "
                        "end.")
    g.add_argument("--enable-log-deltas", action=argparse.BooleanOptionalAction, default=True,
                   help="With --enable-log-outputs: log each streamed delta (--no-enable-log-deltas: only the whole "
                        "text when the stream ends).")
    g.add_argument("--max-log-len", type=int, default=None,
                   help="Max number of prompt characters or ids printed in request logs. None = unlimited.")
    add_limit_args(g)
    add_shutdown_arg(g)
    g.add_argument("--disable-frontend-multiprocessing", action="store_true",
                   help="Run the engine in a thread of the API server process instead of its own process (the "
                        "engine process keeps HTTP work from competing with the engine for the GIL).")
    g.add_argument("--disable-fastapi-docs", action="store_true", help="Disable /docs, /redoc and /openapi.json.")
    g.add_argument("--enable-tokenizer-info-endpoint", action="store_true",
                   help="Serve GET /tokenizer_info: the tokenizer's configuration (its class, special tokens, chat "
                        "template, ...). Off by default: it shows the chat template.")
    g.add_argument("--enable-auto-tool-choice", action="store_true",
                   help='tool_choice="auto" on chat: the model decides, and --tool-call-parser reads its calls.')
    g.add_argument("--tool-call-parser", type=str, default=None,
                   help="The model's tool-call format for tool_choice=\"auto\": hermes, qwen3, qwen3_coder "
                        "(qwen3_xml), llama3_json, llama4_json, mistral, pythonic, llama4_pythonic, xlam, openai.")
    g.add_argument("--exclude-tools-when-tool-choice-none", action="store_true",
                   help='With tool_choice="none", do not show the tools to the chat template (by default they are '
                        "rendered whatever tool_choice is, as vLLM).")
    for flag, help_text in _RESPONSE_FLAGS:
        g.add_argument(flag, action="store_true", help=help_text)
    return parser


def add_limit_args(g) -> None:
    """Per-request caps of both HTTP servers (a request over one is a 400 / 413 naming the cap)."""
    g.add_argument("--max-n", type=int, default=DEFAULT_MAX_N,
                   help=f"Max completions per request (n). Default {DEFAULT_MAX_N}, OpenAI's own limit (vLLM allows "
                        f"{MAX_N}: one such request holds the engine for minutes).")
    g.add_argument("--max-prompts-per-request", type=int, default=DEFAULT_MAX_PROMPTS,
                   help=f"Max prompts in one /v1/completions or /v1/embeddings request (a list). Default "
                        f"{DEFAULT_MAX_PROMPTS}, OpenAI's limit for embedding inputs.")
    g.add_argument("--max-request-body-bytes", type=int, default=DEFAULT_MAX_REQUEST_BODY_BYTES,
                   help="Max size of a request body; larger bodies get a 413. 0 = unlimited.")


def add_shutdown_arg(g) -> None:
    """vLLM's --shutdown-timeout (both HTTP servers; entrypoints/shutdown.py)."""
    g.add_argument("--shutdown-timeout", type=float, default=0,
                   help="On SIGTERM / SIGINT, wait up to this many seconds for in-flight requests to finish (new "
                        "requests get 503 meanwhile), then abort the rest and exit 0. 0 (vLLM's default): abort "
                        "them at once.")


def make_serve_parser(parser: argparse.ArgumentParser, model_positional: bool) -> argparse.ArgumentParser:
    """``serve``'s flags: MODEL positional (optional) and ``--model``, the frontend flags, the engine flags."""
    if model_positional:
        parser.add_argument("model_tag", type=str, nargs="?", default=None,
                            help=f"The model: HF id, local folder or .gguf file. None = {EngineArgs.model}.")
    parser.add_argument("--model", type=str, default=None,
                        help="The model (same as the positional MODEL; the positional one wins).")
    add_frontend_args(parser)
    EngineArgs.add_cli_args(parser, model_positional=True)
    for action in parser._actions:   # give every engine flag a line of help (and so its default) in --help
        if not action.help and action.dest in _ENGINE_HELP:
            action.help = _ENGINE_HELP[action.dest]
    return parser


_ENGINE_HELP = {
    "tokenizer_mode": "Tokenizer mode: auto / hf (fast if available) or slow.",
    "revision": "Model revision (branch, tag or commit) on the hub.",
    "tokenizer_revision": "Tokenizer revision on the hub.",
    "load_format": "Weights format; dummy = random weights (benchmarks, no download); bitsandbytes = the auto files "
                   "quantized by bitsandbytes (as --quantization bitsandbytes).",
    "dtype": "Weights and activations dtype; auto = the config's (16-bit on GPU, float32 on CPU).",
    "seed": "Random seed.",
    "block_size": "Tokens per KV-cache block.",
    "enable_prefix_caching": "Reuse the KV cache of shared prompt prefixes.",
    "gpu_memory_utilization": "Fraction of GPU memory for weights, activations and the KV cache.",
    "num_gpu_blocks_override": "Fixed number of KV-cache blocks (overrides memory-based sizing).",
    "max_num_seqs": "Max sequences per step; None = 1024 on GPU, 256 on CPU.",
    "max_num_batched_tokens": "Max tokens per step; None = 16384 on GPU, 2048 on CPU.",
    "enable_chunked_prefill": "Split long prefills over several steps, mixed with decodes.",
    "max_logprobs": "Max number of logprobs a request may ask for.",
    "tensor_parallel_size": "Number of GPUs for tensor parallelism.",
    "pipeline_parallel_size": "Number of pipeline stages.",
    "device": "Device: auto (cuda if available), cpu, cuda.",
    "attention_backend": "Attention kernels; None = triton on CUDA, torch on CPU.",
    "disable_log_stats": "Do not log the periodic throughput / KV-cache stats line.",
}


def _lora_module(text: str) -> dict:
    """One --lora-modules entry (vLLM's two forms): name=path, or a JSON object with name, path and optionally
    base_model_name."""
    if "=" in text and not text.lstrip().startswith("{"):
        name, _, path = text.partition("=")
        if name and path:
            return {"name": name, "path": path, "base_model_name": None}
    try:
        entry = json.loads(text)
    except json.JSONDecodeError:
        raise argparse.ArgumentTypeError(f"Invalid JSON format for --lora-modules: {text}") from None
    if not isinstance(entry, dict) or not entry.get("name") or not entry.get("path") \
            or set(entry) - {"name", "path", "base_model_name"}:
        raise argparse.ArgumentTypeError(f"Invalid fields for --lora-modules: {text} (name=path, or JSON with "
                                         f"\"name\", \"path\" and optionally \"base_model_name\")")
    return {"base_model_name": None, **entry}


def finalize_args(args: argparse.Namespace) -> argparse.Namespace:
    """Resolve MODEL/--model, the api key from the environment, request logging on/off."""
    model = getattr(args, "model_tag", None) or args.model or EngineArgs.model
    args.model = model
    if args.api_key is None:
        env_key = envs.PAGEDLLM_API_KEY or envs.VLLM_API_KEY
        args.api_key = [env_key] if env_key else None
    # vLLM's current default: requests (their prompts: user data) are logged only with --enable-log-requests.
    args.log_requests = bool(args.enable_log_requests)
    if args.disable_log_requests:
        # vLLM's wording: the flag is accepted and does nothing (logging is already off unless enabled).
        logger.warning("`--disable-log-requests` is deprecated and has been replaced with `--enable-log-requests`: "
                       "requests are not logged unless --enable-log-requests is given.")
    if getattr(args, "enable_log_outputs", False) and not args.log_requests:
        raise ValueError("--enable-log-outputs requires --enable-log-requests")    # vLLM's check and words
    check_limit_args(args)
    args.chat_template = load_chat_template(args.chat_template)
    if getattr(args, "log_config_file", None):
        load_log_config(args.log_config_file)         # a missing or malformed file fails before start-up
    kwargs = getattr(args, "default_chat_template_kwargs", None)
    if kwargs is not None and not isinstance(kwargs, dict):
        raise ValueError(f"--default-chat-template-kwargs must be a JSON object, got {kwargs!r}.")
    if getattr(args, "lora_modules", None) and not args.enable_lora:
        raise ValueError("--lora-modules needs --enable-lora (LoRA is not enabled).")
    if args.enable_auto_tool_choice:
        from pagedllm.entrypoints.openai.tool_parsers import get_tool_parser
        if not args.tool_call_parser:
            raise ValueError("--enable-auto-tool-choice requires --tool-call-parser to be set.")
        get_tool_parser(args.tool_call_parser)     # an unknown name fails before start-up
    verify_engine_args(EngineArgs.from_cli_args(args))   # a flag pagedllm cannot honour fails here, before start-up
    if args.quantization:
        from pagedllm.model.quantization import verify_quantization_name
        verify_quantization_name(args.quantization)
    return args


def serve_engine_args(args: argparse.Namespace) -> tuple[EngineArgs, list[str], bool]:
    """The engine's arguments for a finalized ``serve`` command line, its served model names, and whether the engine
    core runs in its own process. Shared by the server and by the engine process started from the command line
    before the server's imports (entrypoints/early_engine.py), which must agree."""
    engine_args = EngineArgs.from_cli_args(args)
    engine_args.usage_context = UsageContext.OPENAI_API_SERVER
    names = list(args.served_model_name) if args.served_model_name else [args.model]
    engine_args.served_model_name = names
    # Tensor parallel: the engine core runs in the server's process and starts the rank workers itself (Python
    # forbids the daemonic engine-core process children); the model's work is in the workers either way.
    engine_process = (not args.disable_frontend_multiprocessing and engine_args.tensor_parallel_size == 1
                      and engine_args.pipeline_parallel_size == 1)
    return engine_args, names, engine_process


def check_limit_args(args: argparse.Namespace) -> None:
    if not 1 <= args.max_n <= MAX_N:
        raise ValueError(f"--max-n must be in [1, {MAX_N}], got {args.max_n}.")
    if args.max_prompts_per_request < 1:
        raise ValueError(f"--max-prompts-per-request must be at least 1, got {args.max_prompts_per_request}.")
    if args.max_request_body_bytes < 0:
        raise ValueError(f"--max-request-body-bytes must be 0 (unlimited) or positive, got "
                         f"{args.max_request_body_bytes}.")
    if not 0 <= getattr(args, "shutdown_timeout", 0) < float("inf"):
        raise ValueError(f"--shutdown-timeout must be a non-negative number of seconds, got {args.shutdown_timeout}.")
    if args.max_log_len is not None and args.max_log_len < 0:
        raise ValueError(f"--max-log-len must be non-negative, got {args.max_log_len}.")


def load_log_config(path: str) -> dict:
    """--log-config-file: a JSON object in logging.config.dictConfig's schema."""
    try:
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"--log-config-file {path}: {e}") from None
    if not isinstance(config, dict):
        raise ValueError(f"--log-config-file {path} must hold a JSON object (logging.config.dictConfig's schema).")
    return config


def load_chat_template(value: str | None) -> str | None:
    """--chat-template is a file path or the Jinja template itself."""
    if value is None:
        return None
    if os.path.isfile(value):
        with open(value, encoding="utf-8") as f:
            return f.read()
    if not any(c in value for c in "{}\n"):
        raise ValueError(f"The supplied chat template ({value}) looks like a file path, but it failed to be opened.")
    # Inline templates given on a command line often spell newlines as "\\n".
    return value.replace("\\n", "\n") if "\n" not in value else value
