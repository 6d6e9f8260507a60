"""POST /v1/completions: one or more prompts (text or token ids) × n completions, whole or streamed (SSE)."""
from __future__ import annotations

import base64
import binascii
import io
import logging
import time
from dataclasses import dataclass, field
from typing import Any, AsyncIterator

import torch
from fastapi import Request
from fastapi.responses import JSONResponse, StreamingResponse

from pagedllm.entrypoints.openai.protocol import (CompletionLogProbs, CompletionRequest, CompletionResponse,
                                                  CompletionResponseChoice, RequestError, UsageInfo)
from pagedllm.entrypoints.openai.serving_engine import (OpenAIServing, clamp_logprob, error_body, error_response,
                                                        dumps, merge_streams, plain_prompt_logprobs, sse,
                                                        until_disconnected, usage_dict)
from pagedllm.outputs import Logprob

logger = logging.getLogger("pagedllm.entrypoints.openai")


def ids_of(base_id: str, num_prompts: int) -> list[str]:
    """Each prompt's request id: the response's id, with the prompt's index when there are several (vLLM's)."""
    return [base_id] if num_prompts == 1 else [f"{base_id}-{i}" for i in range(num_prompts)]


@dataclass
class _Prompt:
    text: str | None
    ids: list[int]            # a prompt_embeds prompt's: placeholders, one per embedding (never shown)
    embeds: Any = None        # --enable-prompt-embeds: the decoded tensor [num_tokens, hidden_size]


def load_prompt_embeds(data: Any) -> torch.Tensor:
    """One prompt_embeds item: base64 of ``torch.save(tensor)``, read with ``weights_only=True`` (tensors only, no
    pickled code) and sparse tensors checked before they are made dense. Its shape is the input processor's to
    check (``InputProcessor.check_prompt_embeds``, as for offline prompts)."""
    if not isinstance(data, str) or not data:
        raise RequestError("prompt_embeds must be a base64 string (or a list of them) of torch.save(tensor).",
                           "prompt_embeds")
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError("prompt_embeds is not valid base64.", "prompt_embeds") from None
    try:
        with torch.sparse.check_sparse_tensor_invariants():
            tensor = torch.load(io.BytesIO(raw), weights_only=True, map_location="cpu")
            if isinstance(tensor, torch.Tensor) and tensor.layout != torch.strided:
                tensor = tensor.to_dense()
    except Exception as e:       # not a torch.save file, or one holding more than tensors
        raise RequestError(f"prompt_embeds could not be read as a saved tensor: {type(e).__name__}: "
                           f"{str(e)[:200]}", "prompt_embeds") from None
    if not isinstance(tensor, torch.Tensor):
        raise RequestError(f"prompt_embeds must hold one tensor, got {type(tensor).__name__}.", "prompt_embeds")
    return tensor


@dataclass
class _Choice:
    """One completion being gathered from delta outputs."""
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[dict[int, Logprob]] = field(default_factory=list)
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    finished_sent: bool = False
    started: bool = False
    num_tokens: int = 0       # streamed so far (continuous usage reports it per choice, as vLLM)
    text_offset: int = 0


