"""Benchmark workloads: ShareGPT conversations, BurstGPT trace lengths, random token prompts, prompts that share
repeated prefixes.

Every sampler returns ``SampleRequest``s. Synthetic prompts (random, prefix_repetition) are made of token ids, so their
lengths are exact; ``prompt_text`` also holds their decoded text when a tokenizer is at hand (chat endpoints and
``LLM.generate`` on text need it). ShareGPT prompts are text, measured with the tokenizer as vLLM does.
"""
from __future__ import annotations

import argparse
import json
import math
import random
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np

from pagedllm.bench.utils import vocab_ids

# json-schema / regex / choice: structured-output requests (vLLM's benchmark_serving_structured_output workloads).
STRUCTURED_DATASETS = ("json-schema", "regex", "choice")
DATASET_NAMES = ("sharegpt", "burstgpt", "custom", "sonnet", "txt-slices", "random",
                 "prefix_repetition") + STRUCTURED_DATASETS
# vLLM's datasets that are not here: named on the command line, each answers why and what to use instead.
UNSUPPORTED_DATASETS = {
    "hf": "it loads a Hugging Face hub dataset (a download); save the prompts to a local file and use --dataset-name "
          "custom (JSONL of {\"prompt\": ...} lines) or sharegpt",
    "random-mm": "it sends images, and pagedllm serves text-only models",
    "random-rerank": "pagedllm serves no reranker model; for embedding models use --backend openai-embeddings with "
                     "--dataset-name random",
    "spec_bench": "its question file is not read here yet; convert it to --dataset-name custom (JSONL of "
                  "{\"prompt\": ...} lines)",
}
# Synthetic workloads: a --dataset-path beside them would be ignored, so it is refused (as vLLM does).
SYNTHETIC_DATASETS = ("random", "prefix_repetition") + STRUCTURED_DATASETS

# vLLM's ShareGPT filter: drop too-short pairs and too-long prompts / totals.
SHAREGPT_MIN_LEN = 4
SHAREGPT_MAX_PROMPT_LEN = 1024
SHAREGPT_MAX_TOTAL_LEN = 2048


@dataclass
class SampleRequest:
    prompt_len: int
    expected_output_len: int
    prompt_text: str | None = None
    prompt_token_ids: list[int] | None = None
    # Request fields of this request only (the constraint of a structured-output workload: guided_json, ...).
    extra_body: dict[str, Any] | None = None
    structured_outputs: Any = None      # the same constraint as StructuredOutputsParams fields, for LLM.generate
    # What a chat endpoint gets when it differs from prompt_text (sonnet: prompt_text is already chat-formatted).
    chat_prompt_text: str | None = None

    @property
    def prompt(self) -> str | None:
        """vLLM's field name for the text (``get_samples(...)[i].prompt`` in its examples)."""
        return self.prompt_text

    @property
    def multi_modal_data(self) -> None:
        """vLLM's field: no multimodal data in pagedllm's text-only workloads."""
        return None

    def completion_prompt(self) -> str | list[int]:
        """What a /v1/completions request sends: token ids when known (exact length), else the text."""
        return self.prompt_token_ids if self.prompt_token_ids is not None else self.prompt_text

    def chat_text(self) -> str:
        if self.chat_prompt_text is not None:
            return self.chat_prompt_text
        if self.prompt_text is None:
            raise ValueError("This prompt has no text (no tokenizer was loaded); chat endpoints need one: pass "
                             "--tokenizer.")
        return self.prompt_text

    def llm_prompt(self) -> str | dict:
        """What ``LLM.generate`` gets: a TokensPrompt dict when the ids are known, else the text."""
        if self.prompt_token_ids is not None:
            return {"prompt_token_ids": list(self.prompt_token_ids)}
        return self.prompt_text


# ---- ShareGPT -----------------------------------------------------------------------------------------------------
def is_valid_sharegpt_pair(prompt_len: int, output_len: int, fixed_output_len: bool) -> bool:
    if prompt_len < SHAREGPT_MIN_LEN:
        return False
    if not fixed_output_len and output_len < SHAREGPT_MIN_LEN:
        return False
    return prompt_len <= SHAREGPT_MAX_PROMPT_LEN and prompt_len + output_len <= SHAREGPT_MAX_TOTAL_LEN


