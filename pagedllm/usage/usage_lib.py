"""``UsageContext``: who builds an engine, at vLLM's import path (``vllm.usage.usage_lib.UsageContext``).

In vLLM it tags the usage report (telemetry) and also picks the scheduler's defaults when the user sets none: on a
big GPU 16384 tokens per step for the offline LLM class, 8192 behind the OpenAI server, and the generic 2048 (128
sequences) for every other context. pagedllm sends no usage report; the defaults it honours the same way
(config.py ``EngineConfig.build``). ``AsyncLLMEngine.from_engine_args(args, usage_context=...)`` and
``LLMEngine.from_engine_args`` take it."""
from __future__ import annotations

from enum import Enum


class UsageContext(str, Enum):
    UNKNOWN_CONTEXT = "UNKNOWN_CONTEXT"
    LLM_CLASS = "LLM_CLASS"
    API_SERVER = "API_SERVER"
    OPENAI_API_SERVER = "OPENAI_API_SERVER"
    OPENAI_BATCH_RUNNER = "OPENAI_BATCH_RUNNER"
    ENGINE_CONTEXT = "ENGINE_CONTEXT"

    @classmethod
    def parse(cls, value: "UsageContext | str") -> "UsageContext":
        """A member, or its name / value as a string; anything else is a ValueError naming the choices."""
        if isinstance(value, cls):
            return value
        if isinstance(value, str) and value.upper() in cls.__members__:
            return cls[value.upper()]
        raise ValueError(f"usage_context={value!r} is not a UsageContext; choose one of "
                         f"{[m.name for m in cls]} (pagedllm.usage.usage_lib.UsageContext).")
