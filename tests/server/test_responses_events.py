"""/v1/responses with stream=true: a chat completion's SSE stream turned into the Responses API's events, checked on
hand-made chat chunks (pieces split mid-event, a finished answer, an error chunk) without a model."""
from __future__ import annotations

import asyncio
import json

from pagedllm.entrypoints.openai.protocol import ResponsesRequest
from pagedllm.entrypoints.openai.serving_responses import OpenAIServingResponses


def _chunk(**fields) -> str:
    return "data: " + json.dumps({"id": "chatcmpl-x", "object": "chat.completion.chunk", "created": 7, "model": "m",
                                  **fields}) + "\n\n"


def _events(pieces: list[str]) -> list[dict]:
    async def body():
        for piece in pieces:
            yield piece

    async def run():
        req = ResponsesRequest.model_validate({"model": "m", "input": "Hi", "stream": True})
        return [e async for e in OpenAIServingResponses(chat=None)._events(req, body(), "r1")]
    out = []
    for sse in asyncio.run(run()):
        kind, data = sse.split("\n", 1)
        out.append(json.loads(data.removeprefix("data: ")))
        assert kind == "event: " + out[-1]["type"] and sse.endswith("\n\n")
    return out


def test_a_finished_answer_ends_with_response_completed():
    stream = (_chunk(choices=[{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])
              + _chunk(choices=[{"index": 0, "delta": {"content": "Hel"}, "finish_reason": None}])
              + _chunk(choices=[{"index": 0, "delta": {"content": "lo"}, "finish_reason": "stop"}])
              + _chunk(choices=[], usage={"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5})
              + "data: [DONE]\n\n")
    events = _events([stream[:50], stream[50:123], stream[123:]])      # pieces cut inside events
    assert [e["type"] for e in events] == [
        "response.created", "response.in_progress", "response.output_item.added", "response.content_part.added",
        "response.output_text.delta", "response.output_text.delta", "response.output_text.done",
        "response.content_part.done", "response.output_item.done", "response.completed"]
    assert [e["delta"] for e in events if e["type"] == "response.output_text.delta"] == ["Hel", "lo"]
    final = events[-1]["response"]
    assert final["id"] == "resp_r1" and final["status"] == "completed" and final["incomplete_details"] is None
    assert final["output"][0]["content"][0]["text"] == "Hello" and final["output"][0]["id"] == events[2]["item"]["id"]
    assert final["usage"]["input_tokens"] == 3 and final["usage"]["output_tokens"] == 2
    assert events[0]["response"]["status"] == "in_progress" and events[0]["response"]["usage"] is None


def test_an_error_chunk_becomes_an_error_event():
    events = _events([_chunk(choices=[{"index": 0, "delta": {"content": "a"}, "finish_reason": None}]),
                      'data: {"error": {"message": "boom", "type": "BadRequestError", "param": "max_tokens", '
                      '"code": 400}}\n\n'])
    assert events[-1]["type"] == "error" and events[-1]["message"] == "boom"
    assert events[-1]["param"] == "max_output_tokens"           # the Responses request's name for the field