def sample_sharegpt(dataset_path: str, num_requests: int, tokenizer, seed: int = 0,
                    output_len: int | None = None, oversample: bool = True,
                    shuffle: bool = True) -> list[SampleRequest]:
    """Conversations with ≥2 turns; prompt = first turn, output length = token length of the reply (or
    ``output_len``); seeded shuffle (unless not ``shuffle``: file order), then vLLM's length filter until
    ``num_requests`` are found. When the file holds too few valid pairs, valid ones are drawn again at random
    (``oversample``), as vLLM does."""
    if tokenizer is None:
        raise ValueError("The sharegpt dataset needs a tokenizer to measure prompts; pass --tokenizer.")
    with open(dataset_path) as f:
        data = json.load(f)
    pairs = [(d["conversations"][0]["value"], d["conversations"][1]["value"])
             for d in data if len(d.get("conversations", [])) >= 2]
    rng = random.Random(seed)
    if shuffle:
        rng.shuffle(pairs)
    requests: list[SampleRequest] = []
    for prompt, reply in pairs:
        if len(requests) == num_requests:
            break
        prompt_len = len(tokenizer(prompt).input_ids)
        out_len = len(tokenizer(reply).input_ids) if output_len is None else output_len
        if not is_valid_sharegpt_pair(prompt_len, out_len, fixed_output_len=output_len is not None):
            continue
        requests.append(SampleRequest(prompt_len=prompt_len, expected_output_len=out_len, prompt_text=prompt))
    if oversample and requests and len(requests) < num_requests:
        extra = rng.choices(requests, k=num_requests - len(requests))
        print(f"Oversampled requests to reach {num_requests} total samples ({len(requests)} valid in the file).",
              file=sys.stderr)
        requests.extend(SampleRequest(**vars(r)) for r in extra)
    if not requests:
        raise ValueError(f"No valid ShareGPT conversation in {dataset_path} (prompt and reply ≥ "
                         f"{SHAREGPT_MIN_LEN} tokens, prompt ≤ {SHAREGPT_MAX_PROMPT_LEN}, "
                         f"total ≤ {SHAREGPT_MAX_TOTAL_LEN}).")
    return requests


# ---- custom: a JSONL file of {"prompt": ...} lines --------------------------------------------------------------
def sample_custom(dataset_path: str, num_requests: int, tokenizer, output_len: int, seed: int = 0,
                  skip_chat_template: bool = False, oversample: bool = True,
                  shuffle: bool = True, chat_template_kwargs: dict | None = None) -> list[SampleRequest]:
    """vLLM's ``custom`` dataset: one JSON object with a ``prompt`` field per line, shuffled with ``seed`` (unless not
    ``shuffle``); each prompt wrapped in the tokenizer's chat template as one user turn (unless
    ``skip_chat_template``), every request asking for ``output_len`` tokens; too few lines are drawn again at random
    to reach ``num_requests`` (``oversample``)."""
    if tokenizer is None:
        raise ValueError("The custom dataset needs a tokenizer to measure prompts; pass --tokenizer.")
    if not dataset_path.endswith(".jsonl"):
        raise ValueError(f"The custom dataset reads a JSONL file (*.jsonl), got {dataset_path!r}.")
    if output_len < 1:
        raise ValueError(f"--custom-output-len must be >= 1, got {output_len}.")
    prompts = []
    with open(dataset_path) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            item = json.loads(line)
            if not isinstance(item, dict) or not isinstance(item.get("prompt"), str):
                raise ValueError(f"{dataset_path}:{lineno}: each line must be a JSON object with a string 'prompt'.")
            prompts.append(item["prompt"])
    if not prompts:
        raise ValueError(f"No prompt in {dataset_path}.")
    rng = random.Random(seed)
    if shuffle:
        rng.shuffle(prompts)
    prompts = prompts[:num_requests]
    if oversample and len(prompts) < num_requests:
        prompts += rng.choices(prompts, k=num_requests - len(prompts))
    requests = []
    for prompt in prompts:
        if not skip_chat_template:
            prompt = _chat_formatted(tokenizer, prompt, chat_template_kwargs)
        requests.append(SampleRequest(prompt_len=len(tokenizer(prompt).input_ids), expected_output_len=output_len,
                                      prompt_text=prompt))
    return requests


