"""vLLM's ``vllm.logprobs`` import path (``from vllm.logprobs import Logprob``): the types live in pagedllm.outputs."""
from pagedllm.outputs import Logprob, PromptLogprobs, SampleLogprobs

__all__ = ["Logprob", "PromptLogprobs", "SampleLogprobs"]
