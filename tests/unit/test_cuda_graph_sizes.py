"""vLLM's CUDA-graph size settings (cudagraph_capture_sizes, max_cudagraph_capture_size, and compilation_config's
keys of the same names): which decode batch sizes and piecewise token counts get graphs, and the errors where no
graph is captured. The capture itself runs on a GPU (tests/gpu/test_engine_gpu.py); here the lists it is given."""
from __future__ import annotations

import pytest
import torch
import transformers

from pagedllm import config as cfg_mod
from pagedllm.config import EngineArgs, EngineConfig, ResolvedModel, cuda_graph_sizes
from pagedllm.utils import FlexibleArgumentParser
from pagedllm.worker.cuda_graphs import graph_batch_sizes, piecewise_token_sizes


def _build(monkeypatch, device: str = "cuda", **kwargs) -> EngineConfig:
    monkeypatch.setattr(cfg_mod, "_pick_device", lambda name: torch.device(device))
    hf = transformers.LlamaConfig(max_position_embeddings=4096)
    return EngineConfig.build(EngineArgs(model="m", **kwargs), ResolvedModel("m", hf, None))


def test_default_lists_are_unchanged_without_the_settings():
    decode = graph_batch_sizes(1024)
    assert decode[:6] == [1, 2, 4, 8, 16, 32] and decode[-3:] == [960, 992, 1024] and len(decode) == 44
    assert graph_batch_sizes(100)[-2:] == [96, 100]                 # max_num_seqs itself is the largest graph
    prompt = piecewise_token_sizes(8192)
    assert prompt[0] == 8 and prompt[-1] == 512 and len(prompt) == 32
    assert cuda_graph_sizes(EngineArgs(model="m")) == (None, None)


def test_max_cudagraph_capture_size_cuts_both_lists_at_that_size():
    assert graph_batch_sizes(1024, None, 256)[-3:] == [224, 240, 256]
    assert graph_batch_sizes(1024, None, 100)[-2:] == [96, 100]      # the limit itself is captured
    assert graph_batch_sizes(64, None, 256)[-1] == 64               # never past max_num_seqs
    assert piecewise_token_sizes(8192, 1024)[-3:] == [896, 960, 1024]
    assert piecewise_token_sizes(8192, 64)[-1] == 64


def test_cudagraph_capture_sizes_are_the_sizes_within_each_runners_maximum():
    assert graph_batch_sizes(8, [16, 1, 4, 2, 8, 4]) == [1, 2, 4, 8]
    assert piecewise_token_sizes(2048, 512, [1, 2, 4, 8, 16, 4096]) == [1, 2, 4, 8, 16]


def test_compilation_config_keys_and_fields_agree_or_fail():
    assert cuda_graph_sizes(EngineArgs(model="m", cudagraph_capture_sizes=[8, 1, 2, 8])) == ([1, 2, 8], 8)
    assert cuda_graph_sizes(EngineArgs(model="m", max_cudagraph_capture_size=128)) == (None, 128)
    cc = {"cudagraph_capture_sizes": [1, 2, 4], "max_cudagraph_capture_size": 4, "mode": 0}
    assert cuda_graph_sizes(EngineArgs(model="m", compilation_config=cc)) == ([1, 2, 4], 4)
    with pytest.raises(ValueError, match="cudagraph_capture_sizes is given twice with different values"):
        cuda_graph_sizes(EngineArgs(model="m", cudagraph_capture_sizes=[1], compilation_config=cc))
    with pytest.raises(ValueError, match="max_cudagraph_capture_size=4 but cudagraph_capture_sizes goes up to 8"):
        cuda_graph_sizes(EngineArgs(model="m", cudagraph_capture_sizes=[1, 8], max_cudagraph_capture_size=4))
    with pytest.raises(ValueError, match="not supported yet beyond cudagraph_capture_sizes, "
                                         "max_cudagraph_capture_size, cudagraph_specialize_lora, cudagraph_mode: "
                                         "pagedllm does not "
                                         "use torch.compile"):
        cuda_graph_sizes(EngineArgs(model="m", compilation_config={"cudagraph_capture_sizes": [1], "mode": 3}))
    for bad in ([], [1, True], [1.5], "1,2"):
        with pytest.raises(ValueError, match="cudagraph_capture_sizes must be a non-empty list of positive"):
            cuda_graph_sizes(EngineArgs(model="m", cudagraph_capture_sizes=bad))


