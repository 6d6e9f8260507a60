"""How long one full garbage collection takes in a process holding a built engine (pagedllm/gc_heap.py).

    OMP_NUM_THREADS=1 python benchmarks/cpu_session9/gc_full_collection.py

A tiny random Qwen2 on the CPU with the default 4 GiB KV cache (524,288 blocks, one Python object each): prints the
GC-tracked object count, three gc.collect(2) timings, and one after gc.freeze().
"""
import gc
import tempfile
import time

from transformers import Qwen2Config, Qwen2ForCausalLM

from pagedllm import LLM

d = tempfile.mkdtemp()
Qwen2ForCausalLM(Qwen2Config(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                             num_key_value_heads=2, vocab_size=512)).save_pretrained(d)
llm = LLM(d, skip_tokenizer_init=True, dtype="float32")
print("tracked objects", len(gc.get_objects()))
for _ in range(3):
    t = time.perf_counter()
    gc.collect(2)
    print("gc.collect(2) %.1f ms" % ((time.perf_counter() - t) * 1e3))
gc.freeze()
t = time.perf_counter()
gc.collect(2)
print("after gc.freeze(): %.1f ms" % ((time.perf_counter() - t) * 1e3))
