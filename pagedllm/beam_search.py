"""vLLM's ``vllm.beam_search`` import path for what ``LLM.beam_search`` returns (``BeamSearchOutput``, whose
``sequences`` are ``BeamSearchSequence``): the types live in pagedllm.outputs; the search is
entrypoints/beam_search.py."""
from pagedllm.outputs import BeamSearchOutput, BeamSearchSequence

__all__ = ["BeamSearchOutput", "BeamSearchSequence"]