def test_the_command_line_flags(monkeypatch):
    parser = EngineArgs.add_cli_args(FlexibleArgumentParser())
    args = EngineArgs.from_cli_args(parser.parse_args(
        ["--model", "m", "--cudagraph-capture-sizes", "1", "2", "4", "8", "--max-cudagraph-capture-size", "8"]))
    assert (args.cudagraph_capture_sizes, args.max_cudagraph_capture_size) == ([1, 2, 4, 8], 8)
    _build(monkeypatch, cudagraph_capture_sizes=args.cudagraph_capture_sizes,
           max_cudagraph_capture_size=args.max_cudagraph_capture_size)        # a GPU engine takes them


@pytest.mark.parametrize("kwargs,why", [
    (dict(enforce_eager=True), "enforce_eager=True"),
    (dict(cpu_offload_gb=1), "cpu_offload_gb streams weights eagerly"),
    (dict(optimization_level=0), "optimization_level=0 \\(-O0\\)"),
])
def test_rejected_where_no_graph_is_captured(monkeypatch, kwargs, why):
    with pytest.raises(ValueError, match=f"max_cudagraph_capture_size: no CUDA graphs are captured here \\({why}\\)"):
        _build(monkeypatch, max_cudagraph_capture_size=64, **kwargs)
    with pytest.raises(ValueError, match="this engine runs on the CPU"):
        _build(monkeypatch, device="cpu", cudagraph_capture_sizes=[1, 2])


def test_optimization_levels_as_vllm(monkeypatch, capsys):
    """vLLM's -O0 .. -O3 (optimization_level, 2 by default; vLLM 0.12+): -O0 captures no CUDA graph, as
    enforce_eager; -O1 .. -O3 keep pagedllm's graphs. Before, -O was --compilation-config: vLLM's -O2 / -O3 were
    "compilation_config is not supported yet", --optimization-level and LLM(optimization_level=...) unknown."""
    from pagedllm.config import cuda_graphs_off
    parser = EngineArgs.add_cli_args(FlexibleArgumentParser())
    for flags, expected in ((["-O0"], 0), (["-O", "1"], 1), (["--optimization-level", "3"], 3), (["-O=2"], 2),
                            ([], 2)):
        parsed = EngineArgs.from_cli_args(parser.parse_args(["--model", "m", *flags]))
        assert parsed.optimization_level == expected, flags
    assert cuda_graphs_off(EngineArgs(model="m", optimization_level=0), True, False) == "optimization_level=0 (-O0)"
    for kept in (1, 2, 3):
        assert cuda_graphs_off(EngineArgs(model="m", optimization_level=kept), True, False) is None
        _build(monkeypatch, optimization_level=kept, cudagraph_capture_sizes=[1, 2])
    with pytest.raises(ValueError, match=r"optimization_level must be one of 0, 1, 2, 3 \(vLLM's -O0 \.\. -O3\), "
                                         r"got 4"):
        _build(monkeypatch, optimization_level=4)
    # The compilation config keeps vLLM's -cc (and -O.KEY) forms; -O with its JSON (vLLM's form before 0.12) says so.
    cc = parser.parse_args(["--model", "m", "-cc", '{"max_cudagraph_capture_size": 8}']).compilation_config
    assert cc == {"max_cudagraph_capture_size": 8}
    with pytest.raises(SystemExit):
        parser.parse_args(["--model", "m", "-O", '{"max_cudagraph_capture_size": 8}'])
    assert "is not an optimization level (0-3): -O is --optimization-level (vLLM 0.12 on); give a compilation " \
           "config as -cc / --compilation-config JSON" in capsys.readouterr().err


