"""/v1/embeddings, /pooling, /classify, /score and /rerank: pooling requests through the same engine, scheduler and
token budget as generation (one request per input; its one step pools the prompt into a vector: an embedding, or a
classifier's class probabilities). /score and /rerank give a cross-encoder's score of each pair read as one prompt, or
the cosine of an embedding model's two embeddings."""
from __future__ import annotations

import base64
import json
import time
from typing import Any

import torch
from fastapi import Request
from fastapi.responses import JSONResponse, Response

from pagedllm.engine.input_processor import context_overflow_message
from pagedllm.entrypoints.chat_utils import score_template_text
from pagedllm.entrypoints.openai.protocol import (ClassificationRequest, EmbeddingRequest, PoolingInputRequest,
                                                  PoolingRequest, RequestError, RerankRequest, ScoreRequest)
from pagedllm.entrypoints.openai.serving_chat import conversation
from pagedllm.entrypoints.openai.serving_engine import (OpenAIServing, check_unicode, merge_streams, until_disconnected,
                                                     usage_dict)
from pagedllm.entrypoints.pooling.utils import encode_pooling_bytes, pair_score
from pagedllm.outputs import PoolingOutput, PoolingRequestOutput, ScoringOutput
from pagedllm.pooling_params import PoolingParams
from pagedllm.utils.serial_utils import tensor2binary


def encode_vector(vector: torch.Tensor, req: EmbeddingRequest) -> list[float] | str:
    """float: a JSON list; base64: the bytes of the values in the request's embed_dtype and endianness (by default
    native float32, what the openai client decodes with numpy)."""
    if req.encoding_format == "base64":
        return base64.b64encode(tensor2binary(vector, req.embed_dtype, req.endianness)).decode("ascii")
    return vector.tolist()


def _named_field(error: ValueError, fields) -> str | None:
    """The request field a PoolingParams error is about, for the 400's ``param``: the one its message starts with
    ("use_activation=False contradicts normalize=True"), else the first it names."""
    text = str(error).lower()
    return next((name for name in fields if text.startswith(f"{name}=")), None) or next(
        (name for name in fields if name in text), None)


