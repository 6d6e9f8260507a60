"""MoE on the GPU in fp32 against HF fp32 (same routing decisions, so exact tokens are expected): the fused kernels
(CUDA graphs) for dense, online-FP8 (against HF on the dequantized weights) and GPTQ experts. Session 22."""
import json, sys, tempfile, pathlib
import torch
from transformers import AutoModelForCausalLM, Qwen3MoeConfig
sys.path.insert(0, "tests/models")
from pagedllm import LLM, SamplingParams
from safetensors.torch import load_file, save_file
from test_moe import _int_formats, online_fp8_reference

d = pathlib.Path(tempfile.mkdtemp())
cfg = Qwen3MoeConfig(hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=8,
                     num_key_value_heads=2, vocab_size=2048, max_position_embeddings=1024, tie_word_embeddings=False,
                     head_dim=64, num_experts=32, num_experts_per_tok=2, moe_intermediate_size=128, norm_topk_prob=True)
torch.manual_seed(1234)
model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
with torch.no_grad():
    model.lm_head.weight.mul_(8.0)
model.save_pretrained(d / "m")
shard = next((d / "m").glob("*.safetensors"))
state = load_file(shard)
g = torch.Generator().manual_seed(0)
prompts = [torch.randint(5, 2000, (n,), generator=g).tolist() for n in (7, 30, 64)]
sp = SamplingParams(temperature=0.0, max_tokens=16, ignore_eos=True, detokenize=False)

def save(name, tensors, qcfg=None):
    (d / name).mkdir()
    c = json.loads((d / "m" / "config.json").read_text())
    if qcfg: c["quantization_config"] = qcfg
    (d / name / "config.json").write_text(json.dumps(c))
    save_file(tensors, str(d / name / shard.name), metadata={"format": "pt"})
    return str(d / name)

def hf_tokens(path):
    m = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).cuda().eval()
    out = [m.generate(torch.tensor([p], device="cuda"), max_new_tokens=16, min_new_tokens=16, do_sample=False,
                      pad_token_id=0)[0, len(p):].tolist() for p in prompts]
    del m
    return out

def ours(path, **kw):
    llm = LLM(model=path, skip_tokenizer_init=True, dtype="float32", max_model_len=1024, gpu_memory_utilization=0.3,
              max_num_batched_tokens=128, **kw)
    out = [o.outputs[0].token_ids for o in llm.generate([{"prompt_token_ids": p} for p in prompts], sp, use_tqdm=False)]
    graphs = llm.llm_engine.runner.graph_runner is not None
    del llm
    torch.cuda.empty_cache()
    return [list(t) for t in out], graphs

experts_only = len(sys.argv) > 1       # the attention dense: only the experts quantized (AWQ, FP8 checkpoint)
if experts_only:
    acfg, aq, ad = _int_formats()._awq_checkpoint(state, 128)
    for n in list(aq):
        if ".self_attn." in n and not n.endswith("norm.weight"):
            del aq[n]
    for n, w in state.items():
        if ".self_attn." in n:
            aq[n], ad[n] = w, w
    acfg["modules_to_not_convert"] = ["self_attn"]
    fq, fref = dict(state), dict(state)
    for n, w in state.items():
        if ".experts." in n:
            scale = w.abs().max() / 448.0
            fq[n] = (w / scale).to(torch.float8_e4m3fn)
            fq[n.replace(".weight", ".weight_scale")] = scale.reshape(())
            fref[n] = fq[n].float() * scale
    fcfg = {"quant_method": "fp8", "activation_scheme": "dynamic", "ignored_layers": ["re:.*self_attn.*"]}
    cases = {"awq-experts": (save("awq", aq, acfg), {}, save("awqref", ad)),
             "fp8-experts": (save("fp8", fq, fcfg), {}, save("fp8ref", fref))}
qcfg, quant, dense = _int_formats()._gptq_checkpoint(state, 4, 128, sym=False, desc_act=False)
cases = cases if experts_only else {"dense": (str(d / "m"), {}, str(d / "m")),
         "fp8": (str(d / "m"), {"quantization": "fp8"}, save("fp8ref", online_fp8_reference(state))),
         "gptq": (save("gptq", quant, qcfg), {}, save("gptqref", dense))}
for name, (path, kw, ref) in cases.items():
    got, graphs = ours(path, **kw)
    want = hf_tokens(ref)
    same = sum(a == b for x, y in zip(got, want) for a, b in zip(x, y))
    print(f"{name}: graphs {graphs}; tokens equal to HF fp32: {same} of {sum(map(len, want))}; "
          f"first sequences equal: {[x == y for x, y in zip(got, want)]}", flush=True)