# ---- BurstGPT: request and response lengths of a production trace ------------------------------------------------
def sample_burstgpt(dataset_path: str, num_requests: int, tokenizer, seed: int = 0, output_len: int | None = None,
                    oversample: bool = True) -> list[SampleRequest]:
    """vLLM's burstgpt dataset: the rows of BurstGPT's CSV (columns "Model", "Request tokens", "Response tokens")
    served by GPT-4 with a positive response length, drawn at random (again when the file holds fewer than
    ``num_requests``, unless not ``oversample``); each becomes a synthetic prompt of "Request tokens" ids (the i-th
    request the ids i, i+1, ... through the vocabulary, as vLLM's, special tokens skipped) asking for "Response
    tokens" tokens (or ``output_len``)."""
    import csv
    rows = []
    with open(dataset_path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = {"Model", "Request tokens", "Response tokens"} - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{dataset_path} is not a BurstGPT CSV: no column {', '.join(sorted(missing))}.")
        for row in reader:
            if row["Model"] == "GPT-4" and int(float(row["Response tokens"])) > 0:
                rows.append((int(float(row["Request tokens"])), int(float(row["Response tokens"]))))
    if not rows:
        raise ValueError(f"No GPT-4 row with a positive 'Response tokens' in {dataset_path}.")
    rng = np.random.default_rng(seed)
    count = num_requests if oversample else min(num_requests, len(rows))
    picks = rng.choice(len(rows), size=count, replace=count > len(rows))
    vocab = vocab_ids(tokenizer)
    requests = []
    for i, pick in enumerate(picks):
        input_len, response_len = rows[pick]
        ids = [vocab[(i + j) % len(vocab)] for j in range(input_len)]
        requests.append(SampleRequest(prompt_len=input_len,
                                      expected_output_len=output_len if output_len is not None else response_len,
                                      prompt_text=_decode(tokenizer, ids), prompt_token_ids=ids))
    return requests


# ---- txt-slices: windows of one text file -------------------------------------------------------------------------
def sample_txt_slices(dataset_path: str, num_requests: int, tokenizer, input_len: int, output_len: int,
                      seed: int = 0) -> list[SampleRequest]:
    """vLLM's txt-slices dataset: the file's text tokenized once; each prompt is ``input_len`` tokens from a random
    start (wrapping around at the end), decoded to text, its length measured again as the server will count it."""
    if tokenizer is None:
        raise ValueError("The txt-slices dataset needs a tokenizer to cut the text; pass --tokenizer.")
    if dataset_path.startswith(("http://", "https://")):
        raise ValueError(f"--dataset-path {dataset_path}: download the text file and pass its local path (this "
                         "benchmark reads local files).")
    if input_len < 1 or output_len < 1:
        raise ValueError(f"txt-slices needs input and output lengths >= 1, got {input_len} and {output_len}.")
    with open(dataset_path, encoding="utf-8") as f:
        ids = tokenizer(f.read(), add_special_tokens=False).input_ids
    if not ids:
        raise ValueError("The text file is empty or cannot be tokenized.")
    rng = random.Random(seed)
    requests = []
    for _ in range(num_requests):
        start = rng.randrange(len(ids))
        text = tokenizer.decode([ids[(start + j) % len(ids)] for j in range(input_len)], skip_special_tokens=False)
        requests.append(SampleRequest(prompt_len=len(tokenizer(text).input_ids), expected_output_len=output_len,
                                      prompt_text=text))
    return requests


# ---- sonnet: poem lines from a text file ---------------------------------------------------------------------------
SONNET_INSTRUCTION = "Pick as many lines as you can from these poem lines:\n"


def _chat_formatted(tokenizer, text: str, chat_template_kwargs: dict | None = None) -> str:
    """``text`` as one user turn in the tokenizer's chat template (--chat-template-kwargs go to the template)."""
    return tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                         tokenize=False, **(chat_template_kwargs or {}))