def test_cudagraph_mode_picks_the_graph_kinds(monkeypatch, caplog):
    """vLLM's compilation_config cudagraph_mode (its scripts pass '{"cudagraph_mode": "FULL_DECODE_ONLY"}' and the
    like): which of pagedllm's two graph kinds are captured, (full decode graphs, piecewise graphs). Before, any
    cudagraph_mode was "compilation_config is not supported yet beyond ..."."""
    def kinds(mode, **kwargs):
        config = _build(monkeypatch, compilation_config={"cudagraph_mode": mode}, **kwargs)
        return config.decode_cuda_graphs, config.piecewise_cuda_graphs
    assert kinds("FULL_AND_PIECEWISE") == (True, True) and kinds("full_decode_only") == (True, False)
    assert kinds("PIECEWISE") == (False, True)          # decode steps replay the piecewise graphs then
    with caplog.at_level("WARNING"):
        assert kinds("FULL") == (True, True)             # vLLM's downgrade where mixed steps have no full graphs
    assert "running FULL_AND_PIECEWISE" in caplog.text
    from pagedllm.config import cuda_graphs_off
    assert cuda_graphs_off(EngineArgs(model="m", compilation_config={"cudagraph_mode": "NONE"}), True, False) == \
        "compilation_config cudagraph_mode=NONE"
    with pytest.raises(ValueError, match=r"cudagraph_capture_sizes: no CUDA graphs are captured here \(compilation_"
                                         r"config cudagraph_mode=NONE\)"):
        _build(monkeypatch, compilation_config={"cudagraph_mode": "NONE", "cudagraph_capture_sizes": [1, 2]})
    with pytest.raises(ValueError, match="piecewise_cuda_graphs=True contradicts compilation_config cudagraph_mode="
                                         "FULL_DECODE_ONLY"):
        kinds("FULL_DECODE_ONLY", piecewise_cuda_graphs=True)
    with pytest.raises(ValueError, match=r"cudagraph_mode=PIECEWISE: no CUDA graphs are captured here \(this engine "
                                         r"runs on the CPU\)"):
        _build(monkeypatch, device="cpu", compilation_config={"cudagraph_mode": "PIECEWISE"})
    with pytest.raises(ValueError, match="cudagraph_mode must be one of NONE, PIECEWISE, FULL, FULL_DECODE_ONLY, "
                                         "FULL_AND_PIECEWISE, got 'ALL'"):
        kinds("ALL")
    parser = EngineArgs.add_cli_args(FlexibleArgumentParser())
    from pagedllm.config import normalize_cli_flags
    cc = parser.parse_args(normalize_cli_flags(["--model", "m", "-cc.cudagraph_mode=FULL_DECODE_ONLY"]))
    assert cc.compilation_config == {"cudagraph_mode": "FULL_DECODE_ONLY"}


def test_vllm_compilation_config_class(monkeypatch):
    """vLLM's scripts build the config as an object: ``from vllm.config import CompilationConfig, CUDAGraphMode``
    (pagedllm.config here; both were ImportError), ``compilation_config=CompilationConfig(...)``."""
    from pagedllm.config import CompilationConfig, CUDAGraphMode
    cc = CompilationConfig(cudagraph_capture_sizes=[4, 1, 2], cudagraph_mode=CUDAGraphMode.FULL_DECODE_ONLY)
    config = _build(monkeypatch, compilation_config=cc)
    assert cuda_graph_sizes(config.args) == ([1, 2, 4], 4)
    assert (config.decode_cuda_graphs, config.piecewise_cuda_graphs) == (True, False)
    with pytest.raises(ValueError, match=r"compilation_config is not supported yet beyond .*\(got level\)"):
        _build(monkeypatch, compilation_config=CompilationConfig(level=3))


def test_performance_mode_balanced_only(monkeypatch):
    parser = EngineArgs.add_cli_args(FlexibleArgumentParser())
    assert parser.parse_args(["--model", "m", "--performance-mode", "balanced"]).performance_mode == "balanced"
    _build(monkeypatch, performance_mode="balanced")
    with pytest.raises(ValueError, match="performance_mode='throughput' is not supported yet; use 'balanced'"):
        _build(monkeypatch, performance_mode="throughput")
    with pytest.raises(ValueError, match="performance_mode must be one of 'balanced', 'interactivity', 'throughput'"):
        _build(monkeypatch, performance_mode="fast")


def test_lora_keeps_its_cuda_graphs(monkeypatch):
    """The graphs capture the adapters' deltas (a static per-token mask), so enable_lora takes graph sizes on a GPU
    and the reason list does not name it."""
    from pagedllm.config import cuda_graphs_off
    assert cuda_graphs_off(EngineArgs(model="m", enable_lora=True), True, False) is None
    _build(monkeypatch, enable_lora=True, cudagraph_capture_sizes=[1, 2, 4])


def test_cudagraph_specialize_lora(monkeypatch):
    """vLLM's compilation_config key: on by default (each size captured with and without the deltas), false turns
    it off; an error where it cannot act (no LoRA, no graphs) or is not a bool."""
    assert _build(monkeypatch, enable_lora=True).cudagraph_specialize_lora is True
    off = _build(monkeypatch, enable_lora=True, compilation_config={"cudagraph_specialize_lora": False})
    assert off.cudagraph_specialize_lora is False
    with pytest.raises(ValueError, match="cudagraph_specialize_lora only applies with enable_lora=True"):
        _build(monkeypatch, compilation_config={"cudagraph_specialize_lora": True})
    with pytest.raises(ValueError, match=r"cudagraph_specialize_lora: no CUDA graphs are captured here \(this "
                                         r"engine runs on the CPU\)"):
        _build(monkeypatch, device="cpu", enable_lora=True, compilation_config={"cudagraph_specialize_lora": False})
    with pytest.raises(ValueError, match="cudagraph_specialize_lora must be true or false, got 'no'"):
        _build(monkeypatch, enable_lora=True, compilation_config={"cudagraph_specialize_lora": "no"})


