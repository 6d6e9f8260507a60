"""vLLM's beam search, over any engine: each step extends every live beam by one token (a one-token request with
``2 * beam_width`` logprobs per beam), every EOS candidate completes, the best ``beam_width`` others stay live; the
answer is the best ``beam_width`` of the completed and live beams by ``cum_logprob / len(tokens) ** length_penalty``
(length with the prompt, without a final EOS). ``LLM.beam_search`` runs the steps with ``LLM.generate``;
``beam_search_async`` with an ``AsyncLLMEngine`` (the server's ``use_beam_search``)."""
from __future__ import annotations

import asyncio
from typing import Any, Sequence

from pagedllm.outputs import BeamSearchSequence, Logprob
from pagedllm.sampling_params import BeamSearchParams, SamplingParams


def check_logprobs_mode(mode: str) -> None:
    """Beams are scored by summed log-probabilities: an engine whose logprobs are logits (vLLM's logprobs_mode
    raw_logits / processed_logits) cannot rank them."""
    if mode.endswith("_logits"):
        raise ValueError(f"beam search scores beams by their log-probabilities, and this engine returns logits "
                         f"(logprobs_mode={mode!r}); start it with logprobs_mode raw_logprobs or processed_logprobs.")


def step_params(params: BeamSearchParams) -> SamplingParams:
    """One beam step: one token, with ``2 * beam_width`` logprobs to choose from."""
    return SamplingParams(logprobs=2 * params.beam_width, max_tokens=1, temperature=params.temperature,
                          detokenize=False)


def beam_score(seq: BeamSearchSequence, eos_ids: frozenset[int] | set[int], length_penalty: float) -> float:
    length = len(seq.tokens)
    if seq.tokens and seq.tokens[-1] in eos_ids:
        length -= 1
    return seq.cum_logprob / (length ** length_penalty)


def extend_beams(live: Sequence[BeamSearchSequence], step_logprobs: Sequence[dict[int, Logprob]],
                 params: BeamSearchParams, eos_ids: frozenset[int] | set[int],
                 done: list[BeamSearchSequence]) -> list[BeamSearchSequence]:
    """The next live beams from each live beam's step logprobs; EOS candidates go to ``done`` (unless
    ignore_eos)."""
    candidates = [BeamSearchSequence(tokens=seq.tokens + [token_id], logprobs=seq.logprobs + [top],
                                     cum_logprob=seq.cum_logprob + lp.logprob, lora_request=seq.lora_request)
                  for seq, top in zip(live, step_logprobs) for token_id, lp in top.items()]
    candidates.sort(key=lambda s: beam_score(s, eos_ids, params.length_penalty), reverse=True)
    nxt: list[BeamSearchSequence] = []
    for cand in candidates:
        if cand.tokens[-1] in eos_ids and not params.ignore_eos:
            cand.finish_reason, cand.stop_reason = "stop", cand.tokens[-1]
            done.append(cand)
        elif len(nxt) < params.beam_width:
            nxt.append(cand)
    return nxt


def best_beams(done: list[BeamSearchSequence], live: list[BeamSearchSequence], params: BeamSearchParams,
               eos_ids: frozenset[int] | set[int]) -> list[BeamSearchSequence]:
    for seq in live:
        seq.finish_reason = seq.finish_reason or "length"
    return sorted(done + live, key=lambda s: beam_score(s, eos_ids, params.length_penalty),
                  reverse=True)[:params.beam_width]


async def beam_search_async(engine: Any, request_id: str, prompt_ids: list[int], params: BeamSearchParams,
                            priority: int = 0, lora_request: Any = None) -> list[BeamSearchSequence]:
    """The best beams of ``prompt_ids`` (tokens: prompt + generated), each step's beams sent to ``engine`` (an
    AsyncLLMEngine) together, through ``lora_request``'s adapter when given. Cancelled, it aborts the step in
    flight."""
    from pagedllm.entrypoints.openai.protocol import random_uuid
    eos_ids = engine.input_processor.eos_token_ids
    live = [BeamSearchSequence(tokens=list(prompt_ids), logprobs=[], cum_logprob=0.0, lora_request=lora_request)]
    done: list[BeamSearchSequence] = []
    sampling = step_params(params)
    for _ in range(params.max_tokens):
        if not live:
            break
        batch = f"{request_id}-{random_uuid()[:8]}"
        streams = []
        try:
            for i, seq in enumerate(live):
                streams.append(await engine.add_request(f"{batch}-beam-{i}", {"prompt_token_ids": seq.tokens},
                                                        sampling, priority=priority, lora_request=lora_request))
            finals = await asyncio.gather(*(_last_output(s) for s in streams))
        finally:
            for s in streams:
                s.abort()
        live = extend_beams(live, [f.outputs[0].logprobs[0] for f in finals], params, eos_ids, done)
    return best_beams(done, live, params, eos_ids)


async def _last_output(stream):
    last = None
    async for out in stream:
        last = out
    return last