def sample_sonnet(dataset_path: str, num_requests: int, tokenizer, input_len: int = 550, output_len: int = 150,
                  prefix_len: int = 200, seed: int = 0,
                  chat_template_kwargs: dict | None = None) -> list[SampleRequest]:
    """vLLM's sonnet dataset (deprecated there, still in its CLI): an instruction, then the file's first lines as a
    shared prefix of about ``prefix_len`` tokens, then lines drawn at random up to about ``input_len`` tokens, all in
    the chat template as one user turn. Prompts whose formatted length exceeds ``input_len`` are drawn again.
    ``prompt_text`` is the formatted prompt (completions), ``chat_prompt_text`` the raw one (chat endpoints)."""
    if tokenizer is None:
        raise ValueError("The sonnet dataset needs a tokenizer to measure prompts; pass --tokenizer.")
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("The sonnet dataset wraps prompts in the tokenizer's chat template, and this tokenizer has "
                         "none.")
    with open(dataset_path, encoding="utf-8") as f:
        lines = f.readlines()
    if not lines:
        raise ValueError(f"No line in {dataset_path}.")
    avg_line_len = sum(len(tokenizer(line).input_ids) for line in lines) / len(lines)
    base_len = len(tokenizer(_chat_formatted(tokenizer, SONNET_INSTRUCTION, chat_template_kwargs)).input_ids)
    if input_len <= base_len:
        raise ValueError(f"--sonnet-input-len must be higher than the base prompt length ({base_len}), got "
                         f"{input_len}.")
    num_input_lines = round((input_len - base_len) / avg_line_len)
    num_prefix_lines = max(round((prefix_len - base_len) / avg_line_len), 0)
    prefix = lines[:num_prefix_lines]
    rng = random.Random(seed)
    requests: list[SampleRequest] = []
    for _ in range(100 * num_requests):        # a bound on redraws (each draw usually fits)
        if len(requests) == num_requests:
            break
        raw = SONNET_INSTRUCTION + "".join(prefix + rng.choices(lines, k=max(num_input_lines - num_prefix_lines, 0)))
        formatted = _chat_formatted(tokenizer, raw, chat_template_kwargs)
        prompt_len = len(tokenizer(formatted).input_ids)
        if prompt_len <= input_len:
            requests.append(SampleRequest(prompt_len=prompt_len, expected_output_len=output_len,
                                          prompt_text=formatted, chat_prompt_text=raw))
    if len(requests) < num_requests:
        raise ValueError(f"Sonnet prompts of at most --sonnet-input-len {input_len} tokens could not be drawn from "
                         f"{dataset_path} with a --sonnet-prefix-len of {prefix_len}: raise the first or lower the "
                         "second.")
    return requests


# ---- synthetic token prompts --------------------------------------------------------------------------------------
def _length_range(length: int, range_ratio: float, minimum: int) -> tuple[int, int]:
    low = max(minimum, math.floor(length * (1 - range_ratio)))
    high = max(low, math.ceil(length * (1 + range_ratio)))
    return low, high


def _decode(tokenizer, ids: list[int]) -> str | None:
    return None if tokenizer is None else tokenizer.decode(ids)


def sample_random(num_requests: int, input_len: int, output_len: int, range_ratio: float = 0.0,
                  prefix_len: int = 0, tokenizer=None, seed: int = 0) -> list[SampleRequest]:
    """Random token prompts: a shared random prefix of ``prefix_len`` tokens, then ``input_len`` tokens; input and
    output lengths uniform in [len·(1−r), len·(1+r)] (vLLM's ``--random-range-ratio``, 0 ≤ r < 1)."""
    if not 0.0 <= range_ratio < 1.0:
        raise ValueError(f"random_range_ratio must be in [0, 1), got {range_ratio}.")
    if input_len < 0 or output_len < 1 or prefix_len < 0:
        raise ValueError(f"random input/prefix lengths must be >= 0 and output length >= 1, got "
                         f"input_len={input_len}, prefix_len={prefix_len}, output_len={output_len}.")
    rng = np.random.default_rng(seed)
    allowed = np.asarray(vocab_ids(tokenizer), dtype=np.int64)
    in_low, in_high = _length_range(input_len, range_ratio, 0 if prefix_len else 1)
    out_low, out_high = _length_range(output_len, range_ratio, 1)
    input_lens = rng.integers(in_low, in_high + 1, size=num_requests)
    output_lens = rng.integers(out_low, out_high + 1, size=num_requests)
    prefix = rng.choice(allowed, size=prefix_len).tolist()
    requests = []
    for i in range(num_requests):
        ids = prefix + rng.choice(allowed, size=int(input_lens[i])).tolist()
        requests.append(SampleRequest(prompt_len=len(ids), expected_output_len=int(output_lens[i]),
                                      prompt_text=_decode(tokenizer, ids), prompt_token_ids=ids))
    return requests