class OpenAIServingCompletion(OpenAIServing):
    async def create_completion(self, req: CompletionRequest, raw_request: Request | None = None):
        try:
            req.check()
            lora = self.check_model(req.model)
            if req.suffix is not None:
                raise RequestError("suffix is not currently supported", "suffix")
            prompts = await self._prompts(req)
            # echo with max_tokens=0 returns the prompt alone (with its logprobs if asked: how lm-eval scores a
            # text); as vLLM, one token is generated and dropped, so the prompt's logprobs come from the engine.
            prompt_only = req.echo and req.max_tokens == 0
            max_tokens_list = [self.resolve_max_tokens(len(p.ids), 1 if prompt_only else req.max_tokens)
                               for p in prompts]
            base_id = f"cmpl-{self.base_request_id(raw_request, req.request_id)}"
            if req.use_beam_search:
                streams = self.beam_search_streams(ids_of(base_id, len(prompts)), [p.ids for p in prompts],
                                                   max_tokens_list, req, lora)
            else:
                params_list = []
                for max_tokens in max_tokens_list:
                    params = self.sampling_params(req, max_tokens, req.logprobs)
                    if req.echo and req.logprobs is not None and params.prompt_logprobs is None:
                        params.prompt_logprobs = req.logprobs   # echo + logprobs returns the prompt's logprobs too
                    params_list.append(params)
                streams = await self.submit(ids_of(base_id, len(prompts)),
                                            [self._engine_prompt(p, req.cache_salt) for p in prompts], params_list,
                                            req.priority, lora_request=lora)
        except Exception as e:
            return error_response(e)
        created = int(time.time())
        if req.stream:
            return StreamingResponse(self._stream(req, base_id, created, prompts, streams, prompt_only),
                                     media_type="text/event-stream")
        result = await until_disconnected(self._gather(req, base_id, created, prompts, streams, prompt_only),
                                          raw_request)
        if result is None:
            return JSONResponse(error_body("Client disconnected", "ClientDisconnected", 499), status_code=499)
        return result

    # ---- prompts --------------------------------------------------------------------------------------------------
    def _embeds_prompts(self, req: CompletionRequest) -> list[_Prompt]:
        """prompt_embeds' prompts (vLLM puts them before those of ``prompt``)."""
        if req.prompt_embeds is None:
            return []
        if not self.engine.config.args.enable_prompt_embeds:
            raise RequestError("You must set `--enable-prompt-embeds` to input `prompt_embeds`.", "prompt_embeds")
        raw = [req.prompt_embeds] if isinstance(req.prompt_embeds, str) else req.prompt_embeds
        if not raw:
            raise RequestError("prompt_embeds must not be empty.", "prompt_embeds")
        out = []
        for item in raw:
            try:        # the offline prompts' checks: [num_tokens, hidden_size] (a batch axis of 1 dropped), ...
                tensor = self.engine.input_processor.check_prompt_embeds({"prompt_embeds": load_prompt_embeds(item)})
            except ValueError as e:
                raise RequestError(str(e), "prompt_embeds") from None
            if not len(tensor):
                raise RequestError("prompt_embeds must hold at least one token's embedding.", "prompt_embeds")
            tensor = self.truncated(tensor, req.truncate_prompt_tokens, req.truncation_side)   # (slices as a list)
            out.append(_Prompt(None, [0] * len(tensor), tensor))
        return out

    async def _prompts(self, req: CompletionRequest) -> list[_Prompt]:
        embedded = self._embeds_prompts(req)
        raw = req.prompt
        if raw is None:
            items: list[Any] = []
        elif isinstance(raw, str):
            items = [raw]
        elif raw and all(isinstance(x, int) for x in raw):
            items = [list(raw)]
        else:
            items = list(raw)
        if not items and not embedded:
            raise RequestError("prompt must not be empty.", "prompt")
        self.check_num_prompts(len(items) + len(embedded), "prompt")
        self.check_n(req.n)
        out = embedded
        for item in items:
            if isinstance(item, str):
                ids = await self.encode(item, add_special_tokens=req.add_special_tokens)
                out.append(_Prompt(item, ids))
            else:
                ids = list(item)
                if not ids:
                    raise RequestError("prompt must not be empty.", "prompt")
                out.append(_Prompt(None, ids))
            out[-1].ids = self.truncated(out[-1].ids, req.truncate_prompt_tokens, req.truncation_side)
            if not out[-1].ids:
                raise RequestError("The decoder prompt cannot be empty", "prompt")
            bad = [t for t in out[-1].ids if not 0 <= t < self.vocab_size]
            if bad:
                raise RequestError(f"Token id {bad[0]} in the prompt is out of vocabulary (vocab size "
                                   f"{self.vocab_size}).", "prompt")
        return out

    @staticmethod
    def _engine_prompt(p: _Prompt, cache_salt: str | None = None) -> dict:
        d: dict = {"prompt_token_ids": p.ids} if p.embeds is None else {"prompt_embeds": p.embeds}
        if p.text is not None:
            d["prompt"] = p.text
        if cache_salt is not None:
            d["cache_salt"] = cache_salt      # prefix-cache isolation: only requests with the same salt share KV
        return d

    async def _prompt_text(self, p: _Prompt) -> str:
        if p.text is not None:
            return p.text
        return await self.decode(p.ids) if self.tokenizer is not None else ""

    # ---- logprobs -------------------------------------------------------------------------------------------------
    def _logprobs(self, token_ids: list[int], entries: list[dict[int, Logprob] | None], k: int,
                  offset: int, as_ids: bool = False) -> CompletionLogProbs:
        lp = CompletionLogProbs()
        for tid, entry in zip(token_ids, entries):
            if entry is None:   # the first prompt token has no logprob
                tok = self.token_str(tid, None, as_ids)
                lp.tokens.append(tok)
                lp.token_logprobs.append(None)
                lp.top_logprobs.append(None)
            else:
                chosen = entry.get(tid)
                tok = self.token_str(tid, chosen.decoded_token if chosen else None, as_ids)
                lp.tokens.append(tok)
                lp.token_logprobs.append(clamp_logprob(chosen.logprob) if chosen else -9999.0)
                # vLLM's shape: the sampled token and the top-k (so k or k+1 entries).
                top = {}
                for i, (t, l) in enumerate(entry.items()):
                    if i > k:
                        break
                    top[self.token_str(t, l.decoded_token, as_ids)] = clamp_logprob(l.logprob)
                lp.top_logprobs.append(top)
            lp.text_offset.append(offset)
            offset += len(tok)
        return lp

    # ---- whole response -------------------------------------------------------------------------------------------
    async def _gather(self, req: CompletionRequest, base_id: str, created: int, prompts: list[_Prompt],
                      streams, prompt_only: bool = False) -> JSONResponse:
        n = req.n
        choices = [[_Choice() for _ in range(n)] for _ in prompts]
        prompt_logprobs: list[Any] = [None] * len(prompts)
        cached = [0] * len(prompts)
        try:
            async for i, out in merge_streams(streams):
                cached[i] = out.num_cached_tokens or 0
                if out.prompt_logprobs is not None:
                    prompt_logprobs[i] = out.prompt_logprobs
                for c in out.outputs:
                    ch = choices[i][c.index]
                    ch.text += c.text
                    ch.token_ids += c.token_ids
                    if c.logprobs:
                        ch.logprobs += c.logprobs
                    if c.finish_reason is not None:
                        ch.finish_reason, ch.stop_reason = c.finish_reason, c.stop_reason
        except Exception as e:
            return error_response(e)
        finally:
            for s in streams:
                s.abort()
        if prompt_only:     # the one generated token is not part of the answer
            for row in choices:
                for ch in row:
                    ch.text, ch.token_ids, ch.logprobs = "", [], []
                    ch.finish_reason, ch.stop_reason = "length", None
        result_choices = []
        num_generated = 0
        for i, p in enumerate(prompts):
            prompt_text = await self._prompt_text(p) if req.echo else ""
            for j, ch in enumerate(choices[i]):
                num_generated += len(ch.token_ids)
                logprobs = None
                if req.logprobs is not None:
                    if req.echo:
                        plp = prompt_logprobs[i] or [None] * len(p.ids)
                        logprobs = self._logprobs(p.ids + ch.token_ids, list(plp) + ch.logprobs, req.logprobs, 0,
                                                  self.tokens_as_ids(req))
                    else:
                        logprobs = self._logprobs(ch.token_ids, ch.logprobs, req.logprobs, 0, self.tokens_as_ids(req))
                if self.log_outputs:
                    self.log_output(ids_of(base_id, len(prompts))[i], ch.text, ch.token_ids, ch.finish_reason)
                result_choices.append(CompletionResponseChoice(
                    index=i * n + j, text=prompt_text + ch.text, logprobs=logprobs,
                    finish_reason=ch.finish_reason, stop_reason=ch.stop_reason,
                    prompt_logprobs=plain_prompt_logprobs(prompt_logprobs[i]) if req.prompt_logprobs is not None
                    else None,
                    token_ids=ch.token_ids if self._return_ids(req) else None,
                    prompt_token_ids=p.ids if self._return_ids(req) and p.embeds is None else None))
        num_prompt = sum(len(p.ids) for p in prompts)
        usage = UsageInfo(prompt_tokens=num_prompt, completion_tokens=num_generated,
                          total_tokens=num_prompt + num_generated,
                          prompt_tokens_details=self.prompt_tokens_details(sum(cached)))
        resp = CompletionResponse(id=base_id, created=created, model=self.models.response_model(req.model), choices=result_choices,
                                  usage=usage)
        return JSONResponse(resp.model_dump(exclude_none=False, exclude={"choices": {"__all__": self._optional(req)}}))

    def _return_ids(self, req: CompletionRequest) -> bool:
        # Without a tokenizer the text is empty: the token ids are the only content, so they are always returned.
        return bool(req.return_token_ids) or self.tokenizer is None

    def _optional(self, req: CompletionRequest) -> set[str]:
        """Choice fields left out unless asked for (vLLM's default JSON has none of them)."""
        drop = set()
        if req.prompt_logprobs is None:
            drop.add("prompt_logprobs")
        if not self._return_ids(req):
            drop |= {"token_ids", "prompt_token_ids"}
        return drop

    # ---- streaming ------------------------------------------------------------------------------------------------
    async def _stream(self, req: CompletionRequest, base_id: str, created: int, prompts: list[_Prompt],
                      streams, prompt_only: bool = False) -> AsyncIterator[str]:
        n = req.n
        include_usage, continuous = self.stream_usage(req)
        return_ids = self._return_ids(req)
        choices = [[_Choice() for _ in range(n)] for _ in prompts]
        num_prompt = sum(len(p.ids) for p in prompts)
        num_generated = 0
        cached = [0] * len(prompts)
        request_ids = ids_of(base_id, len(prompts))
        head = (f'data: {{"id":{dumps(base_id)},"object":"text_completion","created":{created},'
                f'"model":{dumps(self.models.response_model(req.model))},"choices":[')
        tail = '}],"usage":null}\n\n' if include_usage else '}]}\n\n'
        try:
            async for i, out in merge_streams(streams):
                cached[i] = out.num_cached_tokens or 0
                for c in out.outputs:
                    ch = choices[i][c.index]
                    if ch.finished_sent:
                        continue
                    text, token_ids = c.text, list(c.token_ids)
                    entries = list(c.logprobs or [None] * len(token_ids))
                    finish_reason, stop_reason = c.finish_reason, c.stop_reason
                    if prompt_only:     # one chunk of the prompt alone, once the dropped token is out
                        if finish_reason is None:
                            continue
                        text, token_ids, entries, finish_reason, stop_reason = "", [], [], "length", None
                    elif not text and not token_ids and finish_reason is None:
                        continue
                    logprobs = None
                    lp_ids = token_ids
                    first_chunk = not ch.started
                    if req.echo and first_chunk:
                        prompt_text = await self._prompt_text(prompts[i])
                        text = prompt_text + text
                        # The first chunk carries the prompt's logprobs too, as the whole response does.
                        lp_ids = prompts[i].ids + token_ids
                        entries = list(out.prompt_logprobs or [None] * len(prompts[i].ids)) + entries
                    ch.started = True
                    if req.logprobs is not None:
                        lp = self._logprobs(lp_ids, entries, req.logprobs, ch.text_offset, self.tokens_as_ids(req))
                        ch.text_offset = lp.text_offset[-1] + len(lp.tokens[-1]) if lp.tokens else ch.text_offset
                        logprobs = lp.model_dump()
                    num_generated += len(token_ids)
                    ch.num_tokens += len(token_ids)
                    # Built as text (this runs once per token per stream: the server's hottest path).
                    choice = (f'{{"index":{i * n + c.index},"text":{dumps(text)},"logprobs":{dumps(logprobs)},'
                              f'"finish_reason":{dumps(finish_reason)},"stop_reason":{dumps(stop_reason)}')
                    if return_ids:
                        choice += f',"token_ids":{dumps(token_ids)}'
                        if first_chunk and prompts[i].embeds is None:   # once per choice, as vLLM's stream
                            choice += f',"prompt_token_ids":{dumps(prompts[i].ids)}'
                    if continuous:
                        usage = usage_dict(len(prompts[i].ids), ch.num_tokens, self.prompt_tokens_details(cached[i]))
                        tail = f'}}],"usage":{dumps(usage)}}}\n\n'
                    if finish_reason is not None:
                        ch.finished_sent = True
                    if self.log_outputs:
                        generated = "" if prompt_only else c.text
                        ch.text += generated       # logged whole when the stream ends
                        if self.log_deltas and generated:
                            self.log_output(request_ids[i], generated, token_ids, finish_reason, "delta")
                    yield head + choice + tail
            if self.log_outputs:
                for rid, row in zip(request_ids, choices):
                    for ch in row:
                        self.log_output(rid, ch.text, None, "streaming_complete", "complete")
            if include_usage:
                yield sse({"id": base_id, "object": "text_completion", "created": created, "model": self.models.response_model(req.model),
                           "choices": [], "usage": usage_dict(num_prompt, num_generated,
                                                              self.prompt_tokens_details(sum(cached)))})
        except Exception as e:   # after the 200 went out, errors travel in the stream (vLLM's format)
            logger.warning("Error while streaming %s: %r", base_id, e)
            body = error_response(e).body
            yield f"data: {body.decode()}\n\n"
        finally:
            for s in streams:
                s.abort()
        yield "data: [DONE]\n\n"