def test_which_graph_a_step_replays():
    """With both variants captured a step without adapters replays the one without the deltas; with one variant
    every step replays it (a LoRA engine's adapter-free step then runs the deltas over an all-base mask)."""
    from pagedllm.worker.cuda_graphs import _lora_variants, _with_lora
    step = object()          # any LoRAStep
    both, lora_only, plain = _lora_variants(True, True), _lora_variants(True, False), _lora_variants(False, True)
    assert (both, lora_only, plain) == ((True, False), (True,), (False,))
    assert [_with_lora(both, step), _with_lora(both, None)] == [True, False]
    assert [_with_lora(lora_only, step), _with_lora(lora_only, None)] == [True, True]
    assert _with_lora(plain, None) is False


def test_bitsandbytes_8bit_runs_eagerly():
    """As vLLM: bitsandbytes' int8 matmul cannot be captured, so an 8-bit checkpoint gets no CUDA graphs (the
    start-up log says why) and graph sizes for it are an error; 4-bit keeps its graphs."""
    pytest.importorskip("bitsandbytes")
    from pagedllm.config import cuda_graphs_off, verify_graph_sizes
    from pagedllm.model.quantization.bitsandbytes import BitsAndBytesConfig
    int8 = BitsAndBytesConfig.from_config({"quant_method": "bitsandbytes", "load_in_8bit": True})
    nf4 = BitsAndBytesConfig.from_config({"quant_method": "bitsandbytes", "load_in_4bit": True})
    args = EngineArgs(model="m")
    assert cuda_graphs_off(args, True, False, int8) == "bitsandbytes 8-bit weights run eagerly"
    assert cuda_graphs_off(args, True, False, nf4) is None
    sized = EngineArgs(model="m", max_cudagraph_capture_size=64)
    with pytest.raises(ValueError, match=r"no CUDA graphs are captured here \(bitsandbytes 8-bit weights run "):
        verify_graph_sizes(sized, True, "generate", int8)
    verify_graph_sizes(sized, True, "generate", nf4)


def test_no_garbage_collection_inside_a_capture_window():
    """A collection inside a CUDA-graph capture may run finalizers that call CUDA (an engine the program dropped
    before building this one: its graphs' destruction is not permitted mid-capture and broke the capture on an
    H100); the capture windows (``_capturing``, the piecewise capture) run without collection, and the collector's
    state is as it was afterwards."""
    import gc

    from pagedllm.worker.cuda_graphs import collections_paused     # gc_heap's, used by the capture windows
    inside, seen = [False], []

    def record(phase, info):
        if phase == "start" and inside[0]:
            seen.append(info["generation"])

    def allocate():          # cyclic garbage, with the threshold at one allocation: a collection each time
        inside[0] = True
        for _ in range(200):
            cycle = [object()]
            cycle.append(cycle)
        inside[0] = False
    threshold = gc.get_threshold()
    gc.callbacks.append(record)
    try:
        gc.set_threshold(1, 1, 1)
        allocate()
        assert seen                         # the probe sees collections where they can happen
        seen.clear()
        with collections_paused():
            allocate()
        assert seen == [] and gc.isenabled()
        gc.disable()
        with collections_paused():
            pass
        assert not gc.isenabled()           # one that was off stays off
    finally:
        gc.enable()
        gc.set_threshold(*threshold)
        gc.callbacks.remove(record)


def test_lora_step_buffer_marks_padding_and_adapter_free_steps_as_the_base_model():
    """The graphs' static LoRA inputs: a step's own rows copied in, the bucket's padding rows (and every row of a
    step without adapters) reset to the base model (mask zeros, slot -1), whatever an earlier step left there."""
    from pagedllm.lora.layers import LoRAStep
    from pagedllm.worker.cuda_graphs import LoRAStepBuffer
    buf = LoRAStepBuffer(8, 2, torch.float32, torch.device("cpu"))
    full = LoRAStep(torch.tensor([[1.0, 0.0]] * 8), torch.zeros(8, dtype=torch.int32))
    buf.fill(full, 8, 8)
    step = LoRAStep(torch.tensor([[0.0, 1.0], [0.0, 0.0], [1.0, 0.0]]), torch.tensor([1, -1, 0], dtype=torch.int32))
    buf.fill(step, 3, 4)                       # 3 tokens in the 4-row graph
    view = buf.view(4)
    assert view.slots.tolist() == [1, -1, 0, -1]
    assert view.mask.tolist() == [[0.0, 1.0], [0.0, 0.0], [1.0, 0.0], [0.0, 0.0]]
    buf.fill(None, 2, 8)                       # no adapter in the step: the whole bucket is the base model
    assert buf.view(8).slots.tolist() == [-1] * 8 and not buf.view(8).mask.any()