def sample_prefix_repetition(num_requests: int, prefix_len: int, suffix_len: int, num_prefixes: int,
                             output_len: int, tokenizer=None, seed: int = 0) -> list[SampleRequest]:
    """``num_prefixes`` random prefixes, each shared by an equal share of the requests, plus a random suffix per
    request; order shuffled (prefix-cache workload)."""
    if num_prefixes < 1 or prefix_len < 0 or suffix_len < 0 or prefix_len + suffix_len < 1 or output_len < 1:
        raise ValueError("prefix_repetition needs num_prefixes >= 1, prefix_len + suffix_len >= 1, output_len >= 1.")
    rng = np.random.default_rng(seed)
    allowed = np.asarray(vocab_ids(tokenizer), dtype=np.int64)
    prefixes = [rng.choice(allowed, size=prefix_len).tolist() for _ in range(num_prefixes)]
    requests = []
    for i in range(num_requests):
        ids = prefixes[i % num_prefixes] + rng.choice(allowed, size=suffix_len).tolist()
        requests.append(SampleRequest(prompt_len=len(ids), expected_output_len=output_len,
                                      prompt_text=_decode(tokenizer, ids), prompt_token_ids=ids))
    order = rng.permutation(num_requests)
    return [requests[i] for i in order]


# ---- structured output --------------------------------------------------------------------------------------------
_CITIES = ["Paris", "Tokyo", "Lima", "Oslo", "Cairo", "Quito", "Seoul", "Perth"]


def structured_request(kind: str, index: int) -> tuple[str, str, Any]:
    """(prompt, request field, its value) of the ``index``-th structured request: a JSON schema with a few typed,
    bounded fields; a regex (a dated ticket id); a choice among labels. The schema varies with ``index`` (a field
    name), so the grammar cache sees several specs, as a real mix would."""
    city = _CITIES[index % len(_CITIES)]
    if kind == "json-schema":
        schema = {"type": "object",
                  "properties": {"city": {"type": "string", "maxLength": 16},
                                 f"temperature_{index % 4}": {"type": "integer", "minimum": -50, "maximum": 60},
                                 "sky": {"enum": ["clear", "cloudy", "rain", "snow"]},
                                 "wind_kmh": {"type": "number", "minimum": 0, "maximum": 300}},
                  "required": ["city", f"temperature_{index % 4}", "sky", "wind_kmh"],
                  "additionalProperties": False}
        return f"Report today's weather in {city} as a JSON object.", "guided_json", schema
    if kind == "regex":
        return (f"Open a support ticket for the {city} office. Ticket id:", "guided_regex",
                r"[A-Z]{3}-20[0-9]{2}-[0-9]{4} \((low|medium|high)\)")
    if kind == "choice":
        return (f"Is {city} a capital city? Answer:", "guided_choice",
                ["yes", "no", "it used to be", "I am not sure"])
    raise ValueError(f"Unknown structured dataset {kind!r}.")


_FIELD_TO_PARAM = {"guided_json": "json", "guided_regex": "regex", "guided_choice": "choice"}


def sample_structured(kind: str, num_requests: int, output_len: int, tokenizer) -> list[SampleRequest]:
    """Structured-output requests; ``output_len`` is their max_tokens (a grammar usually ends them earlier)."""
    out = []
    for i in range(num_requests):
        prompt, field, value = structured_request(kind, i)
        prompt_len = len(tokenizer.encode(prompt)) if tokenizer is not None else len(prompt.split())
        out.append(SampleRequest(prompt_len, output_len, prompt_text=prompt, extra_body={field: value},
                                 structured_outputs={_FIELD_TO_PARAM[field]: value}))
    return out


