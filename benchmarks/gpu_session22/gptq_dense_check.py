"""A dense tiny Qwen2 GPTQ checkpoint (4-bit, group 32, asym; sym too) on the GPU in fp32 against the same engine on
its dequantized checkpoint: which GPTQ forms the GPU's packed kernels get right (session 22)."""
import importlib.util, pathlib
spec = importlib.util.spec_from_file_location("qf", "tests/unit/test_quant_int_formats.py")
qf = importlib.util.module_from_spec(spec); spec.loader.exec_module(qf)
from pagedllm import LLM
d = pathlib.Path(__import__("tempfile").mkdtemp())
config, state = qf._tiny("qwen2")

def run(path):
    llm = LLM(model=path, skip_tokenizer_init=True, dtype="float32", max_model_len=128, gpu_memory_utilization=0.2)
    out = [list(o.outputs[0].token_ids) for o in llm.generate([{"prompt_token_ids": p} for p in qf.PROMPTS],
                                                              qf.GREEDY, use_tqdm=False)]
    del llm
    return out

for sym in (False, True):
    qcfg, quant, dense = qf._gptq_checkpoint(state, 4, 32, sym=sym, desc_act=False)
    got = run(qf._save(d / f"q{sym}", dict(config, quantization_config=qcfg), quant))
    want = run(qf._save(d / f"r{sym}", config, dense))
    print(f"gptq sym={sym}: equal {got == want}; {got} vs {want}", flush=True)
qcfg, quant, dense = qf._awq_checkpoint(state, 32)
print("awq: equal", run(qf._save(d / "qa", dict(config, quantization_config=qcfg), quant)) ==
      run(qf._save(d / "ra", config, dense)), flush=True)