class OpenAIServingPooling(OpenAIServing):
    def check_pooling_model(self, api: str) -> None:
        if not self.engine.config.is_pooling:
            raise RequestError(f"The model does not support {api} API: it is a text generation model (start the "
                               f"server with --runner pooling to use it as an embedding model).", "model")

    def check_pooling_task(self, task: str, param: str = "model") -> None:
        """A 400 with vLLM's message for a task this model does not run (classify on an embedder, embed on a
        classifier, score on a classifier of several labels)."""
        try:
            self.engine.config.verify_pooling_task(task)
        except ValueError as e:
            raise RequestError(str(e), param) from None

    def _chunked_embed_len(self) -> int | None:
        """pooler_config enable_chunked_processing (/v1/embeddings): the longest input taken, max_embed_len (0: no
        cap); None when inputs are limited to max_model_len."""
        pooler = self.engine.config.args.pooler_config
        if pooler is None or not pooler.enable_chunked_processing:
            return None
        return pooler.max_embed_len or 0

    def _check_ids(self, ids: list[int], field: str, chunked: int | None = None) -> None:
        """Valid token ids within max_model_len, or within ``chunked`` (_chunked_embed_len) when not None."""
        if not ids:
            raise RequestError(f"{field} must not contain an empty text or token list.", field)
        bad = [t for t in ids if not 0 <= t < self.vocab_size]
        if bad:
            raise RequestError(f"Token id {bad[0]} in {field} is out of vocabulary (vocab size "
                               f"{self.vocab_size}).", field)
        if chunked is not None:
            if chunked and len(ids) > chunked:
                raise RequestError(f"This model's max_embed_len is {chunked} tokens (pooler_config). However, you "
                                   f"requested {len(ids)} tokens in the input for embedding generation. Please "
                                   f"reduce the length of the input.", field)
        elif len(ids) > self.max_model_len:
            raise RequestError(context_overflow_message(self.max_model_len, len(ids), 0), "input_tokens")

    async def _prompts(self, inputs: Any, params: PoolingParams, field: str = "input",
                       chunked: int | None = None, add_special_tokens: bool = True) -> list[dict]:
        """Each input (a string, tokenized with or without the tokenizer's special tokens, or token ids) as a
        tokenized prompt, truncated as asked, within max_model_len (or ``chunked``, see _check_ids)."""
        if isinstance(inputs, str) or (isinstance(inputs, list) and inputs and isinstance(inputs[0], int)):
            inputs = [inputs]
        if not isinstance(inputs, list) or not inputs:
            raise RequestError(f"{field} must not be empty.", field)
        self.check_num_prompts(len(inputs), field)
        check_unicode(inputs, field)
        processor = self.engine.input_processor
        limit = None
        if params.truncate_prompt_tokens is not None:
            try:
                limit = processor.truncation_limit(params)
            except ValueError as e:
                raise RequestError(str(e), "truncate_prompt_tokens") from None
        prompts = []
        for item in inputs:
            if isinstance(item, str):
                self.need_tokenizer("A text input")
                ids = await self.run_tokenizer(processor.encode_for_pooling, item, params, add_special_tokens)
                prompt = {"prompt": item, "prompt_token_ids": ids}
            else:
                ids = list(item) if limit is None else list(item)[-limit:]
                prompt = {"prompt_token_ids": ids}
            self._check_ids(ids, field, chunked)
            prompts.append(prompt)
        return prompts

    async def _request_prompts(self, req: PoolingInputRequest, params: PoolingParams,
                               chunked: int | None = None) -> list[dict]:
        """``input``'s prompts, or each conversation of ``messages`` rendered by the chat template into one prompt
        (as vLLM: one conversation, or a batch of them)."""
        chats = req.conversations()
        if chats is None:
            return await self._prompts(req.input, params, chunked=chunked, add_special_tokens=req.special_tokens())
        self.check_num_prompts(len(chats), "messages")
        rendered = [await self.render_chat(
            conversation(chat), chat_template=req.chat_template, add_generation_prompt=req.add_generation_prompt,
            continue_final_message=req.continue_final_message, tools=None,
            chat_template_kwargs=req.chat_template_kwargs, add_special_tokens=req.special_tokens()) for chat in chats]
        return await self._prompts(rendered, params, "messages", chunked)

    def _request_id(self, prefix: str, req: Any, raw_request: Request | None) -> str:
        """The response's id, which its prompts' engine ids start with: ``prefix``-, then the X-Request-Id header,
        else the body's request_id, else a random id (vLLM's rule, as chat and completions)."""
        return f"{prefix}-{self.base_request_id(raw_request, req.request_id)}"

    async def _run(self, request_id: str, prompts: list[dict], params: PoolingParams, priority: int,
                   raw_request: Request | None) -> list | None:
        """Every prompt's PoolingRequestOutput, in input order (None when the client went away)."""
        ids = [f"{request_id}-{i}" for i in range(len(prompts))]
        try:
            self.engine.config.verify_priority(priority)
        except ValueError as e:
            raise RequestError(str(e), "priority") from None
        streams = await self.submit(ids, prompts, [params] * len(prompts), priority)

        async def gather() -> list:
            results: list = [None] * len(prompts)
            async for i, out in merge_streams(streams):
                results[i] = out
            return results
        return await until_disconnected(gather(), raw_request)

    async def _run_chunked(self, request_id: str, prompts: list[dict], params: PoolingParams, priority: int,
                           raw_request: Request | None) -> list | None:
        """vLLM's long-text embedding (pooler_config enable_chunked_processing): each prompt in max_model_len
        chunks, its embedding the chunks' mean weighted by their token counts (float32)."""
        size = self.max_model_len
        pieces = [(i, {"prompt_token_ids": p["prompt_token_ids"][start:start + size]})
                  for i, p in enumerate(prompts) for start in range(0, len(p["prompt_token_ids"]), size)]
        outputs = await self._run(request_id, [piece for _, piece in pieces], params, priority, raw_request)
        if outputs is None:
            return None
        sums: list = [None] * len(prompts)
        for (i, piece), out in zip(pieces, outputs):
            weighted = out.outputs.data.to(torch.float32) * len(piece["prompt_token_ids"])
            sums[i] = weighted if sums[i] is None else sums[i] + weighted
        return [PoolingRequestOutput(f"{request_id}-{i}", PoolingOutput(total / len(p["prompt_token_ids"])),
                                     p["prompt_token_ids"], prompt=p.get("prompt"))
                for i, (total, p) in enumerate(zip(sums, prompts))]

    def _params(self, req: PoolingInputRequest, task: str) -> PoolingParams:
        """The request's PoolingParams for ``task``; a field the task does not take is a 400 naming it."""
        self.check_pooling_task(task, "task" if getattr(req, "task", None) else "model")
        fields = {name: getattr(req, name) for name in ("dimensions", "normalize", "use_activation", "activation")
                  if getattr(req, name, None) is not None}
        try:        # PoolingParams maps an embedding's use_activation (vLLM's newer name) to normalize
            params = PoolingParams(truncate_prompt_tokens=req.truncate_prompt_tokens, task=task, **fields)
            self.engine.config.verify_dimensions(params)
        except ValueError as e:
            raise RequestError(str(e), _named_field(e, ("truncate_prompt_tokens", *fields))) from None
        return params

    def _body(self, request_id: str, data: list[dict], outputs: list) -> JSONResponse:
        num_tokens = sum(len(o.prompt_token_ids) for o in outputs)
        return JSONResponse({"id": request_id, "object": "list", "created": int(time.time()),
                             "model": self.model_name, "data": data, "usage": usage_dict(num_tokens, 0)})

    def _bytes_body(self, request_id: str, req: EmbeddingRequest, outputs: list) -> Response:
        """encoding_format bytes / bytes_only: the vectors' bytes as the body; with bytes, a "metadata" header
        holds the id, created, model, usage and where each vector lies (vLLM's response)."""
        body, items = encode_pooling_bytes([o.outputs.data for o in outputs], req.embed_dtype, req.endianness)
        headers = None
        if req.encoding_format == "bytes":
            num_tokens = sum(len(o.prompt_token_ids) for o in outputs)
            headers = {"metadata": json.dumps({
                "id": request_id, "created": int(time.time()), "model": self.model_name,
                "data": items, "usage": {"prompt_tokens": num_tokens, "total_tokens": num_tokens}})}
        return Response(content=body, headers=headers, media_type="application/octet-stream")

    async def create_embedding(self, req: EmbeddingRequest, raw_request: Request | None = None):
        self.check_model(req.model)
        self.check_pooling_model("Embeddings")
        params = self._params(req, "embed")
        chunked = self._chunked_embed_len()
        prompts = await self._request_prompts(req, params, chunked)
        request_id = self._request_id("embd", req, raw_request)
        if chunked is not None:
            outputs = await self._run_chunked(request_id, prompts, params, req.priority, raw_request)
        else:
            outputs = await self._run(request_id, prompts, params, req.priority, raw_request)
        if outputs is None:
            return JSONResponse({}, status_code=499)
        if req.encoding_format in ("bytes", "bytes_only"):
            return self._bytes_body(request_id, req, outputs)
        data = [{"index": i, "object": "embedding", "embedding": encode_vector(o.outputs.data, req)}
                for i, o in enumerate(outputs)]
        return self._body(request_id, data, outputs)

    async def create_pooling(self, req: PoolingRequest, raw_request: Request | None = None):
        self.check_model(req.model)
        self.check_pooling_model("Pooling")
        # No task: the model's own (a classifier's class probabilities, an embedder's vector), as vLLM's.
        model = self.engine.config.model
        default = self.engine.config.pooling_task or (
            "token_classify" if model.is_token_classifier else "classify" if model.is_classifier else "encode")
        params = self._params(req, req.task or default)
        request_id = self._request_id("pool", req, raw_request)
        outputs = await self._run(request_id, await self._request_prompts(req, params), params, req.priority,
                                  raw_request)
        if outputs is None:
            return JSONResponse({}, status_code=499)
        if req.encoding_format in ("bytes", "bytes_only"):
            return self._bytes_body(request_id, req, outputs)
        data = [{"index": i, "object": "pooling", "data": encode_vector(o.outputs.data, req)}
                for i, o in enumerate(outputs)]
        return self._body(request_id, data, outputs)

    async def create_classify(self, req: ClassificationRequest, raw_request: Request | None = None):
        """vLLM's /classify: per input its class probabilities (``probs``, ``num_classes``) and the label of the
        likeliest (the checkpoint's ``id2label``)."""
        self.check_model(req.model)
        self.check_pooling_model("Classification")
        params = self._params(req, "classify")
        request_id = self._request_id("classify", req, raw_request)
        outputs = await self._run(request_id, await self._request_prompts(req, params), params, req.priority,
                                  raw_request)
        if outputs is None:
            return JSONResponse({}, status_code=499)
        id2label = getattr(self.engine.config.hf_config, "id2label", None) or {}
        data = []
        for i, out in enumerate(outputs):
            probs = out.outputs.data.tolist()
            label = id2label.get(int(out.outputs.data.argmax()))
            data.append({"index": i, "label": label, "probs": probs, "num_classes": len(probs)})
        return self._body(request_id, data, outputs)

    async def _pair_scores(self, request_id: str, first: list[str], second: list[str], names: tuple[str, str],
                           req: ScoreRequest | RerankRequest,
                           raw_request: Request | None) -> tuple[list[float], list] | None:
        """Each (first[i], second[i]) pair's score, and every output (None when the client went away); ``first``
        may be one text scored against each of ``second``. A cross-encoder reads each pair as one prompt and gives
        its score; an embedding model gives the cosine of the two texts' embeddings (one text against several is
        embedded once, as vLLM's and LLM.score)."""
        one = len(first) == 1
        if one:
            first = first * len(second)
        self.check_num_prompts(len(second), names[1])
        if not second:
            raise RequestError(f"{names[1]} must not be empty.", names[1])
        if len(first) != len(second):
            raise RequestError(f"{names[0]} must be one text or as many as {names[1]} (got {len(first)} and "
                               f"{len(second)}).", names[0])
        if self.engine.config.model.is_classifier:
            return await self._cross_encoder_scores(request_id, first, second, names, req, raw_request)
        if req.score_template_kwargs() is not None:
            field = "instruction" if req.instruction is not None else "chat_template_kwargs"
            raise RequestError(f"{field} is a variable of a cross-encoder's score template; this embedding model "
                               f"scores the cosine of two embeddings.", field)
        late = self.engine.config.late_interaction       # pooler_config task token_embed: MaxSim, as vLLM's
        try:
            # The cosine does not depend on the norms: use_activation (normalize) changes nothing here.
            params = PoolingParams(normalize=True, truncate_prompt_tokens=req.truncate_prompt_tokens,
                                   task="token_embed" if late else "embed")
        except ValueError as e:
            raise RequestError(str(e), "truncate_prompt_tokens") from None
        given = first[:1] if one else first
        prompts = await self._prompts(given, params, names[0]) + await self._prompts(second, params, names[1])
        outputs = await self._run(request_id, prompts, params, req.priority, raw_request)
        if outputs is None:
            return None
        n = len(given)
        # Each pair's output counts in the usage, the shared text's too (vLLM's usage: its tokens once per pair).
        firsts = outputs[:n] * len(second) if one else outputs[:n]
        scores = [pair_score(a.outputs.data, b.outputs.data, late) for a, b in zip(firsts, outputs[n:])]
        return scores, firsts + outputs[n:]

    async def _cross_encoder_scores(self, request_id: str, first: list[str], second: list[str], names: tuple[str, str],
                                    req: ScoreRequest | RerankRequest,
                                    raw_request: Request | None) -> tuple[list[float], list] | None:
        self.check_pooling_task("score")
        self.need_tokenizer("Scoring a text pair")
        fields = {name: getattr(req, name) for name in ("use_activation", "activation")
                  if getattr(req, name) is not None}
        try:
            params = PoolingParams(truncate_prompt_tokens=req.truncate_prompt_tokens, task="score", **fields)
            if params.truncate_prompt_tokens is not None:
                self.engine.input_processor.truncation_limit(params)
        except ValueError as e:
            raise RequestError(str(e), _named_field(e, ("truncate_prompt_tokens", *fields))) from None
        check_unicode(first, names[0])
        check_unicode(second, names[1])
        template_kwargs = req.score_template_kwargs()
        if template_kwargs is not None and self.chat_template is None:
            field = "instruction" if req.instruction is not None else "chat_template_kwargs"
            raise RequestError(f"{field} is a variable of the score template, and this server has none: start it "
                               f"with --chat-template (the model's score template, e.g. qwen3_reranker.jinja).", field)
        prompts = []
        for a, b in zip(first, second):
            if self.chat_template is not None:        # --chat-template: the model's score template, as vLLM's
                prompt = {"prompt_token_ids": await self.run_tokenizer(self._score_template_ids, a, b, params,
                                                                       template_kwargs)}
            else:
                prompt = await self.run_tokenizer(self.engine.input_processor.encode_pair_for_pooling, a, b, params)
            self._check_ids(prompt["prompt_token_ids"], names[1])
            prompts.append(prompt)
        outputs = await self._run(request_id, prompts, params, req.priority, raw_request)
        if outputs is None:
            return None
        return [ScoringOutput.from_base(o.outputs).score for o in outputs], outputs

    def _score_template_ids(self, query: str, document: str, params: PoolingParams,
                            template_kwargs: dict | None) -> list[int]:
        try:
            text = score_template_text(self.tokenizer, self.chat_template, query, document, template_kwargs)
        except ValueError as e:
            raise RequestError(str(e), "chat_template_kwargs" if template_kwargs else "chat_template") from None
        return self.engine.input_processor.encode_for_pooling(text, params)

    async def create_score(self, req: ScoreRequest, raw_request: Request | None = None):
        """Each pair's score (a cross-encoder's, or the cosine of an embedding model's embeddings); text_1 is one
        text against each of text_2, or pairwise (the pair may be spelled queries / documents, queries / items or
        data_1 / data_2, as vLLM's)."""
        self.check_model(req.model)
        self.check_pooling_model("Score")
        first = [req.text_1] if isinstance(req.text_1, str) else list(req.text_1)
        second = [req.text_2] if isinstance(req.text_2, str) else list(req.text_2)
        request_id = self._request_id("score", req, raw_request)
        scored = await self._pair_scores(request_id, first, second, req.pair_names, req, raw_request)
        if scored is None:
            return JSONResponse({}, status_code=499)
        scores, outputs = scored
        data = [{"index": i, "object": "score", "score": score} for i, score in enumerate(scores)]
        return self._body(request_id, data, outputs)

    async def create_rerank(self, req: RerankRequest, raw_request: Request | None = None):
        """Jina / Cohere rerank: each document scored against the query as /score does, best first, the first
        ``top_n`` (all when 0); ``index`` is the document's place in the request."""
        self.check_model(req.model)
        self.check_pooling_model("Rerank")
        request_id = self._request_id("rerank", req, raw_request)
        scored = await self._pair_scores(request_id, [req.query], list(req.documents), ("query", "documents"), req,
                                         raw_request)
        if scored is None:
            return JSONResponse({}, status_code=499)
        scores, outputs = scored
        order = sorted(range(len(scores)), key=lambda i: scores[i], reverse=True)
        results = []
        for i in order[:req.top_n or len(order)]:
            result: dict[str, Any] = {"index": i, "relevance_score": scores[i]}
            if req.return_documents:
                result["document"] = {"text": req.documents[i]}
            results.append(result)
        num_tokens = sum(len(o.prompt_token_ids) for o in outputs)
        return JSONResponse({"id": request_id, "model": self.model_name,
                             "usage": {"prompt_tokens": num_tokens, "total_tokens": num_tokens},
                             "results": results})