# ---- CLI ----------------------------------------------------------------------------------------------------------
def add_dataset_args(parser: argparse.ArgumentParser, default_dataset: str = "random",
                     with_random_lens: bool = True) -> None:
    g = parser.add_argument_group("dataset")
    g.add_argument("--dataset-name", type=str, default=default_dataset,
                   choices=list(DATASET_NAMES) + list(UNSUPPORTED_DATASETS),
                   help="Workload to sample.")
    g.add_argument("--dataset-path", type=str, default=None,
                   help="Path to the dataset file (ShareGPT_V3_unfiltered_cleaned_split.json format for sharegpt, "
                        "BurstGPT's CSV for burstgpt).")
    g.add_argument("--sharegpt-output-len", type=int, default=None,
                   help="Output length of every ShareGPT request (default: the reply's token length).")
    g.add_argument("--custom-output-len", type=int, default=256,
                   help="Output tokens of every request of the custom dataset.")
    g.add_argument("--sonnet-input-len", type=int, default=550, help="Input tokens per sonnet request (at most).")
    g.add_argument("--sonnet-output-len", type=int, default=150, help="Output tokens per sonnet request.")
    g.add_argument("--sonnet-prefix-len", type=int, default=200,
                   help="Tokens of the prefix shared by every sonnet request (about).")
    g.add_argument("--skip-chat-template", action="store_true",
                   help="custom dataset: send the prompts as they are, not wrapped in the chat template.")
    g.add_argument("--no-oversample", action="store_true",
                   help="sharegpt / burstgpt / custom: a file with fewer usable prompts than --num-prompts gives fewer requests "
                        "(default: some are drawn again).")
    g.add_argument("--disable-shuffle", action="store_true",
                   help="sharegpt / custom: take the prompts in file order instead of a seeded shuffle.")
    if with_random_lens:
        g.add_argument("--random-input-len", type=int, default=1024,
                       help="Input tokens per random (and txt-slices) request.")
        g.add_argument("--random-output-len", type=int, default=128,
                       help="Output tokens per random (and txt-slices) request.")
        g.add_argument("--random-range-ratio", type=float, default=0.0,
                       help="Lengths are uniform in [len*(1-r), len*(1+r)], 0 <= r < 1.")
        g.add_argument("--random-prefix-len", type=int, default=0,
                       help="Tokens of one random prefix put before every random prompt.")
    g.add_argument("--prefix-repetition-prefix-len", type=int, default=256)
    g.add_argument("--prefix-repetition-suffix-len", type=int, default=256)
    g.add_argument("--prefix-repetition-num-prefixes", type=int, default=10)
    g.add_argument("--prefix-repetition-output-len", type=int, default=128)
    g.add_argument("--structured-output-len", type=int, default=96,
                   help="max_tokens of json-schema / regex / choice requests (the grammar usually ends them first).")


def _order_flags(args: Any) -> dict[str, bool]:
    """--no-oversample / --disable-shuffle (vLLM's dataset flags) as the samplers' keyword arguments."""
    return {"oversample": not getattr(args, "no_oversample", False),
            "shuffle": not getattr(args, "disable_shuffle", False)}


