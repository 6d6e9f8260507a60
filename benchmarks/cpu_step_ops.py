"""Where a CPU batch-1 decode step's aten ops come from: every op dispatched during N decode steps of the bundled
SmolLM2, counted by the pagedllm source line that issued it (a TorchDispatchMode; top-level ops only, not the ones
an op calls inside). Per step and per layer (30 layers), most frequent first.

python benchmarks/cpu_step_ops.py [dtype] [rows] [batch]        (docs/perf.md, issue 19, session 7)

batch > 1: that many requests decode together (prompts of slightly different lengths, as benchmarks/cpu_vs_hf.py's
"16 concurrent"); the counts are still per step.
"""
import collections
import sys
import traceback

from pagedllm import LLM, SamplingParams   # first: it sets the OpenMP wait policy before torch loads its runtime

from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

STEPS = 5


class _CountOps(TorchDispatchMode):
    def __init__(self, counts: collections.Counter):
        super().__init__()
        self.counts = counts

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        frames = [f for f in traceback.extract_stack()[:-1] if "pagedllm" in f.filename]
        where = (f"{frames[-1].filename.split('pagedllm/')[-1]}:{frames[-1].lineno} {frames[-1].line.strip()[:70]}"
                 if frames else "?")
        self.counts[(str(func.overloadpacket), where)] += 1
        return func(*args, **(kwargs or {}))


def main() -> None:
    dtype = sys.argv[1] if len(sys.argv) > 1 else "auto"
    rows = int(sys.argv[2]) if len(sys.argv) > 2 else 60
    batch = int(sys.argv[3]) if len(sys.argv) > 3 else 1
    prompts = [f"The capital of France is{' (' + str(i) + ')' * (i % 3) if i else ''}" for i in range(batch)]
    llm = LLM("HuggingFaceTB/SmolLM2-135M-Instruct", max_model_len=1024, kv_cache_memory_gb=0.1, dtype=dtype,
              max_num_seqs=max(batch, 1))
    llm.generate(["Hello"], SamplingParams(temperature=0.0, max_tokens=4, ignore_eos=True), use_tqdm=False)

    def count(max_tokens: int) -> collections.Counter:
        counts: collections.Counter = collections.Counter()
        with _CountOps(counts):
            llm.generate(prompts,
                         SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True), use_tqdm=False)
        return counts

    # The prefill (and its first token) alone, then with STEPS decode steps more: the difference is the decodes.
    decode = count(1 + STEPS) - count(1)
    print(f"{dtype}, {batch} running: {sum(decode.values()) / STEPS:.0f} top-level ops per decode step")
    for (op, where), n in sorted(decode.items(), key=lambda kv: -kv[1])[:rows]:
        print(f"{n / STEPS:7.1f} {n / STEPS / 30:5.2f}/layer  {op:28s} {where}")


if __name__ == "__main__":
    main()
