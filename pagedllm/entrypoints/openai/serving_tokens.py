"""POST /inference/v1/generate: vLLM's token-in, token-out route (RL trainers, disaggregated front ends, its
examples/generate/token_generation_client.py). The prompt is token ids, the settings a SamplingParams dict
(``max_tokens`` unset: the rest of the context, as the OpenAI routes), and the answer token ids per choice, with
logprobs as "token_id:<id>" strings; ``stream`` sends each step's new ids as SSE chunks."""
from __future__ import annotations

from typing import AsyncIterator

from fastapi import Request
from fastapi.responses import JSONResponse, StreamingResponse

from pagedllm.entrypoints.generate_route import SAMPLING_PARAMS_FIELDS
from pagedllm.entrypoints.openai.protocol import GenerateTokensRequest, RequestError
from pagedllm.entrypoints.openai.serving_chat import OpenAIServingChat
from pagedllm.entrypoints.openai.serving_engine import (error_response, guess_param, plain_prompt_logprobs, sse,
                                                        until_disconnected, usage_dict)
from pagedllm.sampling_params import RequestOutputKind, SamplingParams

class OpenAIServingTokens:
    def __init__(self, chat: OpenAIServingChat):
        self.chat = chat      # its checks, submission and logprob format serve this route too

    def _params(self, req: GenerateTokensRequest) -> SamplingParams:
        fields = dict(req.sampling_params)
        unknown = sorted(set(fields) - SAMPLING_PARAMS_FIELDS)
        if unknown:
            raise RequestError(f"Unknown field {unknown[0]!r:.80} in sampling_params: it takes SamplingParams' "
                               f"fields.", f"sampling_params.{unknown[0][:80]}")
        fields["max_tokens"] = self.chat.resolve_max_tokens(len(req.token_ids), fields.get("max_tokens"))
        try:
            params = SamplingParams(**{**fields, "output_kind": RequestOutputKind.DELTA})
        except (TypeError, ValueError) as e:
            param = guess_param(str(e))
            raise RequestError(str(e), f"sampling_params.{param}" if param else "sampling_params") from None
        self.chat.check_n(params.n)
        return params

    def _logprobs(self, token_ids: list[int], entries: list, k: int | None) -> dict | None:
        if k is None:
            return None
        return self.chat._logprobs(token_ids, entries, max(k, 1), as_ids=True).model_dump()

    async def create_token_generation(self, req: GenerateTokensRequest, raw_request: Request | None = None):
        try:
            lora = self.chat.check_model(req.model)
            if req.kv_transfer_params is not None:
                raise RequestError("kv_transfer_params (disaggregated prefill) is not supported by pagedllm yet.",
                                   "kv_transfer_params")
            if req.features is not None:
                raise RequestError("features (multimodal inputs) are not supported by pagedllm yet.", "features")
            if req.stream_options is not None and not req.stream:
                raise RequestError("Stream options can only be defined when `stream=True`.", "stream_options")
            params = self._params(req)
            request_id = f"generate-tokens-{self.chat.base_request_id(raw_request, req.request_id)}"
            prompt = {"prompt_token_ids": list(req.token_ids)}
            if req.cache_salt is not None:
                prompt["cache_salt"] = req.cache_salt
            (stream,) = await self.chat.submit([request_id], [prompt], [params], req.priority, lora_request=lora)
        except Exception as e:
            return error_response(e)
        if req.stream:
            return StreamingResponse(self._stream(req, request_id, params, stream), media_type="text/event-stream")
        result = await until_disconnected(self._gather(request_id, params, stream), raw_request)
        if result is None:
            return JSONResponse({}, status_code=499)
        return result

    async def _gather(self, request_id: str, params: SamplingParams, stream) -> JSONResponse:
        tokens: list[list[int]] = [[] for _ in range(params.n)]
        lps: list[list] = [[] for _ in range(params.n)]
        finish: list[str | None] = [None] * params.n
        prompt_logprobs = None
        try:
            async for out in stream:
                if out.prompt_logprobs is not None:
                    prompt_logprobs = out.prompt_logprobs
                for c in out.outputs:
                    tokens[c.index] += c.token_ids
                    lps[c.index] += c.logprobs or []
                    finish[c.index] = c.finish_reason or finish[c.index]
        except Exception as e:
            return error_response(e)
        finally:
            stream.abort()
        choices = [{"index": i, "logprobs": self._logprobs(tokens[i], lps[i], params.logprobs),
                    "finish_reason": finish[i] or "stop", "token_ids": tokens[i], "routed_experts": None}
                   for i in range(params.n)]
        return JSONResponse({"request_id": request_id, "choices": choices,
                             "prompt_logprobs": plain_prompt_logprobs(prompt_logprobs), "kv_transfer_params": None})

    async def _stream(self, req: GenerateTokensRequest, request_id: str, params: SamplingParams,
                      stream) -> AsyncIterator[str]:
        include_usage, continuous = self.chat.stream_usage(req)
        prompt_len, generated = len(req.token_ids), [0] * params.n
        try:
            async for out in stream:
                for c in out.outputs:
                    generated[c.index] += len(c.token_ids)
                    if not c.token_ids:
                        continue
                    chunk = {"request_id": request_id, "choices": [{
                        "index": c.index, "logprobs": self._logprobs(list(c.token_ids), c.logprobs or [],
                                                                     params.logprobs),
                        "finish_reason": c.finish_reason, "token_ids": list(c.token_ids), "routed_experts": None}],
                        "usage": usage_dict(prompt_len, generated[c.index]) if continuous else None}
                    yield sse(chunk)
            if include_usage:
                yield sse({"request_id": request_id, "choices": [], "usage": usage_dict(prompt_len, sum(generated))})
        except Exception as e:
            yield sse(error_response(e).body.decode())
        finally:
            stream.abort()
        yield sse("[DONE]")