def sample_requests(args: Any, tokenizer, num_requests: int, *, input_len: int | None = None,
                    output_len: int | None = None, range_ratio: float | None = None,
                    prefix_len: int | None = None) -> list[SampleRequest]:
    """Sample ``num_requests`` from the dataset that ``args`` names (flags of ``add_dataset_args``)."""
    name = args.dataset_name
    if name in UNSUPPORTED_DATASETS:
        raise ValueError(f"--dataset-name {name} is not supported yet: {UNSUPPORTED_DATASETS[name]}.")
    template_kwargs = getattr(args, "chat_template_kwargs", None)
    if template_kwargs is not None and (name not in ("custom", "sonnet") or getattr(args, "skip_chat_template", False)):
        raise ValueError("--chat-template-kwargs applies where the benchmark renders the chat template itself (the "
                         "custom dataset without --skip-chat-template, sonnet); for the server's template send "
                         "--extra-body '{\"chat_template_kwargs\": {...}}'.")
    if name in SYNTHETIC_DATASETS and getattr(args, "dataset_path", None):
        raise ValueError(f"Cannot use the '{name}' dataset with --dataset-path: it is generated, not read. Pass the "
                         f"--dataset-name of your file (sharegpt, custom) to use {args.dataset_path}.")
    if name == "custom":
        if not args.dataset_path:
            raise ValueError("--dataset-name custom needs --dataset-path (a JSONL file of {\"prompt\": ...} lines).")
        return sample_custom(args.dataset_path, num_requests, tokenizer,
                             output_len if output_len is not None else args.custom_output_len, seed=args.seed or 0,
                             skip_chat_template=args.skip_chat_template, chat_template_kwargs=template_kwargs,
                             **_order_flags(args))
    if name == "burstgpt":
        if not args.dataset_path:
            raise ValueError("--dataset-name burstgpt needs --dataset-path (BurstGPT's CSV, e.g. "
                             "BurstGPT_without_fails_2.csv).")
        if input_len is not None:
            raise ValueError("--input-len does not apply to the burstgpt dataset: its rows give the prompt lengths.")
        return sample_burstgpt(args.dataset_path, num_requests, tokenizer, seed=args.seed or 0, output_len=output_len,
                               oversample=_order_flags(args)["oversample"])
    if name == "txt-slices":
        if not args.dataset_path:
            raise ValueError("--dataset-name txt-slices needs --dataset-path (a text file).")
        return sample_txt_slices(args.dataset_path, num_requests, tokenizer,
                                 # vLLM's lengths: --random-input-len / --random-output-len (1024 / 128 where the
                                 # command has no such flag, as bench throughput)
                                 input_len=input_len if input_len is not None else getattr(args, "random_input_len",
                                                                                           1024),
                                 output_len=output_len if output_len is not None else getattr(args, "random_output_len",
                                                                                              128),
                                 seed=args.seed or 0)
    if name == "sonnet":
        if not args.dataset_path:
            raise ValueError("--dataset-name sonnet needs --dataset-path (a text file of poem lines, as vLLM's "
                             "benchmarks/sonnet.txt).")
        return sample_sonnet(args.dataset_path, num_requests, tokenizer,
                             input_len=input_len if input_len is not None else args.sonnet_input_len,
                             output_len=output_len if output_len is not None else args.sonnet_output_len,
                             prefix_len=args.sonnet_prefix_len, seed=args.seed or 0,
                             chat_template_kwargs=template_kwargs)
    if name == "sharegpt":
        if not args.dataset_path:
            raise ValueError("--dataset-name sharegpt needs --dataset-path (a ShareGPT json file).")
        fixed = output_len if output_len is not None else getattr(args, "sharegpt_output_len", None)
        return sample_sharegpt(args.dataset_path, num_requests, tokenizer, seed=args.seed or 0, output_len=fixed,
                               **_order_flags(args))
    if name == "random":
        return sample_random(
            num_requests,
            input_len=input_len if input_len is not None else args.random_input_len,
            output_len=output_len if output_len is not None else args.random_output_len,
            range_ratio=range_ratio if range_ratio is not None else args.random_range_ratio,
            prefix_len=prefix_len if prefix_len is not None else args.random_prefix_len,
            tokenizer=tokenizer, seed=args.seed or 0)
    if name == "prefix_repetition":
        return sample_prefix_repetition(
            num_requests, prefix_len=args.prefix_repetition_prefix_len, suffix_len=args.prefix_repetition_suffix_len,
            num_prefixes=args.prefix_repetition_num_prefixes,
            output_len=output_len if output_len is not None else args.prefix_repetition_output_len,
            tokenizer=tokenizer, seed=args.seed or 0)
    if name in STRUCTURED_DATASETS:
        return sample_structured(name, num_requests,
                                 output_len if output_len is not None else args.structured_output_len, tokenizer)
    raise ValueError(f"Unknown dataset {name!r}; choose from {', '.join(DATASET_NAMES)}.")
